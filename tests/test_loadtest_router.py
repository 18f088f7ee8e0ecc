"""loadtest/router.py: the percentile helper, the goals, and one short real
run of llmedge's Router (and tenacity, when installed) on the mock upstreams."""

from __future__ import annotations

import json

import pytest
from conftest import load_script

lt = load_script("loadtest/router.py", "loadtest_router")


def test_percentiles_are_nearest_rank():
    values = [float(i) for i in range(1, 101)]
    assert (lt.pct(values, 0.5), lt.pct(values, 0.95), lt.pct(values, 0.99)) == (50, 95, 99)
    assert lt.pct([3.0], 0.99) == 3.0


def test_goals_compare_llmedge_with_its_peers():
    def row(impl, scenario, success, p99):
        return {"implementation": impl, "scenario": scenario, "success": success, "p99_ms": p99}

    results = [
        row("llmedge least_latency +hedge", "degraded", 1.0, 300.0),
        row("llmedge ordered", "degraded", 0.98, 1600.0),
        row("litellm latency-based", "degraded", 0.99, 1500.0),
    ]
    text = "\n".join(lt.goals(results))
    assert "lowest llmedge success 98.0% (llmedge ordered) vs best peer 99.0%" in text
    assert "NOT met" in text
    assert "llmedge least_latency +hedge: 300 ms, 5.00x lower" in text


def test_a_short_real_run(tmp_path):
    pytest.importorskip("uvicorn")
    only = ["llmedge least_latency +hedge"]
    if lt.available("tenacity ordered") is None:
        only.append("tenacity ordered")
    argv = ["--rate", "10", "--phase", "0.4", "--out", str(tmp_path), "--only", *only]
    assert lt.main(argv) == 0
    data = json.loads((tmp_path / "router.json").read_text())
    rows = {(r["implementation"], r["scenario"]) for r in data["results"]}
    assert rows == {(name, s) for name in only for s in ("steady", "degraded")}
    for r in data["results"]:
        assert r["requests"] > 0 and r["success"] > 0.9 and r["cost_per_1k_answers"] > 0
    text = (tmp_path / "router.md").read_text()
    assert "## degraded" in text and "| llmedge least_latency +hedge |" in text

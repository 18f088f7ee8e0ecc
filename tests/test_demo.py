"""``python -m llmedge demo``: the command line, the report, and one short real run."""

from __future__ import annotations

import os

import pytest

from llmedge import _demo
from llmedge import _workload as tr
from llmedge.__main__ import main as cli_main


def test_help_lists_demo(capsys):
    cli_main([])
    out = capsys.readouterr().out
    assert "demo" in out
    with pytest.raises(SystemExit):
        cli_main(["demo", "--help"])
    assert "--duration" in capsys.readouterr().out


def test_demo_rejects_bad_settings():
    with pytest.raises(ValueError, match="duration"):
        _demo.run(duration=1.0)
    with pytest.raises(ValueError, match="users"):
        _demo.run(users=0)


def test_phases_cover_the_duration():
    plan = _demo.phases(30.0)
    assert [p[0] for p in plan] == ["healthy", "primary down", "recovered"]
    assert sum(p[1] for p in plan) == pytest.approx(30.0)
    assert plan[1][2] and plan[1][2]["fail_all"] is True


def test_format_report_shows_every_section():
    recs = [
        tr.Record(t=0.1 * i, user="demo", kind="exact" if i % 3 else "new", stream=bool(i % 2),
                  status=200, latency_ms=10.0 + i, ttft_ms=5.0, cached="exact" if i % 3 else "none")
        for i in range(30)
    ]  # fmt: skip
    s = tr.summarize(recs)
    result = {
        "users": 3, "duration_s": 3.0, "corpus": "c",
        "mock": {"ttft": 0.05, "tpot": 0.005}, "overall": s,
        "phases": [{"phase": "healthy", "seconds": 3.0, "summary": s,
                    "primary_calls": 10, "fallback_calls": 0}],
        "transitions": [{"t": 1.5, "breaker": "primary", "from": "closed", "to": "open"}],
        "costs": {"saved_by_cache": {"requests": 20, "input_tokens": 900,
                                     "output_tokens": 300, "cost": 0.0012}},
    }  # fmt: skip
    text = _demo.format_report(result)
    assert "healthy" in text and "p99 ms" in text
    assert "hit rate 66.7%" in text
    assert "primary: closed -> open" in text
    assert "saved by the cache" in text and "$0.0012" in text


def test_demo_names_missing_evaluation_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="prompts.csv"):
        _demo.run(duration=4.0, users=3, data_dir=str(tmp_path))


def test_demo_end_to_end_short_run_stops_everything(tmp_path):
    lines: list[str] = []
    result = _demo.run(duration=4.0, users=3, print_fn=lines.append,
                       json_path=str(tmp_path / "demo.json"))  # fmt: skip
    assert any("built-in prompt set" in line for line in lines)
    assert [p["phase"] for p in result["phases"]] == ["healthy", "primary down", "recovered"]
    o = result["overall"]
    assert o["requests"] > 0 and o["ok"] > 0
    assert result["upstreams"]["primary"]["requests"] > 0
    # while the primary failed everything, answers came from the fallback
    assert result["phases"][1]["fallback_calls"] > 0
    assert "spent" in result["costs"]
    assert (tmp_path / "demo.json").is_file()
    assert len(result["started"]) == 3
    assert result["left_running"] == []
    for s in result["started"]:
        if "pgid" in s:
            with pytest.raises(ProcessLookupError):
                os.killpg(s["pgid"], 0)
        else:
            with pytest.raises(ProcessLookupError):
                os.kill(s["pid"], 0)

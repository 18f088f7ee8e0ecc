from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import llmedge
from llmedge import _core


def test_version_matches_extension():
    assert llmedge.__version__ == _core.__version__
    assert llmedge.__version__.count(".") == 2


def test_all_is_exported():
    for name in llmedge.__all__:
        assert hasattr(llmedge, name), name


def test_errors_share_one_root():
    assert issubclass(llmedge.UnknownModelError, llmedge.LlmEdgeError)
    assert issubclass(llmedge.UnknownModelError, KeyError)
    assert issubclass(llmedge.ContextOverflowError, ValueError)
    assert issubclass(llmedge.UnknownEncodingError, ValueError)


ROOT = Path(__file__).resolve().parents[1]


def test_cli_help():
    out = subprocess.run(
        [sys.executable, "-m", "llmedge", "--help"], capture_output=True, text=True, check=True
    )
    assert "demo" in out.stdout


def test_cli_bench_points_at_the_checkouts_runner():
    out = subprocess.run(
        [sys.executable, "-m", "llmedge", "bench", "tokens", "--full"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "python benches/run.py" in out.stderr


def test_bench_runner_rejects_unknown_component():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benches" / "run.py"), "no_such_component"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "no_such_component" in out.stderr


def _report(*rows):
    """The bench report of pytest-benchmark entries (group, median, extra_info)."""
    spec = importlib.util.spec_from_file_location("benches_run", ROOT / "benches" / "run.py")
    assert spec and spec.loader
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    format_report = runner.format_report

    benchmarks = [
        {"group": group, "name": f"b{i}", "stats": {"median": median}, "extra_info": info}
        for i, (group, median, info) in enumerate(rows)
    ]
    return format_report({"benchmarks": benchmarks})


def test_bench_report_formats_ratios():
    report = _report(
        ("tokens: count", 1e-6, {"impl": "llmedge", "correct": True}),
        ("tokens: count", 3e-6, {"impl": "tiktoken", "correct": False}),
    )
    assert "3.00x" in report
    assert "NO" in report
    assert "== tokens ==" in report


def test_bench_report_shows_interleaved_baselines():
    interleaved = {"python": {"median": 0.031, "ratio": 15.25}}
    report = _report(
        (
            "messages: count, interleaved",
            2e-3,
            {"impl": "llmedge", "correct": True, "interleaved": interleaved},
        )
    )
    row = next(line for line in report.splitlines() if "python" in line)
    assert "31.00 ms" in row
    assert "15.25x*" in row
    assert "*: interleaved" in report


@pytest.mark.parametrize("bad", [None, 3, b"bytes"])
def test_count_tokens_rejects_non_strings(bad):
    with pytest.raises(TypeError):
        llmedge.count_tokens(bad)


def test_bench_report_shows_latency_percentiles_beside_the_reference():
    latency = {"p50": 120e-6, "p99": 300e-6, "ping_p50": 100e-6, "ping_p99": 250e-6}
    report = _report(("redis: latency", 1.2e-4, {"impl": "llmedge", "latency": latency}))
    row = next(line for line in report.splitlines() if "PING" in line)
    assert "p50 120.00 us, p99 300.00 us" in row
    assert "PING p50 100.00 us, p99 250.00 us" in row
    assert "(p99 1.20x PING's)" in row

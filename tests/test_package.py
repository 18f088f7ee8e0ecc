from __future__ import annotations

import subprocess
import sys

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


def test_cli_help():
    out = subprocess.run(
        [sys.executable, "-m", "llmedge", "--help"], capture_output=True, text=True, check=True
    )
    assert "bench" in out.stdout


def test_cli_bench_rejects_unknown_component():
    out = subprocess.run(
        [sys.executable, "-m", "llmedge", "bench", "no_such_component"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "no_such_component" in out.stderr


def test_bench_report_formats_ratios():
    from llmedge._bench import format_report

    data = {
        "benchmarks": [
            {
                "group": "tokens: count",
                "name": "a",
                "stats": {"median": 1e-6},
                "extra_info": {"impl": "llmedge", "correct": True},
            },
            {
                "group": "tokens: count",
                "name": "b",
                "stats": {"median": 3e-6},
                "extra_info": {"impl": "tiktoken", "correct": False},
            },
        ]
    }
    report = format_report(data)
    assert "3.00x" in report
    assert "NO" in report
    assert "== tokens ==" in report


def test_bench_report_shows_interleaved_baselines():
    from llmedge._bench import format_report

    data = {
        "benchmarks": [
            {
                "group": "messages: count, interleaved",
                "name": "a",
                "stats": {"median": 2e-3},
                "extra_info": {
                    "impl": "llmedge",
                    "correct": True,
                    "interleaved": {"python": {"median": 0.031, "ratio": 15.25}},
                },
            }
        ]
    }
    report = format_report(data)
    row = next(line for line in report.splitlines() if "python" in line)
    assert "31.00 ms" in row
    assert "15.25x*" in row
    assert "*: interleaved" in report


@pytest.mark.parametrize("bad", [None, 3, b"bytes"])
def test_count_tokens_rejects_non_strings(bad):
    with pytest.raises(TypeError):
        llmedge.count_tokens(bad)

"""Shared fixtures for the benchmark suites.

Each benchmark is parametrised over implementations and records, beside its
timing, which implementation ran and whether its result agreed with the
reference (see llmedge/_bench.py for the conventions the report reads).
Run: ``python -m llmedge bench`` (quick) or ``pytest benches --benchmark-enable``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

BENCHES = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHES))  # `import baselines`

QUICK = os.environ.get("LLMEDGE_BENCH_QUICK", "1") != "0"


def data_path() -> Path:
    """Evaluation data: $LLMEDGE_DATA, else ../shared/data beside the checkout."""
    env = os.environ.get("LLMEDGE_DATA")
    if env:
        return Path(env)
    return BENCHES.parent.parent / "shared" / "data"


@pytest.fixture(scope="session")
def quick() -> bool:
    return QUICK


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = data_path()
    if not path.is_dir():
        pytest.skip(
            f"evaluation data not found at {path}; set LLMEDGE_DATA to the directory "
            "holding prompts.csv, mqp.csv, ... (see shared/data/SOURCES.md)"
        )
    return path


def record(benchmark, impl: str, correct: bool | None) -> None:
    """Tag a benchmark with its implementation and whether its result was right."""
    benchmark.extra_info["impl"] = impl
    benchmark.extra_info["correct"] = correct

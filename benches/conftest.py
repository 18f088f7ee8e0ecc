"""Shared fixtures for the benchmark suites.

Each benchmark is parametrised over implementations and records, beside its
timing, which implementation ran and whether its result agreed with the
reference (see run.py for the conventions the report reads).
Run: ``python benches/run.py`` (quick) or ``pytest benches --benchmark-enable``.
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


def interleaved(benchmark, run, baselines, *, rounds, setup=None, check=None):
    """Times `run` (llmedge) with pytest-benchmark and each of `baselines`
    (name -> zero-argument callable) once just before every one of its rounds,
    so that all of them meet the shared machine in the same state: a slowdown
    that lasts longer than a round moves their times together and the ratio of
    a round stays true. `setup` runs after the baselines, untimed, before each
    llmedge round; `check(name, result)` asserts each baseline's result.

    Records in ``extra_info["interleaved"]``, per baseline, its median time and
    the median over rounds of (its time / llmedge's time in the same round),
    and with more than one baseline "best" (the fastest baseline of each
    round); ``python -m llmedge bench`` prints them as extra rows.
    """
    import statistics
    import time

    base = {name: [] for name in baselines}
    ours = []

    def before():
        for name, f in baselines.items():
            t = time.perf_counter()
            out = f()
            base[name].append(time.perf_counter() - t)
            if check is not None:
                check(name, out)
        if setup is not None:
            setup()

    def timed():
        t = time.perf_counter()
        out = run()
        ours.append(time.perf_counter() - t)
        return out

    result = benchmark.pedantic(timed, setup=before, rounds=rounds, iterations=1)
    if len(baselines) > 1:
        base["best"] = [min(ts) for ts in zip(*base.values(), strict=True)]
    benchmark.extra_info["interleaved"] = {
        name: {
            "median": statistics.median(ts),
            "ratio": statistics.median(b / o for b, o in zip(ts, ours, strict=True)),
        }
        for name, ts in base.items()
    }
    return result


@pytest.fixture(scope="module")
def redis_server():
    """A local ``redis-server`` (no persistence) for the Redis suites, one per
    module; see tests/redis_support.py."""
    sys.path.insert(0, str(BENCHES.parent / "tests"))
    from redis_support import RedisServer, missing_binaries

    missing = missing_binaries()
    if missing:
        pytest.skip(f"{' and '.join(missing)} not found: this suite needs a local Redis")
    with RedisServer() as server:
        yield server

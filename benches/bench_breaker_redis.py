"""The shared circuit breaker on Redis: guarded-call overhead while closed, and
the time from one process opening the breaker to the others rejecting.

Implementations of the closed fast path (a trivial function called through a
closed breaker, LOOP calls per round; per-call overhead = (time - ``none``'s
time) / LOOP):

* ``none``: the bare function;
* ``llmedge-redis``: ``CircuitBreaker(..., store=RedisStore(url))``;
* ``llmedge``: the same breaker without a store (in-process state);
* ``python``: the pure-Python baseline (``benches/baselines/resilience.py``);
* ``pybreaker``: pybreaker with its default in-memory state;
* ``pybreaker-redis``: pybreaker with ``CircuitRedisStorage`` (redis-py), the
  peer's way to share a breaker's state between processes.

``llmedge-redis`` also records ratios interleaved with every other
implementation (each ran just before each of its rounds). ``correct``: the
breaker returned the function's value and rejected calls after 5 failures.

Opening propagation: four spawned processes, one opens a fresh breaker with
three failures, the three others poll its state (no calls); the seconds from
the third failure returning to each of them seeing it open, over ``REPS``
breakers: p50/p99/max in ``extra_info``.

Run: ``pytest benches/bench_breaker_redis.py --benchmark-enable``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import pytest
from baselines.resilience import PyBreaker
from bench_resilience import _breaker_opens_after_5
from conftest import QUICK, interleaved, record

import llmedge

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

redis = pytest.importorskip("redis")
pybreaker = pytest.importorskip("pybreaker")

LOOP = 1000
ROUNDS = 20 if QUICK else 100
REPS = 20 if QUICK else 100
IMPLS = ["none", "llmedge-redis", "llmedge", "python", "pybreaker", "pybreaker-redis"]


@pytest.fixture(scope="module")
def store(redis_server):
    s = llmedge.RedisStore(redis_server.url, timeout=1.0)
    yield s
    s.close()


def trivial(x):
    return x


def _decorators(url: str, store) -> dict:
    """name -> factory(breaker name) -> decorator."""
    client = redis.Redis.from_url(url)

    def pyb_redis(name):
        storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace=name)
        return pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60, state_storage=storage)

    return {
        "none": lambda name: lambda f: f,
        "llmedge-redis": lambda name: llmedge.CircuitBreaker(
            name, failure_threshold=5, recovery_timeout=60, store=store
        ),
        "llmedge": lambda name: llmedge.CircuitBreaker(
            name, failure_threshold=5, recovery_timeout=60
        ),
        "python": lambda name: PyBreaker(5, 60.0),
        "pybreaker": lambda name: pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60),
        "pybreaker-redis": pyb_redis,
    }


def _loop(guarded):
    def run():
        for i in range(LOOP):
            guarded(i)
        return guarded(7)

    return run


@pytest.mark.parametrize("impl", IMPLS)
def test_closed_call_overhead(benchmark, impl, redis_server, store):
    makers = _decorators(redis_server.url, store)
    make = makers[impl]
    guarded = make(f"bench-{impl}")(trivial)

    def fresh():
        return make(f"check-{time.monotonic_ns()}")

    correct = guarded(42) == 42 and (impl == "none" or _breaker_opens_after_5(fresh))
    benchmark.group = f"breaker with a store: {LOOP} closed calls"
    record(benchmark, impl, correct)
    if impl == "llmedge-redis":
        others = {
            name: _loop(makers[name](f"bench-i-{name}")(trivial)) for name in IMPLS if name != impl
        }
        assert interleaved(benchmark, _loop(guarded), others, rounds=ROUNDS) == 7
    else:
        assert benchmark(_loop(guarded)) == 7


def test_opening_reaches_other_processes(benchmark, redis_server):
    from test_circuit_breaker_redis import opening_latencies

    def run():
        return opening_latencies(redis_server.url, REPS)

    lat = benchmark.pedantic(run, rounds=1, iterations=1)
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    benchmark.group = "breaker with a store: opening seen by 3 other processes"
    benchmark.extra_info.update(
        {
            "samples": len(lat),
            "p50_ms": statistics.median(lat) * 1000,
            "p99_ms": p99 * 1000,
            "max_ms": lat[-1] * 1000,
        }
    )
    record(benchmark, "llmedge-redis", p99 < 0.1)

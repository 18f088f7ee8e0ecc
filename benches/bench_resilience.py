"""Circuit breaker and rate limiter overhead: llmedge against a pure-Python
baseline and the libraries users would otherwise pick.

Cases (each timed as a loop of LOOP calls so that the harness's own overhead
is amortised; per-call figures are the median divided by LOOP):

* sync call overhead: a trivial function, bare and guarded;
* async call overhead: the same for a trivial coroutine, awaited in one loop;
* 8 threads x 20 ms: eight threads each calling a 20 ms ``time.sleep``
  function once through the breaker (a breaker that holds a lock around the
  call serialises them: 160 ms instead of 20 ms);
* try_acquire: one permit per call, cycling over 1,000 keys (users).

``correct`` is True when the implementation behaved as specified in a separate
check: a breaker returned the function's value and opened after 5 failures; a
limiter granted exactly its burst (10) out of 15 immediate requests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

import pytest
from baselines.resilience import PyBreaker, TokenBucket
from conftest import record

import llmedge

LOOP = 1000
KEYS = [f"user-{i}" for i in range(LOOP)]


def trivial(x):
    return x


async def atrivial(x):
    return x


def failing():
    raise RuntimeError("down")


# -- breakers ------------------------------------------------------------------


def _sync_breakers():
    """name -> decorator for sync functions (a fresh breaker per call)."""
    import circuitbreaker
    import purgatory
    import pybreaker

    def llm():
        return llmedge.CircuitBreaker("bench", failure_threshold=5, recovery_timeout=60)

    def purg():
        factory = purgatory.SyncCircuitBreakerFactory(default_threshold=5, default_ttl=60)
        return factory("bench")

    return {
        "none": lambda: lambda f: f,
        "llmedge": llm,
        "python": lambda: PyBreaker(5, 60.0),
        "pybreaker": lambda: pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60),
        "circuitbreaker": lambda: circuitbreaker.CircuitBreaker(
            failure_threshold=5, recovery_timeout=60, name="bench"
        ),
        "purgatory": purg,
    }


def _async_breakers():
    import aiobreaker
    import circuitbreaker
    import purgatory

    def purg():
        factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=60)
        return factory("bench")

    return {
        "none": lambda: lambda f: f,
        "llmedge": lambda: llmedge.CircuitBreaker("abench", failure_threshold=5),
        "python": lambda: PyBreaker(5, 60.0).wrap_async,
        "circuitbreaker": lambda: circuitbreaker.CircuitBreaker(
            failure_threshold=5, recovery_timeout=60, name="abench"
        ),
        "purgatory": purg,
        "aiobreaker": lambda: aiobreaker.CircuitBreaker(
            fail_max=5, timeout_duration=timedelta(seconds=60)
        ),
    }


SYNC = list(_sync_breakers())
ASYNC = list(_async_breakers())


def _breaker_opens_after_5(make) -> bool:
    guarded = make()(failing)
    for _ in range(5):
        try:
            guarded()
        except Exception:  # pybreaker raises its own error on the 5th failure
            pass
    try:
        guarded()
    except RuntimeError:
        return False  # still calling through
    except Exception:
        return True  # its own "circuit open" error
    return False


@pytest.mark.parametrize("impl", SYNC)
def test_sync_call_overhead(benchmark, impl):
    make = _sync_breakers()[impl]
    guarded = make()(trivial)

    def run():
        for i in range(LOOP):
            guarded(i)
        return guarded(7)

    correct = guarded(42) == 42 and (impl == "none" or _breaker_opens_after_5(make))
    benchmark.group = f"resilience: {LOOP} sync calls"
    record(benchmark, impl, correct)
    assert benchmark(run) == 7


@pytest.mark.parametrize("impl", ASYNC)
def test_async_call_overhead(benchmark, impl):
    guarded = _async_breakers()[impl]()(atrivial)

    async def many():
        for i in range(LOOP):
            await guarded(i)
        return await guarded(7)

    loop = asyncio.new_event_loop()
    try:
        correct = loop.run_until_complete(guarded(42)) == 42
        benchmark.group = f"resilience: {LOOP} async calls"
        record(benchmark, impl, correct)
        assert benchmark(lambda: loop.run_until_complete(many())) == 7
    finally:
        loop.close()


@pytest.mark.parametrize("impl", SYNC)
def test_threads_through_breaker(benchmark, impl, quick):
    guarded = _sync_breakers()[impl]()(time.sleep)

    def run():
        done = []
        threads = [
            threading.Thread(target=lambda: done.append(guarded(0.02) is None)) for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return len(done)

    benchmark.group = "resilience: 8 threads x 20 ms call"
    record(benchmark, impl, True)
    assert benchmark.pedantic(run, rounds=3 if quick else 10, iterations=1) == 8


# -- rate limiters -------------------------------------------------------------


def _limiters():
    """name -> factory(rate per second, burst) -> try_acquire(key) -> bool"""

    def llm(rate, burst):
        return llmedge.RateLimiter(rate, 1.0, burst=burst).try_acquire

    def python(rate, burst):
        return TokenBucket(rate, 1.0, burst).try_acquire

    def limits_mw(rate, burst):
        from limits import RateLimitItemPerSecond, storage, strategies

        limiter = strategies.MovingWindowRateLimiter(storage.MemoryStorage())
        item = RateLimitItemPerSecond(burst)
        return lambda key: limiter.hit(item, key)

    def pyrate(rate, burst):
        from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate

        # One in-memory bucket for every name: pyrate keys buckets through a
        # BucketFactory, which the in-memory quick path does not do.
        limiter = Limiter(InMemoryBucket([Rate(burst, Duration.SECOND)]))
        return lambda key: limiter.try_acquire(key, blocking=False)

    return {"llmedge": llm, "python": python, "limits": limits_mw, "pyrate-limiter": pyrate}


LIMITERS = list(_limiters())


def _grants_exactly_the_burst(factory) -> bool:
    acquire = factory(10 / 3600, 10)
    return sum(bool(acquire("k")) for _ in range(15)) == 10


@pytest.mark.parametrize("impl", LIMITERS)
def test_try_acquire(benchmark, impl):
    factory = _limiters()[impl]
    correct = _grants_exactly_the_burst(factory)
    # Never exhausted during the run: this times the granting path.
    acquire = factory(10_000_000, 10_000_000)

    def run():
        n = 0
        for key in KEYS:
            n += acquire(key)
        return n

    benchmark.group = f"resilience: {LOOP} try_acquire"
    record(benchmark, impl, correct)
    assert benchmark(run) == LOOP

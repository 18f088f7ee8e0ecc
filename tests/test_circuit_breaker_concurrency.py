"""llmedge.CircuitBreaker under threads and asyncio tasks: exact counts."""

from __future__ import annotations

import asyncio
import collections
import threading

import pytest
from conftest import fail_n

from llmedge import CircuitBreaker, CircuitOpenError

# -- concurrency ---------------------------------------------------------------


def test_calls_run_concurrently():
    """8 threads meet at a barrier inside the guarded call: impossible if the
    breaker held a lock around the call."""
    b = CircuitBreaker("c1")
    barrier = threading.Barrier(8, timeout=30)

    @b
    def meet():
        return barrier.wait()

    results = []
    threads = [threading.Thread(target=lambda: results.append(meet())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(8))
    assert b.metrics()["successes"] == 8


def test_half_open_admits_exactly_max_calls_under_threads(clock):
    b = CircuitBreaker(
        "c2",
        failure_threshold=1,
        recovery_timeout=1,
        half_open_max_calls=3,
        success_threshold=3,
        clock=clock,
    )
    fail_n(b, 1)
    clock.advance(1)
    release = threading.Event()
    start = threading.Barrier(50, timeout=30)
    counts = collections.Counter()
    lock = threading.Lock()

    @b
    def probe():
        with lock:
            counts["admitted"] += 1
        release.wait(30)

    def worker():
        start.wait()
        try:
            probe()
        except CircuitOpenError:
            with lock:
                counts["rejected"] += 1

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for t in threads:
        t.start()
    while True:
        with lock:
            if counts["admitted"] + counts["rejected"] == 50:
                break
        threading.Event().wait(0.001)
    release.set()
    for t in threads:
        t.join()
    assert counts == {"admitted": 3, "rejected": 47}
    assert b.state == "closed"


@pytest.mark.asyncio
async def test_half_open_admits_exactly_max_calls_under_asyncio(clock):
    b = CircuitBreaker(
        "c3",
        failure_threshold=1,
        recovery_timeout=1,
        half_open_max_calls=2,
        success_threshold=2,
        clock=clock,
    )
    fail_n(b, 1)
    clock.advance(1)
    release = asyncio.Event()

    @b
    async def probe():
        await release.wait()
        return "probe"

    tasks = [asyncio.create_task(probe()) for _ in range(50)]
    for _ in range(3):
        await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results.count("probe") == 2
    assert sum(isinstance(r, CircuitOpenError) for r in results) == 48
    assert b.state == "closed"


def test_threads_hammering_closed_breaker_count_exactly():
    b = CircuitBreaker("c4", failure_threshold=10**6)
    n, per = 8, 2000

    @b
    def maybe_fail(i):
        if i % 4 == 0:
            raise ValueError
        return i

    def worker():
        for i in range(per):
            try:
                maybe_fail(i)
            except ValueError:
                pass

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    m = b.metrics()
    assert m["calls"] == n * per
    assert m["failures"] == n * per // 4
    assert m["successes"] == n * per * 3 // 4

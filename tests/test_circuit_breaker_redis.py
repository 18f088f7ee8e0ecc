"""CircuitBreaker(store=): one state for every breaker of a name on one Redis.

Against real ``redis-server`` processes (the ``redis_server`` fixture): two
breakers in one process, four spawned processes (an opening reaches the
others, exactly ``half_open_max_calls`` probes run across them), and Redis
killed and restarted (local fallback, no call waits, convergence).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import statistics
import threading
import time

import breaker_workers
import pytest
from docs_text import docs_text

import llmedge

pytestmark = pytest.mark.timeout(120)

if not hasattr(llmedge, "RedisStore"):
    pytest.skip("llmedge.RedisStore is not built yet", allow_module_level=True)

TIMEOUT = 0.05  # the store's timeout in the fault tests
# No call may wait longer than the store's timeout; the margin absorbs a busy
# 2-core machine (thread scheduling), not Redis.
BOUND = TIMEOUT + 0.25


class Boom(Exception):
    pass


def _raise():
    raise Boom("down")


def wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.002)


def fail(breaker, n=1):
    for _ in range(n):
        with pytest.raises(Boom):
            breaker(_raise)()


@pytest.fixture
def store(redis_server):
    s = llmedge.RedisStore(redis_server.url, timeout=1.0)
    yield s
    s.close()


def test_two_breakers_of_one_name_on_one_store_behave_as_one(store, redis_server):
    a = llmedge.CircuitBreaker("svc", store=store, failure_threshold=3, recovery_timeout=0.3)
    b = llmedge.CircuitBreaker("svc", store=store, failure_threshold=3, recovery_timeout=0.3)
    assert a.shared and b.shared
    seen = []
    b.add_listener(lambda name, old, new: seen.append((name, old, new)))
    fail(a)
    fail(b)
    wait_for(lambda: a.metrics()["consecutive_failures"] == 2, "both failures counted")
    assert a.state == b.state == "closed"
    fail(a)
    wait_for(lambda: b.state == "open", "b opens")
    with pytest.raises(llmedge.CircuitOpenError) as info:
        b(lambda: 1)()
    assert info.value.name == "svc" and info.value.retry_after > 0
    assert seen == [("svc", "closed", "open")]
    assert redis_server.cli("HGET", "llmedge:cb:{svc}:s", "state") == "open"
    # the recovery: one breaker's probes close both
    time.sleep(0.35)
    for _ in range(3):  # success_threshold=3; one probe at a time
        assert a(lambda: 2)() == 2
        # a probe is settled in Redis in the background, within a round trip
        wait_for(lambda: a.metrics()["half_open_in_flight"] == 0, "the probe settled")
    wait_for(lambda: a.state == b.state == "closed", "both close")
    assert seen[-1] == ("svc", "half_open", "closed")
    m = b.metrics()
    assert m["shared"] is True and m["store"] == "redis"
    assert m["local_fallback_active"] is False and m["store_errors"] == 0
    assert m["rejections"] == 1 and m["calls"] == 1
    assert "store=redis" in repr(a)


def test_manual_states_and_the_registry(store):
    a = llmedge.CircuitBreaker("manual", store=store)
    b = llmedge.CircuitBreaker("manual", store=store)
    assert llmedge.get_breaker("manual") is b  # the registry keeps the latest
    a.force_open()
    wait_for(lambda: b.state == "forced_open", "b forced open")
    with pytest.raises(llmedge.CircuitOpenError):
        b(lambda: 1)()
    b.reset()
    wait_for(lambda: a.state == "closed", "a closed")
    local = llmedge.CircuitBreaker("local-only")
    assert local.shared is False
    m = local.metrics()
    assert (m["shared"], m["store"], m["store_errors"], m["fallbacks"]) == (False, None, 0, 0)
    assert m["local_fallback_active"] is False


def test_failure_rate_counts_calls_of_every_breaker_in_the_window(store):
    kw = dict(failure_threshold=1000, failure_rate_threshold=0.5, minimum_calls=4, store=store)
    a = llmedge.CircuitBreaker("rate", **kw)
    b = llmedge.CircuitBreaker("rate", **kw)
    for _ in range(2):
        a(lambda: 1)()
    fail(a)
    wait_for(lambda: b.metrics()["window_calls"] == 3, "a's calls reach b")
    assert b.state == "closed"
    fail(b)  # 2 of the 4 calls failed
    wait_for(lambda: a.state == b.state == "open", "open everywhere")
    assert a.metrics()["failure_rate"] == 0.5


def test_async_calls_take_the_probe_lease_off_the_event_loop(store):
    br = llmedge.CircuitBreaker(
        "async", store=store, failure_threshold=1, recovery_timeout=0.2, success_threshold=1
    )

    async def boom():
        raise Boom("down")

    async def ok():
        return 3

    async def main():
        with pytest.raises(Boom):
            await br(boom)()
        with pytest.raises(llmedge.CircuitOpenError):
            await br.acall(ok)
        await asyncio.sleep(0.25)
        assert await br.acall(ok) == 3  # the probe: its lease is taken in a thread
        for _ in range(2000):  # the probe is settled in Redis within a round trip
            if br.state == "closed":
                break
            await asyncio.sleep(0.005)
        async with br:
            pass

    asyncio.run(main())
    assert br.metrics()["calls"] == 3


def test_bad_arguments_are_rejected_with_clear_errors(store):
    with pytest.raises(TypeError, match="store must be a llmedge.RedisStore"):
        llmedge.CircuitBreaker("bad", store="redis://localhost")
    with pytest.raises(ValueError, match="clock= cannot be combined with store="):
        llmedge.CircuitBreaker("bad", store=store, clock=lambda: 0.0)


def test_a_store_closed_while_in_use_falls_back_without_raising(redis_server):
    s = llmedge.RedisStore(redis_server.url, timeout=TIMEOUT)
    br = llmedge.CircuitBreaker("closing", store=s, failure_threshold=2)
    assert br(lambda: 1)() == 1
    s.close()
    wait_for(lambda: br.metrics()["local_fallback_active"], "fallback after close")
    assert br(lambda: 2)() == 2
    fail(br, 2)
    with pytest.raises(llmedge.CircuitOpenError):
        br(lambda: 1)()
    m = br.metrics()
    assert m["fallbacks"] > 0 and m["store_errors"] > 0
    assert "closed" in m["last_store_error"]
    assert "local fallback" in repr(br)


def test_redis_killed_means_local_decisions_without_waiting_then_convergence(redis_server):
    stores = [llmedge.RedisStore(redis_server.url, timeout=TIMEOUT) for _ in range(2)]
    try:
        a, b = (llmedge.CircuitBreaker("kill", store=s, failure_threshold=3) for s in stores)
        durations = []
        stop = threading.Event()

        def load():
            while not stop.is_set():
                for br in (a, b):
                    t = time.monotonic()
                    try:
                        br(lambda: 1)()
                    except llmedge.CircuitOpenError:
                        pass
                    durations.append(time.monotonic() - t)
                time.sleep(0.0005)

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.2)
            redis_server.kill()
            wait_for(
                lambda: (
                    a.metrics()["local_fallback_active"] and b.metrics()["local_fallback_active"]
                ),
                "both fall back",
            )
            fail(a, 3)  # the local breaker decides: a opens, b does not know
            assert a.state == "open" and b.state == "closed"
            redis_server.restart()
            wait_for(
                lambda: (
                    not a.metrics()["local_fallback_active"]
                    and not b.metrics()["local_fallback_active"]
                ),
                "both share again",
            )
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert max(durations) <= BOUND, sorted(durations)[-5:]
        # converged: the restarted (empty) Redis holds the state of both
        assert a.state == b.state == "closed"
        fail(b, 3)
        wait_for(lambda: a.state == "open", "a opens from b's failures")
        assert a.metrics()["store_errors"] > 0 and a.metrics()["fallbacks"] > 0
    finally:
        for s in stores:
            s.close()


def _drain(results, n, timeout=60.0):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        try:
            item = results.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        assert item[0] != "error", item[2]
        out.append(item)
    return out


def _run(target, args_for, n=4):
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=args_for(i, ctx, results)) for i in range(n)]
    return ctx, results, procs


def opening_latencies(url: str, reps: int) -> list[float]:
    """Seconds from the third failure returning in one process to each of the
    three others seeing the breaker open, over `reps` fresh breakers."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    barrier = ctx.Barrier(4)
    procs = [
        ctx.Process(target=breaker_workers.open_and_watch, args=(i, url, reps, barrier, results))
        for i in range(4)
    ]
    for p in procs:
        p.start()
    try:
        items = _drain(results, 4 * reps)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert len(items) == 4 * reps, items
    opened = {i: t for kind, i, t in items if kind == "open"}
    return [t - opened[i] for kind, i, t in items if kind == "seen"]


def test_one_process_opening_is_seen_by_three_others_promptly(redis_server):
    lat = opening_latencies(redis_server.url, reps=10)
    assert len(lat) == 30
    # The spec is 100 ms at p99 (measured by benches/bench_breaker_redis.py);
    # this asserts the property with room for a loaded test machine.
    assert max(lat) < 1.0, sorted(lat)[-5:]
    assert statistics.median(lat) < 0.1, statistics.median(lat)


def test_exactly_half_open_max_calls_probes_run_across_four_processes(redis_server):
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    barrier = ctx.Barrier(4)
    release = ctx.Event()
    threads = 4
    procs = [
        ctx.Process(
            target=breaker_workers.probe,
            args=(i, redis_server.url, threads, barrier, release, results),
        )
        for i in range(4)
    ]
    for p in procs:
        p.start()
    try:
        first = _drain(results, 4 * threads)
        assert len(first) == 4 * threads, first
        kinds = [k for k, _, _ in first]
        assert kinds.count("admitted") == 2, first  # half_open_max_calls=2
        release.set()
        closed = _drain(results, 4)
        assert [k for k, _, _ in closed] == ["closed"] * 4, closed
    finally:
        release.set()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()


def test_readme_example_runs(redis_server, monkeypatch, capsys):
    text = docs_text()
    section = text.split("#### One breaker for every process: `store=`", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    ns: dict = {}
    exec(compile(block, "docs/resilience.md", "exec"), ns)
    ns["store"].close()
    assert capsys.readouterr().out.split() == ["echo:", "hi", "True", "redis", "False"]

"""Redis faults in the middle of load, against a real server and a real cluster.

Threads call a shared limiter (or breaker) as fast as they can while the test
kills Redis (SIGKILL), pauses it (``CLIENT PAUSE``, ``DEBUG SLEEP``), stops the
process (SIGSTOP: connections accepted, nothing answers), restarts it empty
(scripts gone), closes the store, or kills a cluster master. Each time:

* no call waits much longer than the store's ``timeout`` (every call is timed;
  the margin is generous because these machines are shared and loaded);
* no exception reaches the caller (``try_acquire`` has none to raise);
* the ``on_store_error`` policy is applied and every fallback counted;
* the shared behaviour comes back on its own once Redis answers again.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time

import pytest
from redis_load import LoopLag, hammer_threads, merge

import llmedge

pytestmark = pytest.mark.timeout(240)

TIMEOUT = 0.05
# scheduling noise a call may add to the store's timeout on a loaded 2-core machine
MARGIN = float(os.environ.get("LLMEDGE_TEST_LATENCY_MARGIN", "1.0"))
BOUND = TIMEOUT + MARGIN


def wait_for(predicate, what: str, timeout: float = 30.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s")


def steady(read, window: float = 0.5, timeout: float = 30.0):
    """Waits until `read()` stays the same over `window` seconds (under load);
    returns the value."""
    deadline = time.monotonic() + timeout
    last = read()
    while time.monotonic() < deadline:
        time.sleep(window)
        now = read()
        if now == last:
            return now
        last = now
    raise AssertionError(f"still changing after {timeout} s: {last!r}")


def assert_no_call_waited(calls, what: str) -> None:
    assert not calls.errors, f"{what}: exceptions reached the caller: {calls.errors[:5]}"
    worst = max(calls.durations, default=0.0)
    assert worst <= BOUND, (
        f"{what}: a call took {worst:.3f} s (timeout {TIMEOUT} s + margin {MARGIN} s); "
        f"slowest (duration, start): {calls.slowest()}"
    )


@pytest.fixture
def store(redis_server):
    s = llmedge.RedisStore(redis_server.url, timeout=TIMEOUT, connect_timeout=0.5)
    s.ping()
    yield s
    s.close()


class Load:
    """Threads calling `fn(i)` until stopped; `calls()` after `stop()`."""

    def __init__(self, fn, threads: int = 4, pause: float = 0.001) -> None:
        self.stop_event = threading.Event()
        self.threads, self.records = hammer_threads(
            fn, threads=threads, stop=self.stop_event, pause=pause
        )

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a caller thread hangs"
        return merge(self.records)

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()


def _keys(redis_server) -> list[str]:
    out = redis_server.cli("KEYS", "llmedge:*")
    return [k for k in out.splitlines() if k]


# ---------------------------------------------------------------------------
# The limiter, one server
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["local", "allow", "deny"])
def test_redis_killed_under_load_applies_the_policy_then_recovers(redis_server, store, policy):
    rate, share = 100.0, 4
    limiter = llmedge.RateLimiter(
        rate, 1.0, burst=100, store=store, name=f"kill-{policy}",
        on_store_error=policy, local_share=share,
    )  # fmt: skip
    with Load(lambda i: limiter.try_acquire(f"user-{i % 2}")) as load:
        wait_for(lambda: limiter.metrics()["decisions"] > 200, "decisions made by Redis")
        assert limiter.metrics()["fallbacks"] == 0
        redis_server.kill()
        t_kill = time.monotonic()
        wait_for(lambda: limiter.metrics()["fallbacks"] > 50, "fallbacks while Redis is down")
        time.sleep(1.0)
        t_restart = time.monotonic()
        health = store.health()
        assert health["connected"] is False
        assert health["last_error"]
        redis_server.restart()
        # back to Redis on its own: fresh keys appear, fallbacks stop growing
        wait_for(lambda: _keys(redis_server), "limiter keys written to the restarted Redis")
        fallbacks = steady(lambda: limiter.metrics()["fallbacks"])
        t_back = time.monotonic()
        time.sleep(0.3)
        calls = load.stop()
    assert_no_call_waited(calls, f"kill, policy {policy}")
    # Redis decides again: at most a stray call that passed the 50 ms timeout
    # on this loaded machine falls back after recovery (1 in 100)
    after = calls.between(t_back, float("inf"))
    assert limiter.metrics()["fallbacks"] - fallbacks <= max(2, len(after.results) // 100)
    assert limiter.metrics()["store_errors"] > 0
    assert store.metrics()["fallbacks"] > 0
    assert store.health()["connected"] is True
    assert store.metrics()["reconnects"] >= 1
    # the policy, judged on calls made well after the kill was noticed
    outage = calls.between(t_kill + 0.5, t_restart)
    assert len(outage.results) > 20
    if policy == "allow":
        assert all(outage.results), "fail-open admits every call"
    elif policy == "deny":
        assert not any(outage.results), "fail-closed refuses every call"
    else:
        # a local limiter at rate / local_share per key (two keys), not all or nothing
        dt = t_restart - (t_kill + 0.5)
        assert 0 < outage.admitted < len(outage.results)
        assert outage.admitted <= 2 * (100 + rate / share * (dt + 0.5)), outage.admitted
    assert after.results, "calls were made after recovery"


@pytest.mark.parametrize("fault", ["client_pause", "debug_sleep", "sigstop"])
def test_a_stalled_redis_never_stalls_a_caller(redis_server, store, fault):
    # a limit far above the demand: every False would be the policy's
    limiter = llmedge.RateLimiter(
        1e6, 1.0, burst=1_000_000, store=store, name=f"stall-{fault}", on_store_error="allow"
    )
    with Load(lambda i: limiter.try_acquire("k")) as load:
        wait_for(lambda: limiter.metrics()["decisions"] > 200, "decisions made by Redis")
        before = limiter.metrics()["fallbacks"]
        t0 = time.monotonic()
        if fault == "client_pause":
            redis_server.pause(1.5)
            time.sleep(1.5)
        elif fault == "debug_sleep":
            redis_server.debug_sleep(1.5).join()
        else:
            redis_server.suspend()
            time.sleep(1.5)
            redis_server.resume()
        t1 = time.monotonic()
        during = limiter.metrics()["fallbacks"] - before
        steady(lambda: limiter.metrics()["fallbacks"])
        time.sleep(0.3)
        calls = load.stop()
    assert_no_call_waited(calls, fault)
    assert during > 0, "calls during the stall fell back (and were counted)"
    stalled = calls.between(t0 + 0.2, t1 - 0.2)
    assert stalled.results and all(stalled.results), "policy 'allow' admitted during the stall"
    assert store.health()["timeouts"] > 0
    assert store.health()["connected"] is True


def test_restart_empty_reloads_the_scripts_and_decides_exactly_again(redis_server, store):
    limiter = llmedge.RateLimiter(1, 3600.0, burst=5, store=store, name="restart")
    assert [limiter.try_acquire("k") for _ in range(7)] == [True] * 5 + [False] * 2
    assert store.health()["scripts_loaded"] >= 1
    redis_server.restart()  # no keys, no scripts
    wait_for(_pings(store), "the store reconnects to the restarted server", timeout=30)
    before = limiter.metrics()["fallbacks"]
    # EVALSHA answers NOSCRIPT: the script is loaded again and the decision is
    # Redis's ("k" itself may still be refused by the local deny cache)
    assert [limiter.try_acquire("k2") for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.metrics()["fallbacks"] == before
    assert _keys(redis_server) == ["llmedge:rl:restart:{k2}"]


def _pings(store):
    def ok():
        try:
            store.ping()
            return True
        except llmedge.StoreError:
            return False

    return ok


def test_store_closed_while_in_use(redis_server, store):
    limiter = llmedge.RateLimiter(
        1e6, 1.0, burst=1_000_000, store=store, name="closed", on_store_error="deny"
    )
    with Load(lambda i: limiter.try_acquire("k")) as load:
        wait_for(lambda: limiter.metrics()["decisions"] > 100, "decisions made by Redis")
        store.close()
        t_closed = time.monotonic()
        wait_for(lambda: limiter.metrics()["fallbacks"] > 20, "fallbacks after close")
        time.sleep(0.5)
        calls = load.stop()
    assert_no_call_waited(calls, "store closed")
    late = calls.between(t_closed + 0.2, float("inf"))
    assert late.results and not any(late.results), "policy 'deny' after the store closed"
    with pytest.raises(llmedge.StoreError, match="closed"):
        store.ping()
    store.close()  # twice is fine


@pytest.mark.asyncio
async def test_asyncio_callers_are_never_blocked_by_a_hung_redis(redis_server):
    # a long timeout makes a blocked event loop obvious: it would lag by ~1 s
    store = llmedge.RedisStore(redis_server.url, timeout=1.0)
    try:
        await store.aping()
        limiter = llmedge.RateLimiter(
            1000.0, 1.0, burst=1000, store=store, name="async", on_store_error="allow"
        )
        lag = LoopLag()
        lag.start()
        redis_server.suspend()
        try:
            results = await asyncio.gather(
                *(limiter.acquire_async("k", timeout=0) for _ in range(20))
            )
            with pytest.raises(llmedge.StoreError):
                await store.aping()
        finally:
            redis_server.resume()
        worst = await lag.stop()
        assert results == [True] * 20  # allowed by the policy once the timeout passed
        assert worst < 0.5, f"the event loop was blocked for {worst:.3f} s"
        assert limiter.metrics()["fallbacks"] >= 20
    finally:
        store.close()


# ---------------------------------------------------------------------------
# The limiter on a Redis Cluster: a master killed under load
# ---------------------------------------------------------------------------


def test_cluster_failover_under_load(redis_cluster):
    store = llmedge.RedisStore(redis_cluster.urls, timeout=TIMEOUT, connect_timeout=0.5)
    try:
        assert store.health()["cluster"] is True
        store.ping()
        limiter = llmedge.RateLimiter(
            1000.0, 1.0, burst=1000, store=store, name="failover",
            on_store_error="local", local_share=4,
        )  # fmt: skip
        users = itertools.cycle([f"user-{i}" for i in range(12)])  # keys on every master
        with Load(lambda i: limiter.try_acquire(next(users))) as load:
            wait_for(lambda: limiter.metrics()["decisions"] > 300, "decisions made by Redis")
            assert limiter.metrics()["fallbacks"] == 0
            # kill the master that holds the first user's limiter key
            owner = redis_cluster.node_for_key("llmedge:rl:failover:{user-0}")
            index = [m.port for m in redis_cluster.masters()].index(owner.port)
            redis_cluster.kill_master(index)
            waited = redis_cluster.wait_for_failover()
            fallbacks = steady(lambda: limiter.metrics()["fallbacks"], timeout=60)
            time.sleep(0.3)
            calls = load.stop()
        assert_no_call_waited(calls, f"cluster failover ({waited:.1f} s)")
        assert fallbacks > 0, "calls for the failed master's keys fell back while it was down"
        assert limiter.metrics()["fallbacks"] == fallbacks
        # decisions for the failed master's keys are the promoted replica's again
        new_owner = redis_cluster.node_for_key("llmedge:rl:failover:{user-0}")
        assert new_owner.port != owner.port
        slow = llmedge.RateLimiter(1, 3600.0, burst=3, store=store, name="failover-after")
        assert [slow.try_acquire("user-0") for _ in range(4)] == [True] * 3 + [False]
        assert slow.metrics()["fallbacks"] == 0
        assert new_owner.server.cli("EXISTS", "llmedge:rl:failover-after:{user-0}") == "1"
    finally:
        store.close()


# ---------------------------------------------------------------------------
# Breakers: Redis lost and back, on one server and on a cluster
# ---------------------------------------------------------------------------


class Boom(Exception):
    pass


def _local(*breakers) -> list[bool]:
    return [b.metrics()["local_fallback_active"] for b in breakers]


def _breaker(name, store):
    return llmedge.CircuitBreaker(name, store=store, failure_threshold=3, recovery_timeout=60.0)


def _raise():
    raise Boom("down")


def _opens_the_other(a, b) -> None:
    """Shared state: failures through `a` open `b` too."""
    for _ in range(3):
        with pytest.raises(Boom):
            a(_raise)()
    wait_for(lambda: b.state == "open", "b opens after a's failures")


def test_breaker_falls_back_locally_when_redis_dies_and_converges_when_it_returns(redis_server):
    a_store = llmedge.RedisStore(redis_server.url, timeout=TIMEOUT, connect_timeout=0.5)
    b_store = llmedge.RedisStore(redis_server.url, timeout=TIMEOUT, connect_timeout=0.5)
    try:
        a = _breaker("svc-kill", a_store)
        b = _breaker("svc-kill", b_store)
        assert a.shared and b.shared

        def ok(i):
            return a(lambda: i)() if i % 2 else b(lambda: i)()

        with Load(ok, threads=4) as load:
            time.sleep(0.3)
            redis_server.kill()
            wait_for(lambda: all(_local(a, b)), "both breakers fall back to local state")
            time.sleep(0.5)
            redis_server.restart()
            wait_for(lambda: not any(_local(a, b)), "both breakers share state again")
            calls = load.stop()
        assert_no_call_waited(calls, "breaker, Redis killed")
        assert all(isinstance(r, int) for r in calls.results), "closed: every call ran"
        assert a.metrics()["fallbacks"] > 0 or a.metrics()["store_errors"] > 0
        # shared again: failures in one process open the breaker in the other
        _opens_the_other(a, b)
        with pytest.raises(llmedge.CircuitOpenError):
            b(lambda: 1)()
    finally:
        a_store.close()
        b_store.close()


def test_a_failing_provider_opens_the_breaker_while_redis_hangs(redis_server):
    store = llmedge.RedisStore(redis_server.url, timeout=TIMEOUT, connect_timeout=0.5)
    try:
        br = _breaker("svc-down", store)
        redis_server.suspend()  # connections hang: the worst case for a client
        try:
            durations, outcomes = [], []
            deadline = time.monotonic() + 30
            # the provider fails on every call: the local breaker must open and
            # reject, and no call may wait for the hung Redis
            while time.monotonic() < deadline:
                t = time.monotonic()
                try:
                    br(_raise)()
                except Boom:
                    outcomes.append("failed")
                except llmedge.CircuitOpenError:
                    outcomes.append("rejected")
                durations.append(time.monotonic() - t)
                if outcomes[-1] == "rejected":
                    break
                time.sleep(0.02)
            assert outcomes[-1] == "rejected", f"never opened: {len(outcomes)} failures"
            assert max(durations) <= BOUND, durations
            assert br.metrics()["local_fallback_active"] is True
        finally:
            redis_server.resume()
    finally:
        store.close()


def test_breaker_on_a_cluster_survives_a_failover(redis_cluster):
    a_store = llmedge.RedisStore(redis_cluster.urls, timeout=TIMEOUT, connect_timeout=0.5)
    b_store = llmedge.RedisStore(redis_cluster.urls, timeout=TIMEOUT, connect_timeout=0.5)
    try:
        a = _breaker("svc-cluster", a_store)
        b = _breaker("svc-cluster", b_store)

        def ok(i):
            return (a if i % 2 else b)(lambda: i)()

        with Load(ok, threads=4) as load:
            time.sleep(0.3)
            owner = redis_cluster.node_for_key("llmedge:cb:{svc-cluster}:state")
            index = [m.port for m in redis_cluster.masters()].index(owner.port)
            redis_cluster.kill_master(index)
            redis_cluster.wait_for_failover()
            wait_for(
                lambda: not any(_local(a, b)),
                "both breakers share state again after the failover",
                timeout=60,
            )
            calls = load.stop()
        assert_no_call_waited(calls, "breaker, cluster failover")
        assert all(isinstance(r, int) for r in calls.results)
        _opens_the_other(a, b)
    finally:
        a_store.close()
        b_store.close()

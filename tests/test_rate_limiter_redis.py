"""RateLimiter and MultiRateLimiter with store= against a real redis-server.

Rates are slow (per hour) wherever exact counts matter, so refill during a
test is far below one unit and the decisions can be compared with the
in-process limiter on a frozen clock. Waits poll for an event with a generous
deadline; no assertion depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading

import pytest
from conftest import FakeClock
from docs_text import docs_text
from store_support import answers, wait_for

from llmedge import MultiRateLimiter, RateLimiter, RateLimitExceeded, RedisStore, StoreError
from llmedge.store import loop_bridge

HOUR = 3600.0


@pytest.fixture
def store(redis_server):
    s = RedisStore(redis_server.url, timeout=0.5)
    yield s
    s.close()


def test_same_decisions_as_the_local_limiter(store):
    rng = random.Random(12)
    remote = RateLimiter(5, HOUR, burst=20, store=store, name="diff")
    local = RateLimiter(5, HOUR, burst=20, clock=FakeClock())
    for _ in range(200):
        key = rng.choice("abc")
        cost = rng.randint(0, 7)
        assert remote.try_acquire(key, cost) == local.try_acquire(key, cost), (key, cost)
    for key in "abc":
        assert remote.available(key) == local.available(key)
        # Redis' clock moved on by the test's duration, a tiny fraction of a unit.
        assert remote.retry_after(key, 3) == pytest.approx(local.retry_after(key, 3), abs=5.0)
    assert remote.shared and not local.shared


def test_burst_retry_after_check_and_acquire(store):
    limiter = RateLimiter(2, HOUR, store=store, name="b")
    assert limiter.burst == 2 and limiter.rate == 2
    assert limiter.try_acquire("k") and limiter.try_acquire("k")
    assert not limiter.try_acquire("k")
    with pytest.raises(RateLimitExceeded) as info:
        limiter.check("k")
    assert info.value.key == "k" and 1700 < info.value.retry_after <= 1800
    with pytest.raises(RateLimitExceeded):
        limiter.acquire("k", timeout=1.0)
    assert limiter.available("k") == 0 and limiter.available("other") == 2
    assert len(limiter) == 1
    assert limiter.reset("k") and not limiter.reset("k")
    assert limiter.available("k") == 2
    limiter.try_acquire("x")
    limiter.clear()
    assert len(limiter) == 0
    with pytest.raises(ValueError, match="exceeds the burst"):
        limiter.try_acquire("k", 3)
    assert "name='b'" in repr(limiter).replace('"', "'")


def test_multi_is_all_or_nothing(store, redis_server):
    limits = {"requests": (3, HOUR), "tokens": (1000, HOUR)}
    multi = MultiRateLimiter(limits, store=store, name="m")
    assert multi.try_acquire("k", requests=1, tokens=900)
    assert not multi.try_acquire("k", requests=1, tokens=200)
    assert multi.available("k") == {"requests": 2, "tokens": 100}
    assert multi.try_acquire("k", requests=1, tokens=100)
    assert multi.limits == {"requests": (3.0, HOUR, 3), "tokens": (1000.0, HOUR, 1000)}
    assert redis_server.cli("HLEN", "llmedge:rl:m:{k}") == "2"
    via_classmethod = RateLimiter.multi(limits, store=store, name="m")
    assert via_classmethod.available("k") == {"requests": 1, "tokens": 0}


def test_same_configuration_shares_state_names_separate_it(store):
    a = RateLimiter(3, HOUR, store=store)
    b = RateLimiter(3, HOUR, store=store)
    other = RateLimiter(3, HOUR, store=store, name="other")
    assert a.try_acquire("k", 3)
    assert not b.try_acquire("k")
    assert other.try_acquire("k", 3)


def test_idle_keys_expire(store, redis_server):
    slow = RateLimiter(1, HOUR, burst=2, store=store, name="slow")
    assert slow.try_acquire("k")
    # The hash lives until its bucket would be full again: one unit, an hour.
    assert 3_500_000 < int(redis_server.cli("PTTL", "llmedge:rl:slow:{k}")) <= 3_600_001
    limiter = RateLimiter(1000, 1.0, burst=5, store=store, name="idle")
    assert limiter.try_acquire("k", 5)
    wait_for(lambda: redis_server.cli("EXISTS", "llmedge:rl:idle:{k}") == "0", "expiry")
    assert limiter.available("k") == 5


def test_client_clock_is_irrelevant(store):
    # With a store decisions use Redis' TIME; a clock only drives the local
    # fallback, so a wildly wrong one changes nothing while Redis answers.
    skewed = RateLimiter(2, HOUR, store=store, name="t", clock=FakeClock(-1e9))
    normal = RateLimiter(2, HOUR, store=store, name="t")
    assert skewed.try_acquire("k")
    assert normal.try_acquire("k")
    assert not skewed.try_acquire("k")
    assert normal.retry_after("k") == pytest.approx(skewed.retry_after("k"), abs=1.0)


def test_bad_arguments(store):
    with pytest.raises(ValueError, match='"local", "allow" or "deny"'):
        RateLimiter(1, store=store, on_store_error="open")
    with pytest.raises(ValueError, match="local_share must be an integer >= 1"):
        RateLimiter(1, store=store, local_share=0)
    with pytest.raises(TypeError, match="store must be a llmedge.RedisStore"):
        RateLimiter(1, store="redis://localhost")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spaces"):
        RateLimiter(1, store=store, name="my limit")
    with pytest.raises(ValueError, match="hash tag"):
        MultiRateLimiter({"r": (1, 1.0)}, store=store, name="{x}")
    with pytest.raises(ValueError, match="server's time"):
        RateLimiter(1, store=store, clock=FakeClock(), on_store_error="deny")


def test_values_of_the_wrong_type_are_store_errors(store, redis_server):
    limiter = RateLimiter(1, HOUR, store=store, name="w")
    redis_server.cli("SET", "llmedge:rl:w:{str}", "hello")
    redis_server.cli("HSET", "llmedge:rl:w:{num}", "tat", "soon")
    with pytest.raises(StoreError, match="WRONGTYPE") as info:
        limiter.try_acquire("str")
    assert "'str'" in str(info.value) or '"str"' in str(info.value)
    with pytest.raises(StoreError, match="not a rate limiter TAT"):
        limiter.available("num")
    assert limiter.try_acquire("fine")
    assert limiter.metrics()["fallbacks"] == 0
    assert limiter.metrics()["store_errors"] == 2


def test_exact_totals_from_threads_and_asyncio(store):
    limiter = RateLimiter(1, HOUR, burst=100, store=store, name="hammer", deny_cache=False)
    admitted = []
    lock = threading.Lock()

    def worker() -> None:
        n = sum(limiter.try_acquire("k") for _ in range(40))
        with lock:
            admitted.append(n)

    async def tasks() -> int:
        async def one() -> bool:
            try:
                return await limiter.acquire_async("k", timeout=0.0)
            except RateLimitExceeded:
                return False

        return sum(await asyncio.gather(*(one() for _ in range(80))))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    from_async = asyncio.run(tasks())
    for t in threads:
        t.join()
    assert sum(admitted) + from_async == 100
    assert limiter.metrics()["decisions"] == 8 * 40 + 80


def test_the_deny_cache_spares_round_trips(store):
    limiter = RateLimiter(1, HOUR, burst=1, store=store, name="dc")
    assert limiter.try_acquire("k")
    calls = store.metrics()["calls"]
    for _ in range(10):
        assert not limiter.try_acquire("k")
    assert store.metrics()["calls"] == calls + 1
    assert limiter.metrics()["deny_cache_hits"] == 9
    assert limiter.reset("k")
    assert limiter.try_acquire("k")


@pytest.mark.parametrize("policy", ["local", "allow", "deny"])
def test_fallback_policies_when_redis_dies_and_recovery(redis_server, policy):
    store = RedisStore(redis_server.url, timeout=0.2, connect_timeout=0.2)
    clock = FakeClock() if policy == "local" else None
    limiter = RateLimiter(
        10, HOUR, store=store, name="f", on_store_error=policy, local_share=2, clock=clock
    )
    assert limiter.try_acquire("k", 10)
    redis_server.kill()
    granted = [limiter.try_acquire("k") for _ in range(8)]
    expected = {"local": [True] * 5 + [False] * 3, "allow": [True] * 8, "deny": [False] * 8}
    assert granted == expected[policy]
    m = limiter.metrics()
    assert m["fallbacks"] == 8 and m["store_errors"] == 8
    assert store.health()["fallbacks"] == 8
    with pytest.raises(StoreError):
        limiter.reset("k")
    redis_server.start()  # empty: the key's bucket is full again
    wait_for(lambda: answers(store), "the store to reconnect")
    fallbacks = limiter.metrics()["fallbacks"]
    assert limiter.available("k") == 10
    assert limiter.metrics()["fallbacks"] == fallbacks
    decisions = limiter.metrics()["decisions"]
    assert limiter.try_acquire("k", 10)
    assert limiter.metrics()["decisions"] == decisions + 1


def test_a_paused_server_costs_at_most_the_timeout_per_call(redis_server):
    store = RedisStore(redis_server.url, timeout=0.05)
    limiter = RateLimiter(1, HOUR, burst=5, store=store, name="p", on_store_error="allow")
    assert limiter.try_acquire("k")
    redis_server.pause(1.0)
    results = [limiter.try_acquire("k") for _ in range(3)]
    assert results == [True, True, True]
    assert store.metrics()["timeouts"] >= 1
    assert limiter.metrics()["fallbacks"] >= 1
    wait_for(lambda: answers(store), "the pause to end")
    decisions = limiter.metrics()["decisions"]
    assert limiter.try_acquire("k")
    assert limiter.metrics()["decisions"] == decisions + 1


def test_the_readme_example_runs(redis_server, capsys):
    section = docs_text().split("### Shared limits: `RedisStore`", 1)[1]
    source = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "redis://localhost:6379/0" in source
    exec(
        compile(source.replace("redis://localhost:6379/0", redis_server.url), "README", "exec"), {}
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str([True] * 5 + [False])
    assert "'shared': True" in out[1] and "'fallbacks': 0" in out[1]
    assert out[2] == "True 1"


class _CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    """A default executor that records whether anything ran in it."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.submitted = 0

    def submit(self, *args, **kwargs):
        self.submitted += 1
        return super().submit(*args, **kwargs)


async def _granted(acquire) -> bool:
    try:
        return await acquire()
    except RateLimitExceeded as exc:
        assert exc.retry_after > 0
        return False


def test_acquire_async_is_resolved_by_the_store_without_an_executor(store):
    limiter = RateLimiter(1, HOUR, burst=3, store=store, name="bridge", deny_cache=False)
    limits = {"requests": (2, HOUR), "tokens": (100, HOUR)}
    multi = MultiRateLimiter(limits, store=store, name="bridge-m")
    executor = _CountingExecutor()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(executor)
        one = [_granted(lambda: limiter.acquire_async("k", timeout=0)) for _ in range(5)]
        assert sum(await asyncio.gather(*one)) == 3
        assert await _granted(lambda: multi.acquire_async("k", timeout=0, requests=1, tokens=60))
        assert not await _granted(lambda: multi.acquire_async("k", timeout=0, tokens=60))
        assert await _granted(lambda: multi.acquire_async("k", timeout=0, requests=1, tokens=40))
        with pytest.raises(ValueError, match="unknown limit"):
            await multi.acquire_async("k", words=1)
        with pytest.raises(ValueError, match="cost must be"):
            await limiter.acquire_async("k", cost=-1)
        # A cancelled attempt leaves nothing behind; the next ones still work.
        task = asyncio.ensure_future(limiter.acquire_async("other"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await limiter.acquire_async("third", timeout=0)
        bridge = loop_bridge(loop)
        assert bridge is not None
        # the cancelled attempt's reply may come after the third's (the
        # runtime does not order the two calls): its future goes when it does
        for _ in range(500):
            if bridge.pending() == 0:
                break
            await asyncio.sleep(0.01)
        assert bridge.pending() == 0 and "pending=0" in repr(bridge)

    asyncio.run(main())
    executor.shutdown()
    assert executor.submitted == 0, "attempts ran in the executor"
    assert limiter.metrics()["decisions"] == 5 + 2
    assert multi.available("k") == {"requests": 0, "tokens": 0}


def test_acquire_async_falls_back_locally_on_the_loop(redis_server):
    store = RedisStore(redis_server.url, timeout=0.2, connect_timeout=0.2)
    clock = FakeClock()
    limiter = RateLimiter(10, HOUR, store=store, name="fa", local_share=2, clock=clock)

    async def main() -> list[bool]:
        return [await _granted(lambda: limiter.acquire_async("k", timeout=0)) for _ in range(7)]

    redis_server.kill()
    assert asyncio.run(main()) == [True] * 5 + [False] * 2
    assert limiter.metrics()["fallbacks"] == 7
    store.close()


class _NoReaderLoop(asyncio.SelectorEventLoop):
    def add_reader(self, *args, **kwargs):
        raise NotImplementedError


def test_acquire_async_uses_the_executor_where_the_loop_cannot_watch_a_socket(store):
    limiter = RateLimiter(1, HOUR, burst=2, store=store, name="noreader")
    loop = _NoReaderLoop()
    executor = _CountingExecutor()
    loop.set_default_executor(executor)

    async def attempts() -> list[bool]:
        return [await _granted(lambda: limiter.acquire_async("k", timeout=0)) for _ in range(3)]

    try:
        assert loop.run_until_complete(attempts()) == [True, True, False]
        assert loop_bridge(loop) is None
    finally:
        loop.close()
        executor.shutdown()
    assert executor.submitted == 3

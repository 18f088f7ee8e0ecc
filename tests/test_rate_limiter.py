"""llmedge.RateLimiter and RateLimiter.multi: GCRA rules, keys, blocking, concurrency."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest
from conftest import BAD_CLOCK_READINGS, FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from llmedge import LlmEdgeError, MultiRateLimiter, RateLimiter, RateLimitExceeded


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(500.0)


def test_burst_then_refill(clock):
    rl = RateLimiter(10, 1.0, burst=5, clock=clock)
    assert [rl.try_acquire("a") for _ in range(6)] == [True] * 5 + [False]
    assert rl.retry_after("a") == pytest.approx(0.1)
    assert rl.retry_after("a", 3) == pytest.approx(0.3)
    clock.advance(0.1)
    assert rl.try_acquire("a") and not rl.try_acquire("a")
    clock.advance(0.25)
    assert rl.available("a") == 2
    clock.advance(100)
    assert rl.available("a") == 5  # never more than the burst
    assert rl.try_acquire("a", 5) and not rl.try_acquire("a")


def test_default_burst_is_the_rate(clock):
    assert RateLimiter(100, clock=clock).burst == 100
    assert RateLimiter(0.5, clock=clock).burst == 1
    rl = RateLimiter(3, 1.0, clock=clock)
    assert rl.try_acquire(cost=3) and not rl.try_acquire()
    clock.advance(1 / 3)
    assert rl.try_acquire() and not rl.try_acquire()


def test_refill_is_exact_over_many_steps(clock):
    rl = RateLimiter(7, 1.0, burst=1, clock=clock)
    granted = 0
    for _ in range(7000):
        clock.advance(1 / 7000)
        granted += rl.try_acquire()
    assert granted == 7  # one second at 7/s, after the first permit... exactly 7


def test_keys_are_independent_and_idle_keys_dropped(clock):
    rl = RateLimiter(1, 1.0, burst=2, clock=clock)
    assert rl.try_acquire("a", 2)
    assert rl.try_acquire("b", 1)
    assert not rl.try_acquire("a")
    assert len(rl) == 2
    clock.advance(1)
    assert len(rl) == 1  # "b" is full again and carries no state
    clock.advance(1)
    assert len(rl) == 0
    assert rl.try_acquire("a", 2)
    assert rl.reset("a") and not rl.reset("a")
    assert rl.try_acquire("a", 2)
    rl.clear()
    assert len(rl) == 0


def test_zero_cost_is_free(clock):
    rl = RateLimiter(1, burst=1, clock=clock)
    assert rl.try_acquire("z", 0)
    assert len(rl) == 0
    assert rl.try_acquire("z")
    assert rl.try_acquire("z", 0)


def test_max_keys_bounds_memory(clock):
    rl = RateLimiter(1, 1.0, burst=10, clock=clock, max_keys=3)
    for i, cost in enumerate([1, 5, 6]):
        assert rl.try_acquire(f"k{i}", cost)
    assert rl.try_acquire("new", 1)  # all active: the key closest to idle goes
    assert len(rl) == 3
    assert rl.available("k0") == 10  # evicted
    assert rl.available("k2") == 4
    clock.advance(5)  # k1 and "new" are idle now: they make room first
    assert rl.try_acquire("newer", 1)
    assert rl.available("k2") == 9


def test_check_raises_with_retry_after(clock):
    rl = RateLimiter(2, 1.0, burst=1, clock=clock)
    rl.check("u")
    with pytest.raises(RateLimitExceeded) as info:
        rl.check("u")
    assert info.value.retry_after == pytest.approx(0.5)
    assert info.value.key == "u"
    assert isinstance(info.value, LlmEdgeError)


def test_acquire_with_timeout_fails_fast(clock):
    rl = RateLimiter(1, 60.0, burst=1, clock=clock)
    assert rl.acquire("k") is True
    with pytest.raises(RateLimitExceeded) as info:
        rl.acquire("k", timeout=1.0)  # the wait is 60 s: no point sleeping
    assert info.value.retry_after == pytest.approx(60.0)


def test_acquire_blocks_until_granted():
    rl = RateLimiter(1000, 1.0, burst=1)  # real clock: waits ~1 ms
    for _ in range(5):
        assert rl.acquire("k", timeout=10)
    assert rl.acquire("k")


@pytest.mark.asyncio
async def test_acquire_async_waits_without_blocking_the_loop():
    rl = RateLimiter(1000, 1.0, burst=1)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    t = asyncio.create_task(ticker())
    for _ in range(5):
        assert await rl.acquire_async("k", timeout=10)
    t.cancel()
    assert ticks > 0
    slow = RateLimiter(1, 3600.0, burst=1)
    await slow.acquire_async()
    with pytest.raises(RateLimitExceeded):
        await slow.acquire_async(timeout=0.01)


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        ((0,), {}, ValueError, "rate"),
        ((-1,), {}, ValueError, "-1"),
        ((math.inf,), {}, ValueError, "rate"),
        ((1, 0), {}, ValueError, "per"),
        ((1, -2.0), {}, ValueError, "-2"),
        ((1,), {"burst": 0}, ValueError, "burst"),
        ((1,), {"max_keys": 0}, ValueError, "max_keys"),
        ((1,), {"clock": 3}, TypeError, "clock"),
    ],
)
def test_bad_construction(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        RateLimiter(*args, **kwargs)


def test_bad_costs_leave_state_unchanged(clock):
    rl = RateLimiter(5, burst=5, clock=clock)
    rl.try_acquire("k", 2)
    with pytest.raises(ValueError, match="-1"):
        rl.try_acquire("k", -1)
    with pytest.raises(ValueError, match="exceeds the burst"):
        rl.try_acquire("k", 6)
    with pytest.raises(ValueError, match="exceeds the burst"):
        rl.acquire("k", 6)  # an error, not an eternal wait
    with pytest.raises(TypeError):
        rl.try_acquire("k", 1.5)
    with pytest.raises(TypeError):
        rl.try_acquire(3)
    with pytest.raises(ValueError, match="timeout"):
        rl.acquire("k", 1, timeout=-1)
    assert rl.available("k") == 3


@pytest.mark.parametrize(("reading", "exc", "match"), BAD_CLOCK_READINGS)
def test_broken_clock_raises_and_leaves_state(clock, reading, exc, match):
    rl = RateLimiter(5, burst=5, clock=clock)
    ml = RateLimiter.multi({"requests": (3, 60.0)}, clock=clock)
    assert rl.try_acquire("k", 2) and ml.try_acquire("k", requests=1)
    clock.now = reading
    reads = [
        lambda: rl.try_acquire("k"),
        lambda: rl.acquire("k", timeout=1.0),
        lambda: rl.check("k"),
        lambda: rl.retry_after("k"),
        lambda: rl.available("k"),
        lambda: len(rl),
        lambda: asyncio.run(rl.acquire_async("k")),
        lambda: ml.try_acquire("k", requests=1),
        lambda: ml.acquire("k", requests=1),
        lambda: ml.check("k", requests=1),
        lambda: ml.retry_after("k", requests=1),
        lambda: ml.available("k"),
        lambda: len(ml),
        lambda: asyncio.run(ml.acquire_async("k", requests=1)),
    ]
    for read in reads:
        with pytest.raises(exc, match=match):
            read()
    clock.now = 500.0
    assert rl.available("k") == 3 and ml.available("k") == {"requests": 2}


def test_repr(clock):
    rl = RateLimiter(10, 1.0, burst=20, clock=clock)
    rl.try_acquire("x")
    assert repr(rl) == "RateLimiter(rate=10, per=1, burst=20, max_keys=100000, keys=1)"


# -- multi-limit ---------------------------------------------------------------


def test_multi_is_all_or_nothing(clock):
    ml = RateLimiter.multi({"requests": (3, 60.0), "tokens": (1000, 60.0)}, clock=clock)
    assert isinstance(ml, MultiRateLimiter)
    assert ml.try_acquire("org", requests=1, tokens=900)
    assert not ml.try_acquire("org", requests=1, tokens=200)  # tokens short
    assert ml.available("org") == {"requests": 2, "tokens": 100}  # nothing charged
    assert ml.retry_after("org", requests=1, tokens=200) == pytest.approx(6.0)
    assert ml.try_acquire("org", requests=1, tokens=100)
    assert ml.try_acquire("org", requests=1)
    assert not ml.try_acquire("org", requests=1)  # requests short, tokens free
    assert ml.available("org") == {"requests": 0, "tokens": 0}
    clock.advance(20)
    assert ml.available("org") == {"requests": 1, "tokens": 333}
    with pytest.raises(RateLimitExceeded):
        ml.check("org", requests=1, tokens=400)
    assert ml.limits == {"requests": (3.0, 60.0, 3), "tokens": (1000.0, 60.0, 1000)}
    assert "requests" in repr(ml)


def test_multi_bad_input(clock):
    ml = RateLimiter.multi({"requests": (3, 60.0), "tokens": (1000, 60.0, 500)}, clock=clock)
    with pytest.raises(ValueError, match="unknown limit 'tokns'|\"tokns\""):
        ml.try_acquire("k", tokns=1)
    with pytest.raises(ValueError, match="exceeds the burst of 500"):
        ml.try_acquire("k", tokens=501)
    with pytest.raises(ValueError, match="-3"):
        ml.try_acquire("k", requests=-3)
    with pytest.raises(TypeError):
        ml.try_acquire("k", requests=1.5)
    assert ml.available("k") == {"requests": 3, "tokens": 500}
    with pytest.raises(ValueError):
        RateLimiter.multi({})
    with pytest.raises(ValueError, match="requests"):
        RateLimiter.multi({"requests": (0, 60.0)})
    with pytest.raises(ValueError, match="rate, per"):
        RateLimiter.multi({"requests": 5})


def test_multi_blocking_and_async(clock):
    ml = RateLimiter.multi({"requests": (1, 3600.0)}, clock=clock)
    assert ml.acquire("k", requests=1)
    with pytest.raises(RateLimitExceeded):
        ml.acquire("k", timeout=0, requests=1)
    with pytest.raises(RateLimitExceeded):
        asyncio.run(ml.acquire_async("k", timeout=0, requests=1))
    assert asyncio.run(ml.acquire_async("other", requests=1))


# -- concurrency ---------------------------------------------------------------


def test_threads_get_exactly_the_burst():
    rl = RateLimiter(1, 3600.0, burst=37)
    start = threading.Barrier(16, timeout=30)
    granted = [0] * 16

    def worker(i):
        start.wait()
        for _ in range(100):
            granted[i] += rl.try_acquire("shared")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 37


def test_threads_multi_limit_exact_totals():
    ml = RateLimiter.multi({"requests": (50, 3600.0), "tokens": (1000, 3600.0)})
    start = threading.Barrier(16, timeout=30)
    granted = [0] * 16

    def worker(i):
        start.wait()
        for _ in range(50):
            granted[i] += ml.try_acquire("k", requests=1, tokens=30)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 33  # tokens run out first: 33 * 30 = 990
    assert ml.available("k") == {"requests": 17, "tokens": 10}


@pytest.mark.asyncio
async def test_tasks_get_exactly_the_burst():
    rl = RateLimiter(1, 3600.0, burst=10)

    async def one():
        await asyncio.sleep(0)
        return rl.try_acquire("k")

    results = await asyncio.gather(*(one() for _ in range(100)))
    assert sum(results) == 10


# -- differential test against a pure-Python GCRA -------------------------------------


class ModelBucket:
    """Token bucket with exact fractions of tokens."""

    def __init__(self, rate, per, burst):
        self.rate, self.per, self.burst = rate, per, burst
        self.tokens, self.last = {}, {}

    def try_acquire(self, key, cost, now):
        tokens = self.tokens.get(key, self.burst)
        tokens = min(self.burst, tokens + (now - self.last.get(key, now)) * self.rate / self.per)
        self.last[key] = now
        if tokens + 1e-9 >= cost:
            self.tokens[key] = tokens - cost
            return True
        self.tokens[key] = tokens
        return False


@settings(max_examples=200, deadline=None)
@given(
    rate=st.sampled_from([1, 2, 5, 10, 100]),
    burst=st.integers(1, 20),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.integers(0, 20),
            st.sampled_from([0, 0, 0.01, 0.1, 0.25, 1.0, 3.0]),
        ),
        max_size=60,
    ),
)
def test_matches_token_bucket_model(rate, burst, ops):
    clock = FakeClock(0.0)
    rl = RateLimiter(rate, 1.0, burst=burst, clock=clock)
    model = ModelBucket(rate, 1.0, burst)
    for key, cost, dt in ops:
        clock.advance(dt)
        if cost > burst:
            with pytest.raises(ValueError):
                rl.try_acquire(key, cost)
            continue
        assert rl.try_acquire(key, cost) == model.try_acquire(key, cost, clock.now)


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.integers(0, 3),
            st.integers(0, 400),
            st.sampled_from([0, 0, 0.5, 1.0, 7.5, 30.0]),
        ),
        max_size=60,
    ),
)
def test_multi_matches_all_or_nothing_model(ops):
    clock = FakeClock(0.0)
    ml = RateLimiter.multi({"requests": (5, 60.0), "tokens": (1000, 60.0, 400)}, clock=clock)
    requests = ModelBucket(5, 60.0, 5)
    tokens = ModelBucket(1000, 60.0, 400)
    for key, r, t, dt in ops:
        clock.advance(dt)
        # peek both buckets without charging, then charge both or neither
        r_ok = requests.try_acquire(key, 0, clock.now) and requests.tokens[key] + 1e-9 >= r
        t_ok = tokens.try_acquire(key, 0, clock.now) and tokens.tokens[key] + 1e-9 >= t
        expected = r_ok and t_ok
        if expected:
            requests.tokens[key] -= r
            tokens.tokens[key] -= t
        assert ml.try_acquire(key, requests=r, tokens=t) == expected
        assert ml.available(key) == {
            "requests": math.floor(requests.tokens[key] + 1e-9),
            "tokens": math.floor(tokens.tokens[key] + 1e-9),
        }

"""llmedge.CircuitBreaker: transitions, windows, wrappers, concurrency, bad input."""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import math
import threading

import pytest
from conftest import BAD_CLOCK_READINGS, FakeClock
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import llmedge
from llmedge import CircuitBreaker, CircuitOpenError


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


def boom():
    raise RuntimeError("boom")


def ok():
    return "ok"


def fail_n(b: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(RuntimeError):
            b.call(boom)


# -- transitions -----------------------------------------------------------


def test_opens_after_consecutive_failures(clock):
    b = CircuitBreaker("t1", failure_threshold=3, recovery_timeout=30, clock=clock)
    fail_n(b, 2)
    assert b.call(ok) == "ok"  # a success resets the run
    fail_n(b, 2)
    assert b.state == "closed"
    fail_n(b, 1)
    assert b.state == "open"
    clock.advance(10)
    with pytest.raises(CircuitOpenError) as info:
        b.call(ok)
    err = info.value
    assert (err.name, err.state) == ("t1", "open")
    assert err.retry_after == pytest.approx(20.0)
    assert isinstance(err, llmedge.LlmEdgeError)
    m = b.metrics()
    assert m["rejections"] == 1 and m["failures"] == 5 and m["successes"] == 1
    assert m["next_attempt_at"] == pytest.approx(1030.0)
    assert m["time_in_state"] == pytest.approx(10.0)


def test_half_open_probes_then_closes(clock):
    b = CircuitBreaker(
        "t2", failure_threshold=1, recovery_timeout=5, success_threshold=2, clock=clock
    )
    fail_n(b, 1)
    clock.advance(4.999)
    with pytest.raises(CircuitOpenError):
        b.call(ok)
    clock.advance(0.001)
    assert b.call(ok) == "ok"
    assert b.state == "half_open"
    assert b.call(ok) == "ok"
    assert b.state == "closed"
    assert b.metrics()["consecutive_failures"] == 0


def test_half_open_admits_only_max_calls(clock):
    b = CircuitBreaker(
        "t3",
        failure_threshold=1,
        recovery_timeout=1,
        half_open_max_calls=2,
        success_threshold=2,
        clock=clock,
    )

    @b
    def held():
        yield 1

    fail_n(b, 1)
    clock.advance(1)
    s1, s2 = held(), held()  # a stream holds its permit until it ends
    with pytest.raises(CircuitOpenError) as info:
        held()
    assert info.value.state == "half_open"
    assert list(s1) == [1]
    s3 = held()  # s1's slot is free again
    assert list(s2) == [1] and b.state == "closed"
    assert list(s3) == [1]  # admitted while half-open, finished while closed: stale


def test_failed_probe_reopens_with_backoff(clock):
    b = CircuitBreaker(
        "t4",
        failure_threshold=1,
        recovery_timeout=10,
        backoff_multiplier=3,
        max_recovery_timeout=50,
        clock=clock,
    )
    fail_n(b, 1)
    for expected in (30, 50, 50):
        clock.advance(b.retry_after)
        fail_n(b, 1)
        assert b.state == "open"
        assert b.retry_after == pytest.approx(expected)
    clock.advance(50)
    for _ in range(3):
        b.call(ok)
    assert b.state == "closed"
    fail_n(b, 1)
    assert b.retry_after == pytest.approx(10)  # closing reset the backoff


def test_failure_rate_count_window(clock):
    b = CircuitBreaker(
        "t5",
        failure_threshold=100,
        failure_rate_threshold=0.5,
        window_size=4,
        minimum_calls=4,
        clock=clock,
    )
    fail_n(b, 1)
    for _ in range(5):
        b.call(ok)
    fail_n(b, 1)  # last four: ok ok ok F
    assert b.state == "closed"
    assert b.metrics()["failure_rate"] == pytest.approx(0.25)
    fail_n(b, 1)  # ok ok F F
    assert b.state == "open"


def test_minimum_calls_gate(clock):
    b = CircuitBreaker(
        "t6",
        failure_threshold=100,
        failure_rate_threshold=0.5,
        window_size=10,
        minimum_calls=5,
        clock=clock,
    )
    fail_n(b, 4)
    assert b.state == "closed"
    fail_n(b, 1)
    assert b.state == "open"


def test_failure_rate_time_window(clock):
    clock.now = 100.0
    b = CircuitBreaker(
        "t7",
        failure_threshold=100,
        failure_rate_threshold=1.0,
        window_type="time",
        window_size=2,
        minimum_calls=2,
        clock=clock,
    )
    fail_n(b, 1)
    clock.advance(1)
    b.call(ok)
    clock.advance(1)  # the failure at second 100 has left the window
    fail_n(b, 1)
    assert b.state == "closed"
    assert b.metrics()["window_calls"] == 2
    clock.advance(1)
    fail_n(b, 1)
    assert b.state == "open"


def test_slow_calls_open_the_circuit(clock):
    b = CircuitBreaker(
        "t8",
        slow_call_duration=2.0,
        slow_call_rate_threshold=0.5,
        window_size=4,
        minimum_calls=2,
        clock=clock,
    )

    def slow(seconds):
        clock.advance(seconds)
        return seconds

    b.call(slow, 1.9)
    assert b.state == "closed"
    b.call(slow, 2.0)
    assert b.state == "open"
    m = b.metrics()
    assert m["slow_calls"] == 1 and m["failures"] == 0


def test_manual_states(clock):
    b = CircuitBreaker("t9", failure_threshold=1, clock=clock)
    b.force_open()
    assert b.state == "forced_open"
    clock.advance(1e6)
    with pytest.raises(CircuitOpenError) as info:
        b.call(ok)
    assert info.value.state == "forced_open"
    b.disable()
    fail_n(b, 10)
    assert b.state == "disabled"
    assert b.metrics()["failures"] == 10
    b.reset()
    assert b.state == "closed"
    fail_n(b, 1)
    assert b.state == "open"
    b.reset()
    assert b.call(ok) == "ok"


# -- what counts as a failure -------------------------------------------------


def test_exclude_and_include(clock):
    b = CircuitBreaker("f1", failure_threshold=1, exclude=KeyError, clock=clock)
    with pytest.raises(KeyError):
        b.call(lambda: {}["x"])
    assert b.state == "closed" and b.metrics()["successes"] == 1
    b2 = CircuitBreaker(
        "f2", failure_threshold=1, include=(TimeoutError, ConnectionError), clock=clock
    )
    with pytest.raises(ValueError):
        b2.call(lambda: int("x"))
    assert b2.state == "closed"

    def timeout():
        raise TimeoutError

    with pytest.raises(TimeoutError):
        b2.call(timeout)
    assert b2.state == "open"


class Response:
    def __init__(self, status: int):
        self.status = status


def test_is_failure_judges_values_and_exceptions(clock):
    def is_failure(x):
        if isinstance(x, Response):
            return x.status == 429 or x.status >= 500
        return not isinstance(x, LookupError)

    b = CircuitBreaker("f3", failure_threshold=2, is_failure=is_failure, clock=clock)
    assert b.call(Response, 200).status == 200
    assert b.call(Response, 503).status == 503  # returned, but a failure
    assert b.metrics()["consecutive_failures"] == 1
    with pytest.raises(IndexError):
        b.call(lambda: [][1])
    assert b.metrics()["consecutive_failures"] == 0
    b.call(Response, 429)
    b.call(Response, 500)
    assert b.state == "open"


def test_raising_predicate_is_logged_and_ignored(clock, caplog):
    def bad(x):
        raise AttributeError("predicate bug")

    b = CircuitBreaker("f4", failure_threshold=1, is_failure=bad, clock=clock)
    with caplog.at_level(logging.ERROR, logger="llmedge"):
        assert b.call(ok) == "ok"
    assert b.state == "closed"
    assert "predicate" in caplog.text
    fail_n(b, 1)  # falls back to "an exception is a failure"
    assert b.state == "open"


@pytest.mark.asyncio
async def test_cancellation_is_not_a_failure(clock):
    b = CircuitBreaker("f5", failure_threshold=1, recovery_timeout=1, clock=clock)
    started = asyncio.Event()

    @b
    async def hang():
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(hang())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state == "closed" and b.metrics()["calls"] == 0


# -- fallback --------------------------------------------------------------


@pytest.mark.asyncio
async def test_fallback_gets_the_same_arguments(clock):
    calls = []

    def fallback(*args, **kwargs):
        calls.append((args, kwargs))
        return "cached"

    b = CircuitBreaker("fb", failure_threshold=1, fallback=fallback, clock=clock)

    @b
    def f(x, y=0):
        raise RuntimeError

    @b
    async def g(x):
        return x

    with pytest.raises(RuntimeError):
        f(1)
    assert f(2, y=3) == "cached"
    assert await g(4) == "cached"
    assert calls == [((2,), {"y": 3}), ((4,), {})]

    async def afallback(x):
        return x * 10

    b2 = CircuitBreaker("fb2", failure_threshold=1, fallback=afallback, clock=clock)
    b2.force_open()

    async def never(x):
        raise AssertionError("must not run")

    assert await b2.acall(never, 5) == 50


# -- wrappers --------------------------------------------------------------


def test_decorator_keeps_metadata_and_binds_methods(clock):
    b = CircuitBreaker("w1", clock=clock)

    @b
    def documented(x: int) -> int:
        """Doubles."""
        return 2 * x

    assert documented.__name__ == "documented"
    assert documented.__doc__ == "Doubles."
    assert documented.__wrapped__(2) == 4
    assert documented(3) == 6

    class Client:
        def __init__(self):
            self.n = 0

        @b
        def hit(self, k):
            self.n += k
            return self.n

    c = Client()
    assert c.hit(2) == 2 and c.hit(3) == 5
    assert Client.hit(c, 1) == 6
    assert b.metrics()["calls"] == 4


@pytest.mark.asyncio
async def test_async_function(clock):
    b = CircuitBreaker("w2", failure_threshold=2, clock=clock)

    @b
    async def fetch(x):
        await asyncio.sleep(0)
        if x < 0:
            raise ValueError(x)
        return x

    assert fetch.__name__ == "fetch"
    assert await fetch(1) == 1
    for _ in range(2):
        with pytest.raises(ValueError):
            await fetch(-1)
    with pytest.raises(CircuitOpenError):
        await fetch(1)


@pytest.mark.asyncio
async def test_async_callable_object(clock):
    b = CircuitBreaker("w2b", failure_threshold=1, clock=clock)

    class Client:
        async def __call__(self, x):
            raise ConnectionError(x)

    guarded = b(Client())
    with pytest.raises(ConnectionError):
        await guarded(1)
    assert b.state == "open"  # judged after the await, not at coroutine creation


def test_sync_stream_is_one_call(clock):
    b = CircuitBreaker("w3", failure_threshold=1, clock=clock)

    @b
    def stream(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise ConnectionError("stream broke")
            yield i

    assert list(stream(3)) == [0, 1, 2]
    assert b.metrics()["calls"] == 1 and b.state == "closed"
    s = stream(3)
    next(s)
    s.close()  # the consumer stopped after a chunk: the service was fine
    assert b.metrics()["successes"] == 2
    with pytest.raises(ConnectionError):
        list(stream(5, fail_at=2))
    assert b.state == "open"
    with pytest.raises(CircuitOpenError):
        stream(1)  # rejected at call time, before iteration


def test_abandoned_stream_counts_as_success(clock):
    b = CircuitBreaker("w3b", failure_threshold=1, recovery_timeout=1, clock=clock)

    @b
    def stream():
        yield from range(10)

    fail_n(b, 1)
    clock.advance(1)
    for i in stream():
        if i == 2:
            break  # the probe answered; the consumer stopped reading
    gc.collect()
    assert b.state == "half_open" and b.metrics()["successes"] == 1
    assert b.metrics()["half_open_in_flight"] == 0


def test_unstarted_stream_releases_its_probe(clock):
    b = CircuitBreaker("w4", failure_threshold=1, recovery_timeout=1, clock=clock)

    @b
    def stream():
        yield 1

    fail_n(b, 1)
    clock.advance(1)
    s = stream()
    del s
    gc.collect()
    assert list(stream()) == [1]  # the probe slot was handed back
    assert b.metrics()["calls"] == 2


@pytest.mark.asyncio
async def test_async_stream(clock):
    b = CircuitBreaker("w5", failure_threshold=1, clock=clock)

    @b
    async def tokens(fail=False):
        yield "a"
        await asyncio.sleep(0)
        if fail:
            raise TimeoutError
        yield "b"

    assert [t async for t in tokens()] == ["a", "b"]
    assert b.state == "closed" and b.metrics()["calls"] == 1
    with pytest.raises(TimeoutError):
        async for _ in tokens(fail=True):
            pass
    assert b.state == "open"
    with pytest.raises(CircuitOpenError):
        tokens()


def test_context_manager(clock):
    b = CircuitBreaker("w6", failure_threshold=2, clock=clock)
    with b:
        pass
    with b, b:  # nested blocks keep their own permits
        pass
    for _ in range(2):
        with pytest.raises(RuntimeError), b:
            raise RuntimeError
    assert b.state == "open"
    with pytest.raises(CircuitOpenError), b:
        pytest.fail("must not run")
    assert b.metrics()["calls"] == 5


@pytest.mark.asyncio
async def test_async_context_manager_and_acall(clock):
    b = CircuitBreaker("w7", failure_threshold=2, clock=clock)
    async with b:
        await asyncio.sleep(0)

    async def double(x):
        return 2 * x

    assert await b.acall(double, 4) == 8
    assert b.call(lambda a, *, k: a + k, 1, k=2) == 3
    with pytest.raises(RuntimeError):
        async with b:
            raise RuntimeError
    assert b.metrics()["successes"] == 3 and b.metrics()["failures"] == 1


# -- listeners and registry ----------------------------------------------------


def test_listeners_see_every_transition(clock, caplog):
    b = CircuitBreaker("l1", failure_threshold=1, recovery_timeout=1, clock=clock)
    seen = []

    def bad(*args):
        raise RuntimeError("listener bug")

    b.add_listener(bad)
    b.add_listener(lambda *a: seen.append(a))
    with caplog.at_level(logging.ERROR, logger="llmedge"):
        fail_n(b, 1)
        clock.advance(1)
        b.call(ok)
        b.force_open()
        b.disable()
        b.reset()
    assert seen == [
        ("l1", "closed", "open"),
        ("l1", "open", "half_open"),
        ("l1", "half_open", "forced_open"),
        ("l1", "forced_open", "disabled"),
        ("l1", "disabled", "closed"),
    ]
    assert b.metrics()["successes"] == 1  # the listener's error changed nothing
    assert caplog.text.count("listener bug") == 5
    assert b.remove_listener(bad) and not b.remove_listener(bad)


def test_listener_may_use_the_breaker(clock):
    b = CircuitBreaker("l2", failure_threshold=1, clock=clock)
    states = []
    b.add_listener(lambda name, old, new: states.append((new, b.state, b.metrics()["state"])))
    fail_n(b, 1)  # would deadlock if listeners ran under the lock
    assert states == [("open", "open", "open")]


def test_registry():
    a = CircuitBreaker("reg-a")
    assert llmedge.breakers()["reg-a"] is a
    assert llmedge.get_breaker("reg-a") is a
    a2 = CircuitBreaker("reg-a")
    assert llmedge.get_breaker("reg-a") is a2  # a new breaker replaces the old one
    with pytest.raises(KeyError, match="reg-missing"):
        llmedge.get_breaker("reg-missing")
    del a, a2
    gc.collect()
    assert "reg-a" not in llmedge.breakers()


def test_repr(clock):
    b = CircuitBreaker("r", failure_rate_threshold=0.5, clock=clock)
    r = repr(b)
    assert '"r"' in r and "closed" in r and "failure_rate_threshold=0.5" in r


# -- bad input ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"failure_threshold": -1}, "-1"),
        ({"success_threshold": 0}, "success_threshold"),
        ({"recovery_timeout": 0}, "recovery_timeout"),
        ({"recovery_timeout": -5}, "-5"),
        ({"recovery_timeout": float("nan")}, "recovery_timeout"),
        ({"failure_rate_threshold": 0}, r"\(0, 1\]"),
        ({"failure_rate_threshold": 1.5}, "1.5"),
        ({"window_size": 0}, "window_size"),
        ({"window_type": "sliding"}, "'sliding'|\"sliding\""),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"half_open_max_calls": 0}, "half_open_max_calls"),
        ({"slow_call_duration": -1}, "slow_call_duration"),
        ({"slow_call_rate_threshold": 0.5}, "slow_call_duration"),
        ({"backoff_multiplier": 0.5}, "backoff_multiplier"),
        ({"recovery_timeout": 10, "max_recovery_timeout": 5}, "max_recovery_timeout"),
        ({"window_type": "time", "window_size": 10**6}, "window_size"),
    ],
)
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CircuitBreaker("bad", **kwargs)


def test_bad_window_type_lists_allowed():
    with pytest.raises(ValueError, match='"count", "time"'):
        CircuitBreaker("bad", window_type="rolling")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"exclude": 3},
        {"include": (ValueError, int)},
        {"is_failure": 1},
        {"fallback": "x"},
        {"clock": 5},
    ],
)
def test_bad_types_are_rejected(kwargs):
    with pytest.raises(TypeError):
        CircuitBreaker("bad", **kwargs)


def test_bad_clock_value_leaves_state(clock):
    b = CircuitBreaker("bc", clock=clock)
    clock.now = "soon"  # type: ignore[assignment]
    with pytest.raises(TypeError, match="clock"):
        b.call(ok)
    clock.now = 5.0
    assert b.call(ok) == "ok" and b.metrics()["calls"] == 1


@pytest.mark.parametrize(("reading", "exc", "match"), BAD_CLOCK_READINGS)
def test_broken_clock_raises_and_leaves_state(clock, reading, exc, match):
    b = CircuitBreaker("bc", failure_threshold=1, recovery_timeout=10.0, clock=clock)
    fail_n(b, 1)
    before = b.metrics()
    clock.now = reading
    ran = []
    reads = [
        lambda: b.call(ran.append, 1),
        lambda: b.retry_after,
        b.metrics,
        b.reset,
        b.force_open,
        b.disable,
    ]
    for read in reads:
        with pytest.raises(exc, match=match):
            read()
    assert ran == [] and b.state == "open"
    clock.now = 1000.0
    assert b.metrics() == before
    with pytest.raises(exc, match=match):
        CircuitBreaker("new", clock=FakeClock(reading))  # type: ignore[arg-type]


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


# -- differential test against a pure-Python model ----------------------------------


class ModelBreaker:
    """The documented rules, written plainly: every outcome is kept in a list
    and the window is recomputed from it."""

    def __init__(self, cfg, now):
        self.cfg = cfg
        self.ft = cfg["failure_threshold"]
        self.rt = cfg["recovery_timeout"]
        self.st = cfg["success_threshold"]
        self.rate = cfg.get("failure_rate_threshold")
        self.slow_duration = cfg.get("slow_call_duration")
        self.slow_rate = cfg.get("slow_call_rate_threshold") or (
            1.0 if self.slow_duration is not None else None
        )
        self.window_type = cfg.get("window_type", "count")
        self.size, self.minimum = cfg["window_size"], cfg["minimum_calls"]
        self.hmax = cfg["half_open_max_calls"]
        self.backoff, self.max_recovery = cfg["backoff_multiplier"], cfg["max_recovery_timeout"]
        self.outcomes = []  # (second, failed, slow) since the circuit last closed
        self.state, self.epoch, self.recovery = "closed", 0, self.rt
        self.open_until = now
        self.consec = self.in_flight = self.half_successes = 0

    def window(self, now):
        if self.window_type == "count":
            return self.outcomes[-self.size :]
        second = math.floor(now)
        return [o for o in self.outcomes if second - self.size < o[0] <= second]

    def enter(self, state, now):
        self.state = state
        self.epoch += 1
        self.in_flight = self.half_successes = 0
        if state == "open":
            self.open_until = now + self.recovery
        if state == "closed":
            self.recovery = self.rt
            self.consec = 0
            self.outcomes = []

    def acquire(self, now):
        if self.state in ("closed", "disabled"):
            return (self.epoch, False, now)
        if self.state == "forced_open":
            return None
        if self.state == "open":
            if now < self.open_until:
                return None
            self.enter("half_open", now)
        if self.in_flight < self.hmax:
            self.in_flight += 1
            return (self.epoch, True, now)
        return None

    def record(self, permit, now, failed):
        epoch, probe, start = permit
        slow = self.slow_duration is not None and now - start >= self.slow_duration
        if epoch != self.epoch:
            return
        if self.state == "closed":
            self.consec = self.consec + 1 if failed else 0
            self.outcomes.append((math.floor(now), failed, slow))
            w = self.window(now)
            n = len(w)
            by_rate = n >= self.minimum and (
                (self.rate is not None and sum(o[1] for o in w) >= self.rate * n)
                or (self.slow_rate is not None and sum(o[2] for o in w) >= self.slow_rate * n)
            )
            if self.consec >= self.ft or by_rate:
                self.enter("open", now)
        elif self.state == "half_open" and probe:
            self.in_flight -= 1
            if failed or (slow and self.slow_rate is not None):
                self.recovery = min(self.recovery * self.backoff, self.max_recovery)
                self.enter("open", now)
            else:
                self.half_successes += 1
                if self.half_successes >= self.st:
                    self.enter("closed", now)

    def manual(self, state, now):
        if state == "closed":
            self.recovery = self.rt
            if self.state == "closed":
                self.enter("closed", now)
                return
        if self.state != state:
            self.enter(state, now)


class BreakerMachine(RuleBasedStateMachine):
    CONFIG = dict(
        failure_threshold=3,
        recovery_timeout=10.0,
        success_threshold=2,
        failure_rate_threshold=0.5,
        window_size=6,
        minimum_calls=4,
        half_open_max_calls=2,
        backoff_multiplier=2.0,
        max_recovery_timeout=35.0,
    )

    def __init__(self):
        super().__init__()
        self.clock = FakeClock(0.0)
        self.breaker = CircuitBreaker("model", clock=self.clock, **self.CONFIG)
        self.model = ModelBreaker(self.CONFIG, now=0.0)
        self.held = []  # (stream, model permit)

        @self.breaker
        def stream():
            yield None

        self.stream = stream

    def _start(self):
        expected = self.model.acquire(self.clock.now)
        try:
            s = self.stream()
        except CircuitOpenError:
            assert expected is None
            return None
        assert expected is not None
        return s, expected

    def _finish(self, s, permit, failed):
        if failed:
            with pytest.raises(RuntimeError):
                s.throw(RuntimeError("fail"))
        else:
            assert list(s) == [None]
        self.model.record(permit, self.clock.now, failed)

    @rule(failed=st.booleans(), n=st.integers(1, 5))
    def call(self, failed, n=1):
        for _ in range(n):
            started = self._start()
            if started:
                self._finish(*started, failed)

    @rule(n=st.integers(1, 4))
    def start_and_hold(self, n=1):
        for _ in range(n):
            started = self._start()
            if started:
                self.held.append(started)

    @precondition(lambda self: self.held)
    @rule(i=st.integers(0, 100), failed=st.booleans())
    def finish_held(self, i, failed):
        s, permit = self.held.pop(i % len(self.held))
        self._finish(s, permit, failed)

    @rule(seconds=st.sampled_from([0.5, 5.0, 10.0, 15.0, 20.0, 40.0]))
    def advance(self, seconds):
        self.clock.advance(seconds)

    @rule(action=st.sampled_from(["reset", "force_open", "disable"]))
    def manual(self, action):
        getattr(self.breaker, action)()
        target = {"reset": "closed", "force_open": "forced_open", "disable": "disabled"}
        self.model.manual(target[action], self.clock.now)

    @invariant()
    def same_state(self):
        assert self.breaker.state == self.model.state
        m = self.breaker.metrics()
        if self.model.state == "open":
            assert m["next_attempt_at"] == pytest.approx(self.model.open_until)
        assert m["half_open_in_flight"] == (
            self.model.in_flight if self.model.state == "half_open" else 0
        )


BreakerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
TestBreakerMatchesModel = BreakerMachine.TestCase


class TimeWindowSlowCallMachine(BreakerMachine):
    CONFIG = dict(
        failure_threshold=4,
        recovery_timeout=10.0,
        success_threshold=2,
        failure_rate_threshold=0.75,
        window_type="time",
        window_size=30,
        minimum_calls=3,
        slow_call_duration=15.0,
        slow_call_rate_threshold=0.5,
        half_open_max_calls=2,
        backoff_multiplier=1.5,
        max_recovery_timeout=40.0,
    )


TimeWindowSlowCallMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=30, deadline=None
)
TestTimeWindowSlowCallsMatchModel = TimeWindowSlowCallMachine.TestCase

"""llmedge.CircuitBreaker: transitions, windows, what counts as a failure, fallback,
listeners and the registry, bad input. Wrappers, concurrency and the differential
test against a model are in test_circuit_breaker_*.py."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
from conftest import BAD_CLOCK_READINGS, FakeClock, fail_n, ok

import llmedge
from llmedge import CircuitBreaker, CircuitOpenError

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

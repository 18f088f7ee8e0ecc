"""llmedge.Retry: the schedule, Retry-After, deadline, budget, breakers, the
four kinds of callable, bad input. Time is an injected clock throughout."""

from __future__ import annotations

import asyncio
import email.utils

import pytest
from conftest import FakeClock
from hypothesis import given
from hypothesis import strategies as st

import llmedge
from llmedge import CircuitBreaker, CircuitOpenError, Retry
from llmedge.retry import retry_after_seconds


class Flaky:
    """Fails ``failures`` times with ``exc``, then returns "ok"."""

    def __init__(self, failures: int, exc: BaseException | None = None):
        self.failures = failures
        self.exc = exc or ConnectionError("down")
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "ok"


class Timed:
    """An injected clock with a sleep that advances it and records each wait."""

    def __init__(self) -> None:
        self.clock = FakeClock(100.0)
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)

    def retry(self, attempts: int = 3, **kw) -> Retry:
        kw.setdefault("clock", self.clock)
        kw.setdefault("sleep", self.sleep)
        return Retry(attempts, **kw)


class HTTPError(Exception):
    def __init__(self, status: int, headers: dict[str, str] | None = None):
        super().__init__(f"HTTP {status}")
        self.status_code = status
        self.headers = headers or {}


def test_delays_is_the_schedule():
    assert Retry(5, base=0.1, max_delay=0.5, jitter="none").delays() == pytest.approx(
        [0.1, 0.2, 0.4, 0.5]
    )
    assert Retry(4, backoff="linear", base=1.0, jitter="none").delays() == [1.0, 2.0, 3.0]
    assert Retry(3, backoff="constant", base=0.3, jitter="none").delays() == [0.3, 0.3]
    r = Retry(6, seed=7)
    assert r.delays() == r.delays() == Retry(6).delays(seed=7)
    assert all(0 <= d <= c for d, c in zip(r.delays(), [0.1, 0.2, 0.4, 0.8, 1.6], strict=True))
    assert Retry(1).delays() == []


@given(
    attempts=st.integers(1, 12),
    base=st.floats(0, 2),
    extra=st.floats(0, 10),
    jitter=st.sampled_from(["none", "full", "equal", "decorrelated"]),
    seed=st.integers(0, 2**64 - 1),
)
def test_delays_stay_within_max_delay(attempts, base, extra, jitter, seed):
    r = Retry(attempts, base=base, max_delay=base + extra, jitter=jitter, seed=seed)
    d = r.delays()
    assert len(d) == attempts - 1
    assert all(0 <= x <= base + extra for x in d)


def test_call_retries_with_the_schedule_then_succeeds():
    t = Timed()
    r = t.retry(4, seed=3)
    f = Flaky(3)
    assert r.call(f) == "ok"
    assert f.calls == 4
    assert t.slept == r.delays()


def test_gives_up_after_attempts_with_the_last_error():
    t = Timed()
    f = Flaky(10, TimeoutError("slow"))
    with pytest.raises(TimeoutError, match="slow"):
        t.retry(3).call(f)
    assert f.calls == 3 and len(t.slept) == 2


def test_only_retryable_errors_are_retried():
    t = Timed()
    f = Flaky(1, ValueError("bad input"))
    with pytest.raises(ValueError):
        t.retry(3).call(f)
    assert f.calls == 1
    for status, retried in [(400, False), (404, False), (429, True), (503, True)]:
        f = Flaky(1, HTTPError(status))
        if retried:
            assert t.retry(3).call(f) == "ok"
        else:
            with pytest.raises(HTTPError):
                t.retry(3).call(f)
        assert f.calls == (2 if retried else 1)
    # classes and predicates
    f = Flaky(2, KeyError("k"))
    assert t.retry(3, retry_on=KeyError).call(f) == "ok"
    f = Flaky(2, KeyError("k"))
    assert t.retry(3, retry_on=lambda e: isinstance(e, KeyError)).call(f) == "ok"
    assert Retry(retry_on=(KeyError, OSError)).retry_on == (KeyError, OSError)


def test_retry_after_is_honoured_in_seconds_and_as_an_http_date():
    t = Timed()
    f = Flaky(1, HTTPError(429, {"retry-after": "7"}))
    assert t.retry(3, base=0.01).call(f) == "ok"
    assert t.slept == [7.0]
    when = email.utils.formatdate(1_000_000_030.0, usegmt=True)
    assert retry_after_seconds(HTTPError(503, {"Retry-After": when}), now=1_000_000_000.0) == 30
    assert retry_after_seconds(llmedge.RateLimitExceeded("x", 2.5)) == 2.5
    assert retry_after_seconds(HTTPError(503, {"retry-after": "soon"})) is None
    t2 = Timed()
    f = Flaky(1, HTTPError(429, {"retry-after": "7"}))
    assert t2.retry(3, base=0.01, respect_retry_after=False).call(f) == "ok"
    assert t2.slept[0] <= 0.01


def test_never_sleeps_past_the_deadline():
    t = Timed()
    f = Flaky(10, HTTPError(429, {"retry-after": "5"}))
    with pytest.raises(HTTPError):
        t.retry(10, base=1.0, jitter="none", deadline=12.0).call(f)
    # waits of 5 s each (Retry-After above the backoff) while they end before the deadline
    assert t.slept == [5.0, 5.0]
    assert sum(t.slept) < 12.0


def test_the_budget_bounds_retries_across_calls():
    t = Timed()
    r = t.retry(3, budget=0.2, min_retries_per_second=0.0, jitter="none", base=0.0)
    calls = 0
    for _ in range(100):
        f = Flaky(100)
        with pytest.raises(ConnectionError):
            r.call(f)
        calls += f.calls
    retries = calls - 100
    assert retries == 20
    assert r.budget_available() < 1


def test_an_open_breaker_is_not_retried():
    t = Timed()
    b = CircuitBreaker("retry-open", failure_threshold=1, recovery_timeout=60, clock=t.clock)
    f = Flaky(10)
    guarded = b(f)
    # fails once (the breaker opens), the retry meets the open breaker: no more
    with pytest.raises(CircuitOpenError) as info:
        t.retry(5, retry_on=Exception).call(guarded)
    assert isinstance(info.value.__cause__, ConnectionError)
    assert f.calls == 1 and len(t.slept) == 1
    with pytest.raises(CircuitOpenError):
        t.retry(5, retry_on=Exception).call(guarded)
    assert f.calls == 1


def test_decorates_sync_and_async_functions():
    t = Timed()
    f = Flaky(2)

    @t.retry(3)
    def sync() -> str:
        return f()

    assert sync() == "ok" and sync.__name__ == "sync"
    g = Flaky(2)

    @t.retry(3, sleep=t.asleep)
    async def coro() -> str:
        return g()

    assert asyncio.run(coro()) == "ok" and g.calls == 3


def test_a_generator_is_retried_only_before_its_first_item():
    t = Timed()
    starts = []

    @t.retry(3)
    def gen():
        starts.append(1)
        if len(starts) < 3:
            raise ConnectionError("not yet")
        yield 1
        yield 2
        raise ConnectionError("cut")

    out = []
    with pytest.raises(ConnectionError, match="cut"):
        for x in gen():
            out.append(x)
    assert out == [1, 2] and len(starts) == 3


def test_an_async_generator_is_retried_only_before_its_first_item():
    t = Timed()
    starts = []

    @t.retry(3, sleep=t.asleep)
    async def agen():
        starts.append(1)
        if len(starts) < 2:
            raise ConnectionError("not yet")
        yield "a"
        raise ConnectionError("cut")

    async def main():
        out = []
        with pytest.raises(ConnectionError, match="cut"):
            async for x in agen():
                out.append(x)
        return out

    assert asyncio.run(main()) == ["a"] and len(starts) == 2


def test_acall_cuts_an_attempt_at_the_deadline():
    async def main():
        r = Retry(3, deadline=0.05)
        hung = asyncio.Event()
        with pytest.raises(TimeoutError):
            await r.acall(hung.wait)

    asyncio.run(main())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"attempts": 0}, "attempts must be an integer in 1..=1000, got 0"),
        ({"backoff": "fibonacci"}, "backoff must be one of .*'linear'.*fibonacci"),
        ({"jitter": "lots"}, "jitter must be one of .*'full'.*lots"),
        ({"base": -1.0}, "base must be"),
        ({"base": 2.0, "max_delay": 1.0}, "max_delay must be"),
        ({"budget": -0.5}, "budget must be .*-0.5"),
        ({"deadline": 0.0}, "deadline must be"),
        ({"budget_window": 0.0}, "budget_window"),
    ],
)
def test_bad_configuration_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Retry(**kwargs)


def test_bad_callables_are_type_errors():
    with pytest.raises(TypeError, match="retry_on"):
        Retry(retry_on=3)
    with pytest.raises(TypeError, match="clock must be None or a zero-argument callable"):
        Retry(clock=1.0)
    with pytest.raises(TypeError, match="exception classes"):
        Retry(retry_on=(KeyError, 3))
    with pytest.raises(TypeError, match="decorate a callable"):
        Retry()(3)


def test_repr_shows_the_configuration():
    text = repr(Retry(4, backoff="linear", deadline=3.0))
    assert "attempts=4" in text and '"linear"' in text and "deadline=3" in text


def test_threads_sharing_one_budget_never_exceed_it():
    import threading

    clock = FakeClock()
    r = Retry(3, base=0.0, jitter="none", budget=0.2, min_retries_per_second=0.0, clock=clock)
    calls = []
    lock = threading.Lock()

    def failing() -> None:
        with lock:
            calls.append(1)
        raise ConnectionError("down")

    def work() -> None:
        for _ in range(25):
            with pytest.raises(ConnectionError):
                r.call(failing)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    retries = len(calls) - 200
    assert 0 < retries <= 40

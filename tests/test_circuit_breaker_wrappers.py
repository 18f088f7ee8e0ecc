"""llmedge.CircuitBreaker as a decorator (sync and async functions and streams)
and as a context manager."""

from __future__ import annotations

import asyncio
import gc

import pytest
from conftest import fail_n

from llmedge import CircuitBreaker, CircuitOpenError

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

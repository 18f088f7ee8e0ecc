"""Circuit breakers and rate limiters whose state machines live in Rust.

:class:`CircuitBreaker` guards calls: as a decorator (sync and async functions,
sync and async generators), a context manager (``with`` / ``async with``), or
through :meth:`CircuitBreaker.call` / :meth:`CircuitBreaker.acall`. Plain sync
functions are wrapped by a Rust object (no Python frame in between); the other
forms are thin Python wrappers around the same Rust state machine, where the
``await`` dominates the cost anyway. The guarded call always runs with no lock
held, so concurrent calls never wait for each other.

:class:`RateLimiter` is a keyed GCRA limiter; :meth:`RateLimiter.multi` builds a
:class:`MultiRateLimiter` that charges several limits (requests and tokens per
minute) in one all-or-nothing step.

Breakers register themselves by name (:func:`breakers`, :func:`get_breaker`) so a
``/health`` handler can report them. A new breaker with a name already in use
replaces the old one in the registry (the old object keeps working): this is
what module reloads (``uvicorn --reload``) and tests re-creating a breaker
expect. The registry holds weak references, so it never keeps a breaker alive.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import math
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

from llmedge import _core
from llmedge.errors import CircuitOpenError, RateLimitExceeded
from llmedge.store import loop_bridge

__all__ = [
    "CircuitBreaker",
    "RateLimiter",
    "MultiRateLimiter",
    "breakers",
    "get_breaker",
]

# Private extension classes (not in _core.pyi): the Rust wrapper of plain sync
# functions, and the opaque permit an admitted call hands back.
_GuardedFn: Any = _core._GuardedFn  # type: ignore[attr-defined]
_Permit = Any

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_registry: weakref.WeakValueDictionary[str, CircuitBreaker] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


def breakers() -> dict[str, CircuitBreaker]:
    """Every live breaker by name (a snapshot)."""
    with _registry_lock:
        return dict(_registry.items())


def get_breaker(name: str) -> CircuitBreaker:
    """The live breaker called ``name``; KeyError if there is none."""
    with _registry_lock:
        breaker = _registry.get(name)
    if breaker is None:
        known = ", ".join(sorted(breakers())) or "none"
        raise KeyError(f"no circuit breaker named {name!r}; known: {known}")
    return breaker


class CircuitBreaker(_core.CircuitBreaker):
    """A circuit breaker (see docs/resilience.md for the rules).

    ``CircuitBreaker(name, *, failure_threshold=5, recovery_timeout=60.0,
    success_threshold=3, failure_rate_threshold=None, window_type="count",
    window_size=100, minimum_calls=10, slow_call_duration=None,
    slow_call_rate_threshold=None, half_open_max_calls=1, backoff_multiplier=1.0,
    max_recovery_timeout=None, exclude=None, include=None, is_failure=None,
    fallback=None, clock=None, store=None)``

    With ``store=`` (a :class:`llmedge.RedisStore`), every breaker of the same
    name on the same Redis shares one state across processes and hosts;
    ``shared`` says so and ``metrics()`` reports the store's part.
    """

    def __init__(self, name: str, **config: Any) -> None:
        # Configuration was validated by the Rust __new__.
        self._stack: contextvars.ContextVar[tuple[_Permit, ...]] = contextvars.ContextVar(
            f"llmedge.breaker.{name}", default=()
        )
        with _registry_lock:
            _registry[name] = self

    # -- decorator ---------------------------------------------------------

    def __call__(self, fn: F) -> F:
        """Guards ``fn``: a sync or async function, or a sync or async generator
        function (a stream is one call; it fails if the stream raises)."""
        if not callable(fn):
            raise TypeError(f"CircuitBreaker can only decorate a callable, got {fn!r}")
        if inspect.isasyncgenfunction(fn):
            wrapper: Any = self._wrap_async_stream(fn)
        elif inspect.isgeneratorfunction(fn):
            wrapper = self._wrap_stream(fn)
        elif inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            type(fn).__call__  # an object whose __call__ is async
        ):
            wrapper = self._wrap_async(fn)
        else:
            wrapper = _GuardedFn(self, fn)
        functools.update_wrapper(wrapper, fn)
        return wrapper  # type: ignore[no-any-return]

    def _rejected(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """After a CircuitOpenError: the fallback's result, or re-raise."""
        fallback = self.fallback
        if fallback is None:
            raise
        return fallback(*args, **kwargs)

    def _wrap_async(self, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        async def guarded(*args: Any, **kwargs: Any) -> T:
            try:
                permit = self._try_acquire()
                if permit is None:  # a probe lease from Redis: off the event loop
                    permit = await asyncio.to_thread(self._acquire)
            except CircuitOpenError:
                result = self._rejected(args, kwargs)
                if inspect.isawaitable(result):
                    result = await result
                return result  # type: ignore[no-any-return]
            try:
                value = await fn(*args, **kwargs)
            except BaseException as exc:
                self._on_error(permit, exc)
                raise
            self._on_result(permit, value)
            return value

        return guarded

    def _wrap_stream(self, fn: Callable[..., Iterator[T]]) -> Callable[..., Iterator[T]]:
        def guarded(*args: Any, **kwargs: Any) -> Iterator[T]:
            try:
                permit = self._acquire()
            except CircuitOpenError:
                return self._rejected(args, kwargs)  # type: ignore[no-any-return]
            try:
                gen = fn(*args, **kwargs)
            except BaseException as exc:
                self._on_error(permit, exc)
                raise
            return _GuardedStream(self, gen, permit)

        return guarded

    def _wrap_async_stream(
        self, fn: Callable[..., AsyncIterator[T]]
    ) -> Callable[..., AsyncIterator[T]]:
        def guarded(*args: Any, **kwargs: Any) -> AsyncIterator[T]:
            try:
                permit = self._acquire()
            except CircuitOpenError:
                return self._rejected(args, kwargs)  # type: ignore[no-any-return]
            try:
                agen = fn(*args, **kwargs)
            except BaseException as exc:
                self._on_error(permit, exc)
                raise
            return _GuardedAsyncStream(self, agen, permit)

        return guarded

    # -- one-off calls -----------------------------------------------------

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` through the breaker."""
        return _GuardedFn(self, fn)(*args, **kwargs)  # type: ignore[no-any-return]

    def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> Awaitable[T]:
        """``await fn(*args, **kwargs)`` through the breaker (nothing runs
        until the result is awaited)."""
        return self._wrap_async(fn)(*args, **kwargs)

    # -- context managers --------------------------------------------------
    # The permit of each `with` lives in a context variable, so threads and
    # asyncio tasks sharing one breaker (and nested blocks) never mix them up.

    def __enter__(self) -> CircuitBreaker:
        permit = self._acquire()
        self._stack.set((*self._stack.get(), permit))
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        stack = self._stack.get()
        if not stack:
            raise RuntimeError(f"__exit__ of circuit breaker {self.name!r} without __enter__")
        permit = stack[-1]
        self._stack.set(stack[:-1])
        if exc is None:
            self._on_success(permit)
        else:
            self._on_error(permit, exc)

    async def __aenter__(self) -> CircuitBreaker:
        permit = self._try_acquire()
        if permit is None:  # a probe lease from Redis: off the event loop
            permit = await asyncio.to_thread(self._acquire)
        self._stack.set((*self._stack.get(), permit))
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)


class _StreamPermit:
    """The permit of a guarded stream: settled once, as one call."""

    __slots__ = ("_breaker", "_permit", "_started")

    def __init__(self, breaker: CircuitBreaker, permit: _Permit):
        self._breaker = breaker
        self._permit: _Permit | None = permit
        self._started = False

    def _settle(self, exc: BaseException | None) -> None:
        permit, self._permit = self._permit, None
        if permit is None:
            return
        if exc is None:
            self._breaker._on_success(permit)
        else:
            self._breaker._on_error(permit, exc)

    def _release(self) -> None:
        permit, self._permit = self._permit, None
        if permit is not None:
            self._breaker._release(permit)

    def _finish(self) -> None:
        """Closed by the consumer: a success once started, else the permit back."""
        if self._started:
            self._settle(None)
        else:
            self._release()

    def __del__(self) -> None:
        # Abandoned by its consumer (a `break`, a dropped response): like close().
        if getattr(self, "_permit", None) is not None:
            self._finish()


class _GuardedStream(_StreamPermit, Iterator[T]):
    """A generator guarded as one call: success when it is exhausted (or closed
    by the consumer after it started), failure when it raises."""

    __slots__ = ("_gen",)

    def __init__(self, breaker: CircuitBreaker, gen: Iterator[T], permit: _Permit):
        super().__init__(breaker, permit)
        self._gen = gen

    def __iter__(self) -> _GuardedStream[T]:
        return self

    def __next__(self) -> T:
        return self.send(None)

    def send(self, value: Any) -> T:
        self._started = True
        try:
            if value is None:
                return next(self._gen)
            return self._gen.send(value)  # type: ignore[attr-defined, no-any-return]
        except StopIteration:
            self._settle(None)
            raise
        except BaseException as exc:
            self._settle(exc)
            raise

    def throw(self, *args: Any) -> T:
        try:
            return self._gen.throw(*args)  # type: ignore[attr-defined, no-any-return]
        except StopIteration:
            self._settle(None)
            raise
        except BaseException as exc:
            self._settle(exc)
            raise

    def close(self) -> None:
        try:
            close = getattr(self._gen, "close", None)
            if close is not None:
                close()
        except BaseException as exc:
            self._settle(exc)
            raise
        self._finish()


class _GuardedAsyncStream(_StreamPermit, AsyncIterator[T]):
    """An async generator guarded as one call (see _GuardedStream)."""

    __slots__ = ("_agen",)

    def __init__(self, breaker: CircuitBreaker, agen: AsyncIterator[T], permit: _Permit):
        super().__init__(breaker, permit)
        self._agen = agen

    def __aiter__(self) -> _GuardedAsyncStream[T]:
        return self

    async def __anext__(self) -> T:
        return await self.asend(None)

    async def asend(self, value: Any) -> T:
        self._started = True
        try:
            if value is None:
                return await self._agen.__anext__()
            return await self._agen.asend(value)  # type: ignore[attr-defined, no-any-return]
        except StopAsyncIteration:
            self._settle(None)
            raise
        except BaseException as exc:
            self._settle(exc)
            raise

    async def athrow(self, *args: Any) -> T:
        try:
            return await self._agen.athrow(*args)  # type: ignore[attr-defined, no-any-return]
        except StopAsyncIteration:
            self._settle(None)
            raise
        except BaseException as exc:
            self._settle(exc)
            raise

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._agen, "aclose", None)
            if aclose is not None:
                await aclose()
        except BaseException as exc:
            self._settle(exc)
            raise
        self._finish()


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout >= 0):
        raise ValueError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
    if timeout is not None and math.isnan(timeout):
        raise ValueError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")


async def _wait_async(
    attempt: Callable[[], float],
    attempt_async: Callable[[_core._LoopBridge], float | asyncio.Future[float]],
    key: str,
    timeout: float | None,
    shared: bool = False,
) -> bool:
    _check_timeout(timeout)
    loop = asyncio.get_running_loop()
    start = loop.time()
    # With a store each attempt is a Redis round trip, never on the event loop:
    # the store's runtime resolves a future of this loop (or, where the loop
    # cannot watch a descriptor, the attempt runs in the default executor).
    bridge = loop_bridge(loop) if shared else None
    while True:
        if bridge is not None:
            wait = attempt_async(bridge)
            if not isinstance(wait, float):
                wait = await wait
        elif shared:
            wait = await loop.run_in_executor(None, attempt)
        else:
            wait = attempt()
        if wait == 0.0:
            return True
        if timeout is not None and wait > timeout - (loop.time() - start):
            raise RateLimitExceeded(
                f"rate limit exceeded for key {key!r}; retry after {wait:.3f} s", wait, key
            )
        await asyncio.sleep(wait)


class RateLimiter(_core.RateLimiter):
    """A keyed GCRA rate limiter: ``rate`` units per ``per`` seconds, bursts of
    ``burst`` (default ``max(1, floor(rate))``).

    ``RateLimiter(rate, per=1.0, *, burst=None, clock=None, max_keys=100_000,
    store=None, name=None, on_store_error="local", local_share=1, deny_cache=True)``

    With ``store=`` (a :class:`llmedge.RedisStore`) every decision is made in
    Redis by one Lua script, so all processes sharing the store and ``name``
    share the limit.
    """

    async def acquire_async(
        self, key: str = "", cost: int = 1, timeout: float | None = None
    ) -> bool:
        """Waits with ``asyncio.sleep`` (never blocking the loop) until ``cost``
        units are granted; RateLimitExceeded as soon as the wait would pass
        ``timeout``."""
        return await _wait_async(
            lambda: self._try_or_wait(key, cost),
            lambda bridge: self._try_or_wait_async(bridge, key, cost),
            key,
            timeout,
            self.shared,
        )

    @classmethod
    def multi(
        cls,
        limits: Mapping[str, tuple[float, float] | tuple[float, float, int]],
        *,
        clock: Callable[[], float] | None = None,
        max_keys: int = 100_000,
        **sharing: Any,
    ) -> MultiRateLimiter:
        """Several limits per key, charged all or nothing:
        ``RateLimiter.multi({"requests": (500, 60.0), "tokens": (90_000, 60.0)})``
        then ``try_acquire(key, requests=1, tokens=1200)``. ``sharing`` takes the
        ``store=``, ``name=``, ``on_store_error=``, ``local_share=`` and
        ``deny_cache=`` arguments of :class:`MultiRateLimiter`."""
        return MultiRateLimiter(dict(limits), clock=clock, max_keys=max_keys, **sharing)


class MultiRateLimiter(_core.MultiRateLimiter):
    """Several GCRA limits per key, charged in one all-or-nothing step."""

    async def acquire_async(
        self, key: str = "", *, timeout: float | None = None, **costs: int
    ) -> bool:
        """Waits with ``asyncio.sleep`` until every named cost is granted at once."""
        return await _wait_async(
            lambda: self._try_or_wait(key, costs),
            lambda bridge: self._try_or_wait_async(bridge, key, costs),
            key,
            timeout,
            self.shared,
        )

"""Retries with backoff (:class:`Retry`).

:class:`Retry` retries a function (sync or async, a generator or an async
generator) with a backoff schedule, honouring ``Retry-After``, a deadline and
a retry budget. The schedule, the budget and the configuration checks are
made in Rust (``llmedge._core.Retry``); this module does the waiting.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import inspect
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from llmedge import _core
from llmedge.errors import CircuitOpenError, UpstreamError

__all__ = ["Retry", "retry_after_seconds", "RETRYABLE_STATUS"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: Statuses worth another try: the server's trouble or a request to slow down.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def _status_of(exc: BaseException) -> int | None:
    for obj in (exc, getattr(exc, "response", None)):
        for attr in ("status_code", "status"):
            value = getattr(obj, attr, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def parse_retry_after(value: Any, wall: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return max(0.0, float(value)) if math.isfinite(value) else None
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        return max(0.0, when.timestamp() - wall)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def retry_after_seconds(exc: BaseException, *, now: float | None = None) -> float | None:
    """The wait an error asks for: its ``retry_after`` attribute, else the
    ``Retry-After`` header (seconds or an HTTP date, relative to ``now``,
    default ``time.time()``) of its ``response`` or ``headers``; None if none."""
    wall = time.time() if now is None else now
    value = parse_retry_after(getattr(exc, "retry_after", None), wall)
    if value is not None:
        return value
    for headers in (
        getattr(getattr(exc, "response", None), "headers", None),
        getattr(exc, "headers", None),
    ):
        if headers is not None and hasattr(headers, "get"):
            raw = headers.get("retry-after") or headers.get("Retry-After")
            value = parse_retry_after(raw, wall)
            if value is not None:
                return value
    return None


def _default_retryable(exc: BaseException) -> bool:
    """Timeouts, connection errors and retryable HTTP statuses; never an open
    circuit (retrying it would hit the same open breaker)."""
    if isinstance(exc, CircuitOpenError) or not isinstance(exc, Exception):
        return False
    if isinstance(exc, UpstreamError):
        return exc.status is None or exc.status in RETRYABLE_STATUS
    status = _status_of(exc)
    if status is not None:
        return status in RETRYABLE_STATUS
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, ConnectionError)):
        return True
    # httpx's transport errors (ConnectError, ReadTimeout, RemoteProtocolError, ...)
    return any(
        c.__module__.startswith("httpx") and c.__name__ == "TransportError"
        for c in type(exc).__mro__
    )


class _Attempts:
    """One call's way through its retries."""

    __slots__ = ("retry", "started", "delays", "last", "retries")

    def __init__(self, retry: Retry) -> None:
        retry._record_call()
        self.retry = retry
        self.started = retry._now()
        self.delays: list[float] | None = None  # drawn at the first failure
        self.last: Exception | None = None
        self.retries = 0

    def wait_after(self, exc: Exception) -> float | None:
        """Seconds to wait before retrying after ``exc``, or None to give up.
        A retry that met an open circuit raises it, caused by the failure
        that opened it."""
        if self.last is not None and isinstance(exc, CircuitOpenError):
            raise exc from self.last
        self.last = exc
        if self.delays is None:
            self.delays = self.retry.delays()
        delay = self.retry._next_delay(exc, self.retries, self.delays, self.started)
        self.retries += 1
        return delay


class Retry(_core.Retry):
    """Retries a call with backoff (see docs/routing.md).

    ``Retry(attempts=3, *, backoff="exponential", base=0.1, max_delay=10.0,
    jitter="full", retry_on=None, respect_retry_after=True, deadline=None,
    budget=0.2, min_retries_per_second=1.0, budget_window=10.0, clock=None,
    sleep=None, seed=None)``
    """

    def _retryable(self, exc: BaseException) -> bool:
        rule = self.retry_on
        if isinstance(exc, CircuitOpenError):
            return False
        if rule is None:
            return _default_retryable(exc)
        if isinstance(rule, tuple):
            return isinstance(exc, rule)
        return bool(rule(exc))

    def _next_delay(
        self, exc: BaseException, retry: int, delays: list[float], started: float
    ) -> float | None:
        """Seconds to wait before retry number ``retry`` (0-based), or None to give up."""
        if retry >= len(delays) or not self._retryable(exc):
            return None
        delay = delays[retry]
        if self.respect_retry_after:
            asked = retry_after_seconds(exc)
            if asked is not None:
                delay = max(delay, asked)
        if self.deadline is not None and self._now() + delay >= started + self.deadline:
            return None
        if not self._try_retry():
            return None
        return delay

    def _remaining(self, started: float) -> float | None:
        return None if self.deadline is None else started + self.deadline - self._now()

    def _sleep_sync(self, seconds: float) -> None:
        (self.sleep or time.sleep)(seconds)

    async def _sleep_async(self, seconds: float) -> None:
        result = (self.sleep or asyncio.sleep)(seconds)
        if inspect.isawaitable(result):
            await result

    # -- one-off calls -------------------------------------------------

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, retried; the last error is raised when
        attempts, budget or deadline run out."""
        state = _Attempts(self)
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                delay = state.wait_after(exc)
                if delay is None:
                    raise
            self._sleep_sync(delay)

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """``await fn(*args, **kwargs)``, retried; with a ``deadline`` each
        attempt is also cut (``TimeoutError``) when the deadline passes."""
        state = _Attempts(self)
        while True:
            try:
                remaining = self._remaining(state.started)
                if remaining is None:
                    return await fn(*args, **kwargs)
                return await asyncio.wait_for(fn(*args, **kwargs), max(remaining, 0.0))
            except Exception as exc:
                delay = state.wait_after(exc)
                if delay is None:
                    raise
            await self._sleep_async(delay)

    # -- decorator -----------------------------------------------------

    def __call__(self, fn: F) -> F:
        """Retries ``fn``: a sync or async function, or a sync or async
        generator function (retried only until its first item is yielded)."""
        if not callable(fn):
            raise TypeError(f"Retry can only decorate a callable, got {fn!r}")
        if inspect.isasyncgenfunction(fn):
            wrapper: Any = self._wrap_async_stream(fn)
        elif inspect.isgeneratorfunction(fn):
            wrapper = self._wrap_stream(fn)
        elif inspect.iscoroutinefunction(fn):

            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                return await self.acall(fn, *args, **kwargs)

        else:

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return self.call(fn, *args, **kwargs)

        functools.update_wrapper(wrapper, fn)
        return wrapper  # type: ignore[no-any-return]

    def _wrap_stream(self, fn: Callable[..., Iterator[T]]) -> Callable[..., Iterator[T]]:
        def guarded(*args: Any, **kwargs: Any) -> Iterator[T]:
            def first() -> tuple[Iterator[T], list[T]]:
                gen = iter(fn(*args, **kwargs))
                try:
                    return gen, [next(gen)]
                except StopIteration:
                    return gen, []

            gen, head = self.call(first)
            yield from head
            yield from gen

        return guarded

    def _wrap_async_stream(
        self, fn: Callable[..., AsyncIterator[T]]
    ) -> Callable[..., AsyncIterator[T]]:
        async def guarded(*args: Any, **kwargs: Any) -> AsyncIterator[T]:
            async def first() -> tuple[AsyncIterator[T], list[T]]:
                agen = fn(*args, **kwargs)
                try:
                    return agen, [await agen.__anext__()]
                except StopAsyncIteration:
                    return agen, []
                except BaseException:
                    aclose = getattr(agen, "aclose", None)
                    if aclose is not None:
                        await aclose()
                    raise

            agen, head = await self.acall(first)
            try:
                for item in head:
                    yield item
                async for item in agen:
                    yield item
            finally:
                aclose = getattr(agen, "aclose", None)
                if aclose is not None:
                    await aclose()

        return guarded

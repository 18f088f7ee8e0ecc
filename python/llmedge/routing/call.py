"""One request's calls to upstreams (:class:`_Call`, hedged or not), the
loop thread behind the blocking API, and :class:`RouterStream`."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from llmedge._aio import uncancellable
from llmedge.errors import (
    UpstreamClientError,
    UpstreamError,
)
from llmedge.retry import parse_retry_after
from llmedge.routing.upstream import Attempt, Upstream
from llmedge.sse import event_content, parse_openai_events

if TYPE_CHECKING:
    from llmedge.routing.router import Router

T = TypeVar("T")


class _Slot:
    """An upstream with its breaker, limiter and index in the selector."""

    def __init__(self, index: int, up: Upstream, breaker: Any, limiter: Any) -> None:
        self.index = index
        self.up = up
        self.name: str = up.name  # type: ignore[assignment]
        self.url = up.base_url + "/chat/completions"
        self.breaker = breaker
        self.limiter = limiter
        self.cooldown_until = 0.0
        headers = dict(up.headers)
        if up.api_key:
            headers["Authorization"] = f"Bearer {up.api_key}"
        self.headers = headers
        self._http: tuple[Any, Any] | None = None

    def http(self) -> tuple[Any, Any]:
        """(URL, timeouts) as httpx objects, built once (httpx parses a URL
        string on every request otherwise)."""
        if self._http is None:
            import httpx

            up = self.up
            timeout = httpx.Timeout(
                connect=up.connect_timeout,
                read=up.read_timeout,
                write=up.read_timeout,
                pool=up.connect_timeout,
            )
            self._http = (httpx.URL(self.url), timeout)
        return self._http


def _substantive(event: Mapping[str, Any]) -> bool:
    """An event carrying the answer's start: content, a tool call or a finish."""
    if event_content(event):
        return True
    for choice in event.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("tool_calls") or delta.get("function_call") or choice.get("finish_reason"):
            return True
    return False


def _valid_completion(data: Any) -> bool:
    try:
        message = data["choices"][0]["message"]
        usage = data.get("usage")
    except (KeyError, IndexError, TypeError, AttributeError):
        return False
    return isinstance(message, dict) and (
        usage is None
        or (
            isinstance(usage, dict)
            and all(
                isinstance(usage.get(k, 0), int) for k in ("prompt_tokens", "completion_tokens")
            )
        )
    )


def _error_body(raw: bytes) -> Any:
    import json

    try:
        return json.loads(raw)
    except ValueError:
        text = raw.decode("utf-8", "replace")[:500]
        return {"error": {"message": text, "type": "upstream_error", "code": None}}


class _Call:
    """One upstream call in flight: its permit, its timing, and (streams)
    the open response and the events read so far."""

    def __init__(self, router: Router, slot: _Slot, hedge: bool) -> None:
        self.router = router
        self.slot = slot
        self.hedge = hedge
        self.permit: Any = None
        self.started = router._clock()
        self.first: float | None = None
        self.response: Any = None
        self.events: AsyncIterator[dict[str, Any]] | None = None
        self.head: list[dict[str, Any]] = []
        self.usage: dict[str, Any] = {}
        self.tokens = 0
        self.settled = False
        self.id = router._selector.begin(slot.index, self.started)

    def elapsed(self) -> float:
        return max(0.0, self.router._clock() - self.started)

    def _failure(self, message: str, **kw: Any) -> UpstreamError:
        return UpstreamError(f"{self.slot.name}: {message}", upstream=self.slot.name, **kw)

    async def _send(self, client: Any, body: dict[str, Any], stream: bool) -> Any:
        import httpx

        url, timeout = self.slot.http()
        request = client.build_request(
            "POST", url, json=body, headers=self.slot.headers, timeout=timeout
        )
        try:
            response = await client.send(request, stream=stream)
        except httpx.TimeoutException as exc:
            raise self._failure(f"timed out: {exc!r}", timeout=True) from exc
        except httpx.HTTPError as exc:
            raise self._failure(f"failed: {exc!r}") from exc
        if response.status_code >= 400:
            raw = await response.aread() if stream else response.content
            if stream:
                await response.aclose()
            status = response.status_code
            if status in (408, 429) or status >= 500:
                asked = parse_retry_after(response.headers.get("retry-after"), time.time())
                raise self._failure(f"answered {status}", status=status, retry_after=asked)
            raise UpstreamClientError(
                f"{self.slot.name} answered {status}",
                upstream=self.slot.name,
                status=status,
                body=_error_body(raw),
            )
        return response

    async def complete(self, client: Any, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        response = await self._send(client, body, stream=False)
        try:
            data = response.json()
        except ValueError:
            data = None
        except httpx.HTTPError as exc:
            raise self._failure(f"failed: {exc!r}") from exc
        if not _valid_completion(data):
            raise self._failure("sent a malformed completion")
        self.first = self.router._clock()
        return data  # type: ignore[no-any-return]

    async def open(self, client: Any, body: dict[str, Any]) -> None:
        """Reads the stream up to its first token (the call stays open)."""
        import httpx

        self.response = await self._send(client, body, stream=True)
        self.events = parse_openai_events(self.response.aiter_lines(), on_usage=self.usage.update)
        try:
            async for event in self.events:
                self.head.append(event)
                if _substantive(event):
                    self.first = self.router._clock()
                    self.tokens += 1
                    self.router._selector.first_token(self.slot.index, self.id)
                    return
        except httpx.TimeoutException as exc:
            raise self._failure(f"timed out: {exc!r}", timeout=True) from exc
        except (httpx.HTTPError, ConnectionError) as exc:
            raise self._failure(f"failed: {exc}") from exc
        raise self._failure("ended its stream before the first token")

    async def close(self) -> None:
        """Closes the connection, also when the caller is being cancelled."""
        events, response = self.events, self.response
        self.events = self.response = None
        if events is not None or response is not None:
            await uncancellable(self._close(events, response))

    @staticmethod
    async def _close(events: Any, response: Any) -> None:
        if events is not None:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:  # a broken stream being closed has nothing more to say
                    pass
        if response is not None:
            await response.aclose()

    def settle(self, outcome: str, exc: BaseException | None = None) -> None:
        """Reports the call to its breaker and the selector, once."""
        if self.settled:
            return
        self.settled = True
        r, i, b = self.router, self.slot.index, self.slot.breaker
        elapsed = self.elapsed()
        if outcome == "ok":
            first = elapsed if self.first is None else max(0.0, self.first - self.started)
            r._selector.success(i, self.id, elapsed, first, self.tokens)
            b._on_success(self.permit)
        elif outcome == "cancelled":
            r._selector.cancelled(i, self.id, elapsed)
            b._release(self.permit)
        elif outcome == "client_error":
            r._selector.cancelled(i, self.id, 0.0)
            b._on_success(self.permit)
        else:
            r._selector.failure(i, self.id, elapsed)
            b._on_error(self.permit, exc if exc is not None else UpstreamError(outcome))
            # A 429 is about our quota there: leave that upstream alone for as
            # long as it asked (other statuses' Retry-After only pace retries).
            asked = getattr(exc, "retry_after", None)
            if (
                getattr(exc, "status", None) == 429
                and isinstance(asked, (int, float))
                and asked > 0
            ):
                self.slot.cooldown_until = max(self.slot.cooldown_until, r._clock() + asked)


class _LoopThread:
    """An event loop on a daemon thread, for the blocking methods."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="llmedge-router", daemon=True
        )
        self.thread.start()

    def run(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()  # type: ignore[arg-type]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


async def _admit_call(breaker: Any) -> Any:
    """A breaker permit, without blocking the loop where the breaker offers
    an async way (a breaker whose state is shared through a store)."""
    acquire_async = getattr(breaker, "_acquire_async", None)
    if acquire_async is not None:
        return await acquire_async()
    return breaker._acquire()


class RouterStream:
    """The chunks of a streamed completion (an async iterator of dicts),
    with ``upstream``, ``attempts``, ``elapsed`` (seconds to the first
    token), and once it ended ``usage`` (when the upstream sent it) and
    ``cost``. A stream cut by the upstream raises :class:`UpstreamError`;
    ``aclose()`` (or leaving an ``async with``) closes the connection."""

    def __init__(
        self, router: Router, call: _Call, model: str, attempts: list[Attempt], started: float
    ) -> None:
        self._router = router
        self._call = call
        self._model = model
        self.upstream = call.slot.name
        self.attempts = attempts
        self.elapsed = max(0.0, router._clock() - started)
        self.usage: dict[str, Any] = call.usage
        self.cost = 0.0
        self._head = list(call.head)
        self._done = False

    def __aiter__(self) -> RouterStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._head:
            return self._head.pop(0)
        call = self._call
        if self._done or call.events is None:
            raise StopAsyncIteration
        import httpx

        try:
            event = await call.events.__anext__()
        except StopAsyncIteration:
            await self._finish("ok")
            raise
        except httpx.TimeoutException as exc:
            err = call._failure(f"timed out mid-stream: {exc!r}", timeout=True)
            await self._finish("timeout", err)
            raise err from exc
        except (httpx.HTTPError, ConnectionError) as exc:
            err = call._failure(f"stream failed: {exc}")
            await self._finish("error", err)
            raise err from exc
        except BaseException:
            await self._finish("cancelled")
            raise
        if _substantive(event):
            call.tokens += 1
        return event

    async def _finish(self, outcome: str, exc: BaseException | None = None) -> None:
        if self._done:
            return
        self._done = True
        try:
            await self._call.close()
        finally:  # a cancelled caller's call still reports to its breaker
            self._call.settle(outcome, exc)
            self.cost = self._router.cost_of(self.upstream, self._model, self.usage)

    async def aclose(self) -> None:
        """Ends the stream early: closes the connection; the call counts as a
        success for the upstream (it answered)."""
        await self._finish("ok")

    def __del__(self) -> None:
        # Dropped without being closed: hand the upstream's permit back as
        # answered (the connection is closed by httpx's own finaliser).
        call = getattr(self, "_call", None)
        if call is not None and not self._done:
            self._done = True
            call.settle("ok")

    async def __aenter__(self) -> RouterStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _BlockingStream(Iterator[dict[str, Any]]):
    def __init__(self, lt: _LoopThread, stream: RouterStream) -> None:
        self._lt = lt
        self.stream = stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def __next__(self) -> dict[str, Any]:
        try:
            return self._lt.run(self.stream.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        self._lt.run(self.stream.aclose())

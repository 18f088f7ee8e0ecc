"""What a client may send the gateway: limits checked before any parsing.

:class:`RequestLimits` holds them (``LLMEDGE_MAX_BODY_BYTES``,
``LLMEDGE_MAX_MESSAGES``, ``LLMEDGE_MAX_JSON_DEPTH``,
``LLMEDGE_BODY_TIMEOUT``; the header timeout is the server's, see
:mod:`llmedge.gateway.server`). :class:`LimitsMiddleware` reads a request's
body itself, within the size and the time allowed, checks its nesting and
its number of messages in one parse that keeps no object (see
:func:`json_shape`), and only then hands it to the application, so a hostile
body costs at most ``max_body_bytes`` of memory and a linear scan:

* a declared ``Content-Length`` over the limit: 413 before a byte is read;
  a chunked body is counted as it arrives: 413 once over the limit;
* a body still incomplete ``body_timeout`` seconds after the headers (a
  slow-loris client): 408;
* JSON nested deeper than ``max_json_depth``: 400 (Python's parser would
  recurse on it, and the upstream too);
* more than ``max_messages`` messages (or ``/chat`` history entries): 413.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from llmedge.fastapi import OpenAIError

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]

#: Bodies above this many bytes are inspected off the event loop.
INSPECT_IN_THREAD_ABOVE = 64 * 1024
_COUNTED = ("messages", "history")


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """Limits on one request (see the module's documentation)."""

    max_body_bytes: int = 4 * 1024 * 1024
    max_messages: int = 2048
    max_json_depth: int = 64
    body_timeout: float = 30.0

    def __post_init__(self) -> None:
        for name, env in (
            ("max_body_bytes", "LLMEDGE_MAX_BODY_BYTES"),
            ("max_messages", "LLMEDGE_MAX_MESSAGES"),
            ("max_json_depth", "LLMEDGE_MAX_JSON_DEPTH"),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} ({env}) must be an integer >= 1, got {value!r}")
        t = self.body_timeout
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"body_timeout (LLMEDGE_BODY_TIMEOUT) must be seconds > 0, got {t!r}")

    def check_messages(self, count: int, what: str = "messages") -> None:
        """Raises a 413 OpenAIError when ``count`` messages are too many."""
        if count > self.max_messages:
            raise OpenAIError(
                413,
                f"{what} holds {count} messages; at most {self.max_messages} are accepted "
                f"(LLMEDGE_MAX_MESSAGES)",
                code="too_many_messages",
                param=what,
            )


class _Obj:
    """A parsed JSON object, reduced to its depth (and the length of its
    ``messages`` or ``history`` array): the parser drops every object as
    soon as it is built, so a million messages cost a million references."""

    __slots__ = ("depth", "field", "count")

    def __init__(self, depth: int, field: str | None = None, count: int = 0) -> None:
        self.depth, self.field, self.count = depth, field, count


_PLAIN = [_Obj(d) for d in range(128)]


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return value.depth if isinstance(value, _Obj) else 0


def _reduce(pairs: list[tuple[str, Any]]) -> _Obj:
    depth = 1 + max((_depth(v) for _, v in pairs), default=0)
    for key, value in pairs:
        if key in _COUNTED and isinstance(value, list):
            return _Obj(depth, key, len(value))
    return _PLAIN[depth] if depth < len(_PLAIN) else _Obj(depth)


def json_shape(body: bytes) -> tuple[int, str | None, int] | None:
    """(nesting depth, ``"messages"`` or ``"history"`` or None, that array's
    length) of the JSON text ``body``, or None when it is not valid JSON.
    Linear in time and in memory (objects are reduced as they are parsed); a
    depth beyond the parser's recursion limit is ``sys.maxsize``."""
    try:
        top = json.loads(body, object_pairs_hook=_reduce)
        depth = _depth(top)
    except RecursionError:
        return sys.maxsize, None, 0
    except ValueError:
        return None  # the application reports malformed JSON
    if isinstance(top, _Obj):
        return depth, top.field, top.count
    return depth, None, 0


class LimitsMiddleware:
    """Pure ASGI middleware enforcing :class:`RequestLimits` on every request
    with a body (POST, PUT, PATCH)."""

    def __init__(self, app: Any, limits: RequestLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        lim = self.limits
        declared = _content_length(scope)
        if declared is not None and declared > lim.max_body_bytes:
            await _reject(send, _too_large(str(declared), lim.max_body_bytes))
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + lim.body_timeout
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                error = OpenAIError(
                    408,
                    f"the request body did not arrive within {lim.body_timeout:g} s "
                    f"({size} bytes received; LLMEDGE_BODY_TIMEOUT)",
                    code="request_timeout",
                )
                await _reject(send, error)
                return
            if message["type"] == "http.disconnect":
                return  # the client left: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > lim.max_body_bytes:
                await _reject(
                    send, _too_large(f"more than {lim.max_body_bytes}", lim.max_body_bytes)
                )
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        del chunks
        error = await _check_body(body, lim)
        if error is not None:
            await _reject(send, error)
            return
        replayed = False

        async def replay() -> _Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # the disconnect, for a streaming response

        await self.app(scope, replay, send)


async def _check_body(body: bytes, lim: RequestLimits) -> OpenAIError | None:
    # a few KiB: microseconds here; megabytes: off the event loop
    if len(body) > INSPECT_IN_THREAD_ABOVE:
        shape = await asyncio.to_thread(json_shape, body)
    else:
        shape = json_shape(body)
    if shape is None:
        return None
    depth, field, count = shape
    if depth > lim.max_json_depth:
        return OpenAIError(
            400,
            f"the JSON body nests deeper than {lim.max_json_depth} levels (LLMEDGE_MAX_JSON_DEPTH)",
            code="json_too_deep",
        )
    if field is not None:
        try:
            lim.check_messages(count, field)
        except OpenAIError as exc:
            return exc
    return None


def _content_length(scope: _Scope) -> int | None:
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server rejects a malformed length itself
    return None


def _too_large(size: str, limit: int) -> OpenAIError:
    return OpenAIError(
        413,
        f"the request body is {size} bytes; at most {limit} are accepted (LLMEDGE_MAX_BODY_BYTES)",
        code="request_too_large",
    )


async def _reject(send: _Send, error: OpenAIError) -> None:
    """Answers ``error`` and has the server close the connection (the rest
    of the body is not read)."""
    payload = json.dumps(error.body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),
        *((k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": payload})

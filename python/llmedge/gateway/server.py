"""Serving the gateway: uvicorn's HTTP/1.1 protocol with a header timeout.

uvicorn bounds the idle time between requests (``--timeout-keep-alive``) but
not the time a client takes to send a request's line and headers, so a
slow-loris client sending one byte a second holds a connection for as long
as it likes. :class:`HeaderTimeoutProtocol` answers 408 and closes the
connection when a request's headers are not complete
``LLMEDGE_HEADER_TIMEOUT`` seconds (default 10) after the connection opened
or, on a kept-alive connection, after the request's first byte. An idle
kept-alive connection is uvicorn's (``--timeout-keep-alive``, closed without
a response), so a client never finds an unsolicited 408 on a connection it
reuses. (The body's own deadline is the application's:
``LLMEDGE_BODY_TIMEOUT``, see :mod:`llmedge.gateway.limits`.) Use it with::

    uvicorn --factory llmedge.gateway:create_app --http llmedge.gateway.server:HeaderTimeoutProtocol
    gunicorn -k llmedge.gateway.worker.UvicornWorker 'llmedge.gateway:create_app()'
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_HEADER_TIMEOUT = 10.0


def header_timeout() -> float:
    """``LLMEDGE_HEADER_TIMEOUT`` in seconds (default 10)."""
    raw = os.environ.get("LLMEDGE_HEADER_TIMEOUT", "")
    if not raw.strip():
        return DEFAULT_HEADER_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"LLMEDGE_HEADER_TIMEOUT must be seconds > 0, got {raw!r}")
    return value


def _response_408(seconds: float) -> bytes:
    body = json.dumps(
        {
            "error": {
                "message": f"the request headers did not arrive within {seconds:g} s "
                f"(LLMEDGE_HEADER_TIMEOUT)",
                "type": "invalid_request_error",
                "param": None,
                "code": "request_timeout",
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline on each request's headers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout()
        self._header_timer: asyncio.TimerHandle | None = None

    def _awaiting_headers(self) -> bool:
        """Between requests, or within a request line and headers."""
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _follow(self, started: bool) -> None:
        """Runs the deadline while a request's headers are on their way:
        ``started`` when bytes of them have arrived (or the connection is new)."""
        if not self._awaiting_headers():
            self._disarm()
        elif started and self._header_timer is None:
            self._header_timer = self.loop.call_later(self._header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self._awaiting_headers():
            return  # the headers arrived in time (or the connection ended)
        self.transport.write(_response_408(self._header_timeout))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._follow(started=True)  # a client that connects owes its first request

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow(started=bool(data))

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may parse a pipelined request's bytes
        self._follow(started=bool(self.conn.trailing_data[0]))

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

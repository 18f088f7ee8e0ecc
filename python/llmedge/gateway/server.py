"""Serving the gateway: uvicorn's HTTP/1.1 protocol with a header timeout.

uvicorn bounds the idle time between requests (``--timeout-keep-alive``) but
not the time a client takes to send a request's line and headers, so a
slow-loris client sending one byte a second holds a connection for as long
as it likes. :class:`HeaderTimeoutProtocol` answers 408 and closes the
connection when the headers are not complete ``LLMEDGE_HEADER_TIMEOUT``
seconds (default 10) after the connection opened or the previous response
ended. (The body's own deadline is the application's:
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
        self._armed_for: Any = None

    def _arm(self) -> None:
        self._disarm()
        self._armed_for = self.cycle  # a new cycle starts once headers are complete
        self._header_timer = self.loop.call_later(self._header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.cycle is not self._armed_for or self.transport.is_closing():
            return  # a request's headers arrived in time (or the connection ended)
        self.transport.write(_response_408(self._header_timeout))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request's headers get the same time

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

"""FastAPI integration: rate limiting, health, Prometheus metrics and SSE.

Needs the optional extra ``llmedge[fastapi]`` (fastapi, uvicorn,
prometheus-client); ``import llmedge`` never does. The pieces:

* :class:`RateLimit`: a dependency keyed by API key (``Authorization: Bearer``
  or ``x-api-key``) or client address, on :class:`llmedge.RateLimiter` /
  :class:`llmedge.MultiRateLimiter`. A denied request gets HTTP 429 with an
  integer ``Retry-After`` (seconds, rounded up) and an OpenAI-style JSON error
  body; optionally the request's estimated tokens are charged against a
  tokens-per-minute limit in the same atomic step.
* :class:`Monitor`: ``GET /health`` (every breaker's state, cache statistics,
  process memory; ``healthy`` / ``degraded`` / ``unhealthy``) and
  ``GET /metrics`` (Prometheus text from a private ``CollectorRegistry``,
  whose collector reads llmedge's own statistics at scrape time), plus a
  latency-histogram middleware. ``monitor.install(app)`` wires all of it.
* Server-sent events: :func:`sse_response` turns an async iterator of text
  chunks into a ``StreamingResponse`` (plain JSON events or OpenAI
  ``chat.completion.chunk`` events), coalescing small chunks with
  :func:`coalesce`; :func:`replay` turns a cached answer into the same kind of
  stream; :func:`cache_on_complete` stores a streamed answer only when its
  upstream iterator finished normally; :func:`parse_openai_stream` reads an
  upstream OpenAI SSE stream and raises :class:`IncompleteStreamError` when it
  ends without ``data: [DONE]``.

One module per concern: ``errors`` (OpenAI-shaped HTTP errors), ``ratelimit``,
``monitor`` and ``streaming``. The stream parser lives in :mod:`llmedge.sse`
(it needs no FastAPI) and ``IncompleteStreamError`` in :mod:`llmedge.errors`;
both are re-exported here.
"""

from __future__ import annotations

from llmedge.errors import IncompleteStreamError
from llmedge.fastapi.errors import OpenAIError, install_error_handler, openai_error_body
from llmedge.fastapi.monitor import LatencyMiddleware, Monitor, process_memory
from llmedge.fastapi.ratelimit import RateLimit, client_key, estimate_request_tokens
from llmedge.fastapi.streaming import cache_on_complete, coalesce, replay, sse_event, sse_response
from llmedge.sse import event_content, parse_openai_events, parse_openai_stream

__all__ = [
    "OpenAIError",
    "openai_error_body",
    "install_error_handler",
    "RateLimit",
    "client_key",
    "estimate_request_tokens",
    "Monitor",
    "LatencyMiddleware",
    "process_memory",
    "coalesce",
    "replay",
    "cache_on_complete",
    "sse_event",
    "sse_response",
    "parse_openai_stream",
    "parse_openai_events",
    "event_content",
    "IncompleteStreamError",
]

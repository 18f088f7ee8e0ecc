"""Routing over OpenAI-compatible upstreams (:class:`Router`).

:class:`Router` sends chat completions to a set of :class:`Upstream` s: it
ranks them per request (strategy), falls back on failure, optionally hedges a
slow first upstream, keeps each behind its own circuit breaker and rate
limit, and learns their latency and error rate.

The decisions (statistics, ranking) are made in Rust
(``llmedge._core.RouteSelector``); this module does the HTTP, with httpx
(``pip install 'llmedge[router]'``), imported when a Router first sends a
request. Retries follow a :class:`llmedge.Retry`.
"""

from llmedge.routing.call import RouterStream
from llmedge.routing.router import Router
from llmedge.routing.upstream import Attempt, RouterResponse, Upstream

__all__ = [
    "Router",
    "Upstream",
    "Attempt",
    "RouterResponse",
    "RouterStream",
]

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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import uuid
import weakref
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
)
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

import llmedge
from llmedge._sse import IncompleteStreamError, event_content, parse_openai_events

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

log = logging.getLogger("llmedge")


# ---------------------------------------------------------------------------
# Errors in OpenAI's shape
# ---------------------------------------------------------------------------


def openai_error_body(
    message: str, type: str = "invalid_request_error", code: str | None = None, param: Any = None
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI answers."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class OpenAIError(HTTPException):
    """An HTTP error whose body is OpenAI-shaped.

    With :func:`install_error_handler` (``Monitor.install`` calls it) the body
    is ``{"error": {...}}``; without it FastAPI's default handler still answers
    with the status and headers, the body under ``"detail"``.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.body = openai_error_body(message, type, code, param)
        super().__init__(status_code, detail=self.body, headers=dict(headers or {}))


async def _openai_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OpenAIError)
    return JSONResponse(exc.body, status_code=exc.status_code, headers=exc.headers)


def install_error_handler(app: FastAPI) -> None:
    """Answer :class:`OpenAIError` with its OpenAI-shaped body."""
    app.add_exception_handler(OpenAIError, _openai_error_handler)


# ---------------------------------------------------------------------------
# Rate limiting
# ---------------------------------------------------------------------------


def client_key(request: Request, *, trust_forwarded: bool = False) -> str:
    """The rate-limit key of a request: its API key (``Authorization: Bearer``
    or ``x-api-key``, hashed so the secret is not kept), else the client address
    (the first ``X-Forwarded-For`` hop when ``trust_forwarded``)."""
    auth = request.headers.get("authorization", "")
    token = ""
    if auth[:7].lower() == "bearer ":
        token = auth[7:].strip()
    if not token:
        token = request.headers.get("x-api-key", "").strip()
    if token:
        return "key:" + hashlib.sha256(token.encode()).hexdigest()[:24]
    if trust_forwarded:
        forwarded = request.headers.get("x-forwarded-for", "")
        first = forwarded.split(",", 1)[0].strip()
        if first:
            return "ip:" + first
    host = request.client.host if request.client else "unknown"
    return "ip:" + host


_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def estimate_request_tokens(body: Any, model: str) -> int:
    """Tokens a chat request will cost: the prompt as ``count_messages`` counts
    it (OpenAI ``messages``, or the ``question`` + ``history`` shape) plus its
    ``max_tokens`` / ``max_completion_tokens`` when given. 0 when the body is
    not a chat request (validation rejects it later anyway)."""
    if not isinstance(body, dict):
        return 0
    named = body.get("model")
    if isinstance(named, str):
        model = named
    messages = body.get("messages")
    if messages is None and isinstance(body.get("question"), str):
        history = body.get("history") or []
        if not isinstance(history, list):  # validation rejects it later with a 422
            history = []
        messages = [*history, {"role": "user", "content": body["question"]}]
    prompt = 0
    if isinstance(messages, list):
        try:
            prompt = llmedge.count_messages(messages, model)
        except (TypeError, ValueError, KeyError):
            try:
                prompt = llmedge.count_messages(messages, "gpt-4o")
            except (TypeError, ValueError, KeyError):
                prompt = llmedge.count_tokens(json.dumps(messages, default=str))
    extra = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(extra, int) and not isinstance(extra, bool) and extra > 0:
        prompt += extra
    return prompt


def _check_limit_spec(name: str, spec: Any) -> tuple[float, float] | tuple[float, float, int]:
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise ValueError(f"{name} must be a tuple (rate, per) or (rate, per, burst), got {spec!r}")
    return spec


class RateLimit:
    """A FastAPI dependency that rate-limits requests per client.

    ``RateLimit(requests=(10, 1.0), tokens=(90_000, 60.0))``: 10 requests per
    second and 90,000 estimated tokens per minute per key, each tuple
    ``(rate, per)`` or ``(rate, per, burst)`` as :meth:`llmedge.RateLimiter.multi`
    takes them; or ``RateLimit(limiter=...)`` with your own
    :class:`llmedge.RateLimiter` (one unit per request) or
    :class:`llmedge.MultiRateLimiter` (limits named ``requests`` and/or
    ``tokens``). Any object with the same ``try_acquire(key, **costs)`` /
    ``retry_after(key, **costs)`` / ``limits`` methods works too.

    Use it as ``Depends(limit)`` (or in ``dependencies=[...]``); it returns
    the key it charged. Tokens are estimated by ``estimate(body, model)``
    (default :func:`estimate_request_tokens`) from the JSON body. A request
    denied gets 429 with ``Retry-After`` (whole seconds, rounded up, at least
    1); a request whose tokens exceed the token burst can never be granted and
    gets 413. ``rejections`` counts denials by limit name.
    """

    def __init__(
        self,
        *,
        requests: tuple[float, float] | tuple[float, float, int] | None = None,
        tokens: tuple[float, float] | tuple[float, float, int] | None = None,
        limiter: Any = None,
        model: str = "gpt-4o-mini",
        key: Callable[[Request], str] | None = None,
        estimate: Callable[[Any, str], int] | None = None,
        trust_forwarded: bool = False,
        name: str = "default",
        clock: Callable[[], float] | None = None,
        max_keys: int = 100_000,
    ) -> None:
        if limiter is not None and (requests is not None or tokens is not None):
            raise ValueError("pass either limiter= or requests=/tokens=, not both")
        if key is not None and not callable(key):
            raise TypeError(f"key must be a callable (request) -> str, got {key!r}")
        if estimate is not None and not callable(estimate):
            raise TypeError(f"estimate must be a callable (body, model) -> int, got {estimate!r}")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty str, got {model!r}")
        llmedge.model_info(model)  # UnknownModelError names it and suggests
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        if limiter is None:
            limits: dict[str, Any] = {}
            if requests is not None:
                limits["requests"] = _check_limit_spec("requests", requests)
            if tokens is not None:
                limits["tokens"] = _check_limit_spec("tokens", tokens)
            if not limits:
                raise ValueError(
                    "RateLimit needs requests=(rate, per), tokens=(rate, per) or limiter="
                )
            limiter = llmedge.RateLimiter.multi(limits, clock=clock, max_keys=max_keys)
        if isinstance(limiter, llmedge.RateLimiter):
            self._single = True
            names = ["requests"]
            self._token_burst: int | None = None
        else:
            for method in ("try_acquire", "retry_after"):
                if not callable(getattr(limiter, method, None)):
                    raise TypeError(
                        f"limiter must be a RateLimiter, a MultiRateLimiter or have "
                        f"{method}(key, **costs); got {limiter!r}"
                    )
            lim = dict(getattr(limiter, "limits", {}) or {})
            names = [n for n in ("requests", "tokens") if n in lim]
            if not names:
                raise ValueError(
                    f"the limiter's limits must include 'requests' and/or 'tokens', "
                    f"got {sorted(lim)!r}"
                )
            self._single = False
            tok = lim.get("tokens")
            self._token_burst = int(tok[2]) if tok is not None and len(tok) > 2 else None
        self.limiter = limiter
        self.names = tuple(names)
        self.model = model
        self.name = name
        self._key = key
        self._estimate = estimate or estimate_request_tokens
        self._trust_forwarded = trust_forwarded
        self._lock = threading.Lock()
        self.rejections: dict[str, int] = dict.fromkeys(self.names, 0)
        self.granted = 0

    def __repr__(self) -> str:
        return f"RateLimit(name={self.name!r}, limiter={self.limiter!r})"

    def key_of(self, request: Request) -> str:
        if self._key is not None:
            key = self._key(request)
            if not isinstance(key, str):
                raise TypeError(f"RateLimit key function returned {key!r}, expected a str")
            return key
        return client_key(request, trust_forwarded=self._trust_forwarded)

    async def _costs(self, request: Request) -> dict[str, int]:
        costs = {"requests": 1} if "requests" in self.names else {}
        if "tokens" in self.names:
            body: Any = None
            with contextlib.suppress(Exception):  # a bad body is validation's business
                body = await request.json()
            n = int(self._estimate(body, self.model))
            if n < 0:
                raise ValueError(f"estimate returned {n}, expected a token count >= 0")
            costs["tokens"] = n
        return costs

    async def __call__(self, request: Request) -> str:
        key = self.key_of(request)
        costs = await self._costs(request)
        if self._token_burst is not None and costs.get("tokens", 0) > self._token_burst:
            self._count("tokens")
            raise OpenAIError(
                413,
                f"Request too large: {costs['tokens']} estimated tokens exceed the limit "
                f"of {self._token_burst} tokens per window",
                type="tokens",
                code="request_too_large",
            )
        if self._single:
            granted = self.limiter.try_acquire(key, costs["requests"])
        else:
            granted = self.limiter.try_acquire(key, **costs)
        if granted:
            with self._lock:
                self.granted += 1
            return key
        if self._single:
            retry = self.limiter.retry_after(key, costs["requests"])
            binding = "requests"
        else:
            retry = self.limiter.retry_after(key, **costs)
            binding = self._binding(key, costs)
        self._count(binding)
        seconds = max(1, math.ceil(retry))
        raise OpenAIError(
            429,
            f"Rate limit reached for {binding} on {self.name!r}: try again in {seconds}s",
            type=binding,
            code="rate_limit_exceeded",
            headers={"Retry-After": str(seconds)},
        )

    def _binding(self, key: str, costs: Mapping[str, int]) -> str:
        available = getattr(self.limiter, "available", None)
        if callable(available):
            with contextlib.suppress(Exception):
                avail = available(key)
                for name in self.names:
                    if isinstance(avail, Mapping) and avail.get(name, 0) < costs.get(name, 0):
                        return name
        return self.names[0]

    def _count(self, name: str) -> None:
        with self._lock:
            self.rejections[name] = self.rejections.get(name, 0) + 1


# ---------------------------------------------------------------------------
# Health and metrics
# ---------------------------------------------------------------------------


def process_memory() -> dict[str, Any]:
    """This process's resident memory: psutil when installed, else
    /proc/self/statm, else the peak from ``resource.getrusage``."""
    try:
        import psutil

        return {"rss_bytes": int(psutil.Process().memory_info().rss), "source": "psutil"}
    except Exception:
        pass
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return {"rss_bytes": pages * os.sysconf("SC_PAGE_SIZE"), "source": "statm"}
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1 if sys.platform == "darwin" else 1024
        return {"rss_bytes": int(peak) * scale, "source": "getrusage peak"}
    except Exception:
        return {"rss_bytes": None, "source": "unavailable"}


_OPEN_STATES = ("open", "forced_open")
_BREAKER_STATES = ("closed", "open", "half_open", "forced_open", "disabled")
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _named(kind: str, value: Any, check: Callable[[Any], bool]) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        out = dict(value)
    else:
        out = {"default": value}
    for name, obj in out.items():
        if not isinstance(name, str) or not check(obj):
            raise TypeError(f"{kind}[{name!r}] = {obj!r} is not a {kind[:-1]}")
    return out


class _Transitions:
    """Counts breaker transitions, fed by ``add_listener``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[tuple[str, str, str], int] = {}
        self.attached: weakref.WeakSet[Any] = weakref.WeakSet()
        self.attached_ids: set[int] = set()

    def __call__(self, name: str, old: str, new: str) -> None:
        with self.lock:
            k = (name, old, new)
            self.counts[k] = self.counts.get(k, 0) + 1

    def attach(self, breaker: Any) -> None:
        with self.lock:
            try:
                if breaker in self.attached:
                    return
                self.attached.add(breaker)
            except TypeError:  # not weak-referenceable
                if id(breaker) in self.attached_ids:
                    return
                self.attached_ids.add(id(breaker))
        add = getattr(breaker, "add_listener", None)
        if callable(add):
            add(self)

    def snapshot(self) -> dict[tuple[str, str, str], int]:
        with self.lock:
            return dict(self.counts)


class Monitor:
    """``/health`` and ``/metrics`` for llmedge objects, and a latency middleware.

    ``breakers``: a sequence or name mapping of circuit breakers (default
    ``None``: every breaker in ``llmedge.breakers()`` at the time of each
    read); ``caches`` and ``costs``: one object or a name mapping of
    :class:`llmedge.SemanticCache` (or anything with ``stats()``) and
    :class:`llmedge.CostTracker` (anything with ``summary()``);
    ``rate_limits``: the :class:`RateLimit` dependencies whose rejections to
    count; ``routers``: one :class:`llmedge.Router` or a name mapping of them
    (their ``stats()`` per upstream). Each monitor has its own
    ``CollectorRegistry`` (``.registry``).

    Health: ``unhealthy`` (HTTP 503) when every breaker is open, ``degraded``
    when some breaker is open or half-open, else ``healthy`` (HTTP 200).
    """

    def __init__(
        self,
        *,
        breakers: Iterable[Any] | Mapping[str, Any] | None = None,
        caches: Any = None,
        costs: Any = None,
        rate_limits: Iterable[RateLimit] = (),
        routers: Any = None,
        namespace: str = "llmedge",
        buckets: Iterable[float] = DEFAULT_BUCKETS,
    ) -> None:
        if not isinstance(namespace, str) or not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", namespace):
            raise ValueError(
                f"namespace must be a Prometheus metric name prefix, got {namespace!r}"
            )
        if breakers is None:
            self._breakers: dict[str, Any] | None = None
        elif isinstance(breakers, Mapping):
            self._breakers = _named("breakers", breakers, _is_breaker)
        else:
            seq = list(breakers)
            for b in seq:
                if not _is_breaker(b):
                    raise TypeError(f"breakers: {b!r} is not a circuit breaker (needs metrics())")
            self._breakers = {b.name: b for b in seq}
        self.caches = _named("caches", caches, lambda c: callable(getattr(c, "stats", None)))
        self.costs = _named("costs", costs, lambda c: callable(getattr(c, "summary", None)))
        self.routers = _named("routers", routers, lambda r: callable(getattr(r, "stats", None)))
        self.rate_limits = list(rate_limits)
        for rl in self.rate_limits:
            if not isinstance(rl, RateLimit):
                raise TypeError(f"rate_limits: {rl!r} is not an llmedge.fastapi.RateLimit")
        bucket_list = sorted(float(b) for b in buckets)
        if not bucket_list or any(not math.isfinite(b) or b <= 0 for b in bucket_list):
            raise ValueError(f"buckets must be finite positive seconds, got {list(buckets)!r}")
        self.namespace = namespace
        self.started = time.time()
        self._transitions = _Transitions()
        for b in self.breakers().values():
            self._transitions.attach(b)
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency = Histogram(
            f"{namespace}_http_request_duration_seconds",
            "HTTP request latency until the last byte of the response",
            ["method", "route", "status"],
            buckets=bucket_list,
            registry=self.registry,
        )
        self.first_byte = Histogram(
            f"{namespace}_http_time_to_first_byte_seconds",
            "HTTP time until the first byte of the response body",
            ["method", "route"],
            buckets=bucket_list,
            registry=self.registry,
        )
        self.registry.register(_Collector(self))

    def __repr__(self) -> str:
        return (
            f"Monitor(breakers={sorted(self.breakers())!r}, caches={sorted(self.caches)!r}, "
            f"costs={sorted(self.costs)!r}, rate_limits={len(self.rate_limits)}, "
            f"routers={sorted(self.routers)!r})"
        )

    def breakers(self) -> dict[str, Any]:
        if self._breakers is None:
            found = llmedge.breakers()
            for b in found.values():
                self._transitions.attach(b)
            return found
        return dict(self._breakers)

    # -- health --------------------------------------------------------

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of ``GET /health``."""
        breakers = {}
        states = []
        for name, b in self.breakers().items():
            m = b.metrics()
            states.append(m["state"])
            breakers[name] = {
                "state": m["state"],
                "failures": m.get("failures", 0),
                "consecutive_failures": m.get("consecutive_failures", 0),
                "rejections": m.get("rejections", 0),
                "failure_rate": m.get("failure_rate", 0.0),
                "retry_after": m.get("retry_after", 0.0),
            }
        if states and all(s in _OPEN_STATES for s in states):
            status = "unhealthy"
        elif any(s in (*_OPEN_STATES, "half_open") for s in states):
            status = "degraded"
        else:
            status = "healthy"
        body: dict[str, Any] = {
            "status": status,
            "breakers": breakers,
            "caches": {name: c.stats() for name, c in self.caches.items()},
            "memory": process_memory(),
            "uptime_seconds": round(time.time() - self.started, 3),
            "pid": os.getpid(),
        }
        if self.costs:
            body["costs"] = {name: c.summary()["total"] for name, c in self.costs.items()}
        if self.routers:
            body["routers"] = {name: r.stats() for name, r in self.routers.items()}
        if self.rate_limits:
            body["rate_limits"] = {
                rl.name: {"granted": rl.granted, "rejections": dict(rl.rejections)}
                for rl in self.rate_limits
            }
        return (503 if status == "unhealthy" else 200), body

    def metrics_text(self) -> bytes:
        """The Prometheus text exposition of this monitor's registry."""
        return generate_latest(self.registry)

    # -- FastAPI wiring ------------------------------------------------

    def router(self, *, health_path: str = "/health", metrics_path: str = "/metrics") -> APIRouter:
        router = APIRouter()

        async def health() -> Response:
            code, body = self.health()
            return JSONResponse(body, status_code=code)

        async def metrics() -> Response:
            return Response(self.metrics_text(), media_type=CONTENT_TYPE_LATEST)

        router.add_api_route(health_path, health, methods=["GET"], include_in_schema=True)
        router.add_api_route(metrics_path, metrics, methods=["GET"], include_in_schema=False)
        return router

    def install(
        self,
        app: FastAPI,
        *,
        health_path: str = "/health",
        metrics_path: str = "/metrics",
        middleware: bool = True,
    ) -> FastAPI:
        """Adds the latency middleware, ``/health``, ``/metrics`` and the
        OpenAI error handler to ``app`` (before it starts)."""
        if middleware:
            app.add_middleware(LatencyMiddleware, monitor=self)
        app.include_router(self.router(health_path=health_path, metrics_path=metrics_path))
        install_error_handler(app)
        return app


def _is_breaker(b: Any) -> bool:
    return callable(getattr(b, "metrics", None)) and isinstance(getattr(b, "name", None), str)


class LatencyMiddleware:
    """Pure ASGI middleware observing each HTTP request's latency (to the last
    byte, so a stream counts whole) and time to first body byte, labelled by
    method, route template and status."""

    def __init__(self, app: Any, monitor: Monitor) -> None:
        self.app = app
        self.monitor = monitor

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        first: float | None = None

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status, first
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and first is None:
                first = time.perf_counter()
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            end = time.perf_counter()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "GET")
            if method not in _HTTP_METHODS:  # a client must not mint label values
                method = "other"
            self.monitor.latency.labels(method, route, str(status)).observe(end - start)
            if first is not None:
                self.monitor.first_byte.labels(method, route).observe(first - start)


def _router_metrics(ns: str, routers: Mapping[str, Any]) -> Iterable[Any]:
    labels = ["router", "upstream"]
    selections = CounterMetricFamily(
        f"{ns}_router_selections", "Calls sent to each upstream", labels=labels
    )
    failures = CounterMetricFamily(f"{ns}_router_failures", "Failed upstream calls", labels=labels)
    errors = GaugeMetricFamily(
        f"{ns}_router_error_rate", "Moving average of the upstream's failures", labels=labels
    )
    latency = GaugeMetricFamily(
        f"{ns}_router_latency_seconds",
        "Upstream answer latency over its recent calls",
        labels=[*labels, "quantile"],
    )
    for name, router in routers.items():
        for up, row in router.stats().items():
            selections.add_metric([name, up], row["selections"])
            failures.add_metric([name, up], row["failures"])
            errors.add_metric([name, up], row["error_rate"])
            for q in ("50", "95", "99"):
                value = row[f"latency_p{q}"]
                if value is not None:
                    latency.add_metric([name, up, f"0.{q}"], value)
    return (selections, failures, errors, latency)


class _Collector:
    """Reads llmedge's statistics at scrape time."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = weakref.proxy(monitor)

    def collect(self) -> Iterable[Any]:
        m = self.monitor
        ns = m.namespace
        hits = CounterMetricFamily(
            f"{ns}_cache_hits", "Cache hits by kind", labels=["cache", "kind"]
        )
        misses = CounterMetricFamily(f"{ns}_cache_misses", "Cache misses", labels=["cache"])
        guard = CounterMetricFamily(
            f"{ns}_cache_guard_rejections",
            "Semantic candidates rejected by the guard, by reason",
            labels=["cache", "reason"],
        )
        evictions = CounterMetricFamily(
            f"{ns}_cache_evictions", "Entries evicted", labels=["cache"]
        )
        entries = GaugeMetricFamily(f"{ns}_cache_entries", "Entries held", labels=["cache"])
        memory = GaugeMetricFamily(f"{ns}_cache_memory_bytes", "Bytes held", labels=["cache"])
        for name, cache in m.caches.items():
            s = cache.stats()
            hits.add_metric([name, "exact"], s.get("exact_hits", 0))
            hits.add_metric([name, "semantic"], s.get("semantic_hits", 0))
            misses.add_metric([name], s.get("misses", 0))
            by_reason = s.get("guard_rejections_by_reason") or {}
            if by_reason:
                for reason, n in sorted(by_reason.items()):
                    guard.add_metric([name, str(reason)], n)
            else:
                guard.add_metric([name, "all"], s.get("guard_rejections", 0))
            evictions.add_metric([name], s.get("evictions", 0))
            entries.add_metric([name], s.get("entries", 0))
            memory.add_metric([name], s.get("memory_bytes", 0))
        yield from (hits, misses, guard, evictions, entries, memory)

        state = GaugeMetricFamily(
            f"{ns}_breaker_state", "1 for the breaker's current state", labels=["breaker", "state"]
        )
        calls = CounterMetricFamily(f"{ns}_breaker_calls", "Calls admitted", labels=["breaker"])
        failures = CounterMetricFamily(f"{ns}_breaker_failures", "Failed calls", labels=["breaker"])
        rejected = CounterMetricFamily(
            f"{ns}_breaker_rejections", "Calls rejected while open", labels=["breaker"]
        )
        transitions = CounterMetricFamily(
            f"{ns}_breaker_transitions",
            "State transitions seen since the monitor was created",
            labels=["breaker", "from_state", "to_state"],
        )
        for name, b in m.breakers().items():
            s = b.metrics()
            for st in _BREAKER_STATES:
                state.add_metric([name, st], 1.0 if s["state"] == st else 0.0)
            calls.add_metric([name], s.get("calls", 0))
            failures.add_metric([name], s.get("failures", 0))
            rejected.add_metric([name], s.get("rejections", 0))
        for (name, old, new), n in sorted(m._transitions.snapshot().items()):
            transitions.add_metric([name, old, new], n)
        yield from (state, calls, failures, rejected, transitions)
        yield from _router_metrics(ns, m.routers)

        rl = CounterMetricFamily(
            f"{ns}_rate_limit_rejections",
            "Requests denied by a rate limit",
            labels=["limiter", "limit"],
        )
        granted = CounterMetricFamily(
            f"{ns}_rate_limit_granted", "Requests granted", labels=["limiter"]
        )
        for lim in m.rate_limits:
            granted.add_metric([lim.name], lim.granted)
            for limit, n in sorted(dict(lim.rejections).items()):
                rl.add_metric([lim.name, limit], n)
        yield from (rl, granted)

        tokens = CounterMetricFamily(
            f"{ns}_llm_tokens", "LLM tokens by model and kind", labels=["tracker", "model", "kind"]
        )
        cost = CounterMetricFamily(
            f"{ns}_llm_cost_usd", "LLM cost in USD by model", labels=["tracker", "model"]
        )
        requests = CounterMetricFamily(
            f"{ns}_llm_requests", "LLM requests by model", labels=["tracker", "model"]
        )
        for tname, tracker in m.costs.items():
            for model, row in sorted(tracker.summary().get("models", {}).items()):
                for kind in ("input", "cached_input", "output"):
                    tokens.add_metric([tname, model, kind], row.get(f"{kind}_tokens", 0))
                cost.add_metric([tname, model], row.get("cost", 0.0))
                requests.add_metric([tname, model], row.get("requests", 0))
        yield from (tokens, cost, requests)

        rss = GaugeMetricFamily(f"{ns}_process_resident_memory_bytes", "Resident memory")
        mem = process_memory()["rss_bytes"]
        if mem is not None:
            rss.add_metric([], mem)
        yield rss


# ---------------------------------------------------------------------------
# Server-sent events
# ---------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"[.!?\u3002\uff01\uff1f][\"')\]\u201d\u2019]*\s*$|\n\s*$")


def _check_coalesce(every: int, max_delay: float | None) -> None:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1 (chunks per flush), got {every!r}")
    if max_delay is not None and (
        not isinstance(max_delay, (int, float)) or not math.isfinite(max_delay) or max_delay <= 0
    ):
        raise ValueError(f"max_delay must be None or seconds > 0, got {max_delay!r}")


async def coalesce(
    chunks: AsyncIterable[str],
    *,
    every: int = 8,
    sentence: bool = True,
    first_immediately: bool = True,
    max_delay: float | None = None,
) -> AsyncIterator[str]:
    """Joins small text chunks: flushes after ``every`` chunks, at a sentence
    end (``.``, ``!``, ``?`` or a newline at the end of the buffer) when
    ``sentence``, after ``max_delay`` seconds of buffering when set, and at the
    end. With ``first_immediately`` the first chunk goes out alone, so the time
    to first token is not delayed. The concatenation is unchanged.
    """
    _check_coalesce(every, max_delay)
    buf: list[str] = []
    first = first_immediately
    it = aiter(chunks)
    if max_delay is None:
        try:
            async for chunk in it:
                if not chunk:
                    continue
                if first:
                    first = False
                    yield chunk
                    continue
                buf.append(chunk)
                if len(buf) >= every or (sentence and _SENTENCE_END.search(chunk)):
                    yield "".join(buf)
                    buf.clear()
            if buf:
                yield "".join(buf)
        finally:
            await _aclose(it)
        return

    loop = asyncio.get_running_loop()
    pending: asyncio.Future[str] | None = None
    deadline: float | None = None
    try:
        while True:
            if deadline is None and pending is None:
                # nothing buffered, so nothing to flush on time: no task needed
                try:
                    chunk = await anext(it)
                except StopAsyncIteration:
                    break
            else:
                if pending is None:
                    pending = asyncio.ensure_future(anext(it))
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                done, _ = await asyncio.wait({pending}, timeout=timeout)
                if not done:  # buffered too long: flush, keep waiting for the same chunk
                    yield "".join(buf)
                    buf.clear()
                    deadline = None
                    continue
                fut, pending = pending, None
                try:
                    chunk = fut.result()
                except StopAsyncIteration:
                    break
            if not chunk:
                continue
            if first:
                first = False
                yield chunk
                continue
            if not buf:
                deadline = loop.time() + max_delay
            buf.append(chunk)
            if len(buf) >= every or (sentence and _SENTENCE_END.search(chunk)):
                yield "".join(buf)
                buf.clear()
                deadline = None
        if buf:
            yield "".join(buf)
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        await _aclose(it)


async def _aclose(it: Any) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()


_WORDS = re.compile(r"\s*\S+\s*|\s+")


async def replay(text: str, *, words_per_chunk: int = 1) -> AsyncIterator[str]:
    """A cached answer as a stream of word-sized chunks (whitespace kept, so
    the concatenation is ``text``), to go through the same SSE path as a live
    answer."""
    if not isinstance(text, str):
        raise TypeError(f"replay needs the cached answer as str, got {type(text).__name__}")
    if isinstance(words_per_chunk, bool) or not isinstance(words_per_chunk, int):
        raise ValueError(f"words_per_chunk must be an int >= 1, got {words_per_chunk!r}")
    if words_per_chunk < 1:
        raise ValueError(f"words_per_chunk must be an int >= 1, got {words_per_chunk!r}")
    pieces = _WORDS.findall(text)
    for i in range(0, len(pieces), words_per_chunk):
        yield "".join(pieces[i : i + words_per_chunk])


async def cache_on_complete(
    chunks: AsyncIterable[str],
    cache: Any,
    prompt: str,
    *,
    partition: Any = None,
    ttl: float | None = None,
    metadata: Any = None,
    tags: Iterable[str] = (),
    on_complete: Callable[[str], Any] | None = None,
) -> AsyncIterator[str]:
    """Passes ``chunks`` through and, only once they finished normally, stores
    the whole text with ``cache.aset(prompt, text, ...)`` (or ``cache.set``).

    Nothing is stored when the upstream iterator raises (a stream cut without
    ``[DONE]`` raises :class:`IncompleteStreamError` in
    :func:`parse_openai_stream`), is cancelled, or is closed early because the
    client went away. ``on_complete(text)`` runs after the store.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    parts: list[str] = []
    async for chunk in chunks:
        parts.append(chunk)
        yield chunk
    text = "".join(parts)
    if text:
        kwargs: dict[str, Any] = {"partition": partition, "ttl": ttl, "metadata": metadata}
        tag_list = list(tags)
        if tag_list:
            kwargs["tags"] = tag_list
        aset = getattr(cache, "aset", None)
        try:
            if aset is not None:
                await aset(prompt, text, **kwargs)
            else:
                cache.set(prompt, text, **kwargs)
        except Exception:  # a full or misconfigured cache must not break the answer
            log.exception("llmedge: storing a completed stream in the cache failed")
    if on_complete is not None:
        on_complete(text)


def sse_event(data: Any, *, event: str | None = None, id: str | None = None) -> bytes:
    """One SSE event: ``data`` is a str (sent as is, split on newlines) or
    JSON-encoded."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in payload.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


def _chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish: Any) -> bytes:
    return sse_event(
        {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
    )


async def _sse_body(
    chunks: AsyncIterable[str],
    *,
    format: str,
    model: str,
    completion_id: str,
    final: Callable[[], Mapping[str, Any] | None] | None,
    done: bool,
) -> AsyncIterator[bytes]:
    created = int(time.time())
    try:
        if format == "openai":
            yield _chunk(completion_id, created, model, {"role": "assistant", "content": ""}, None)
            async for text in chunks:
                yield _chunk(completion_id, created, model, {"content": text}, None)
            yield _chunk(completion_id, created, model, {}, "stop")
            extra = final() if final is not None else None
            if extra and extra.get("usage") is not None:
                yield sse_event(
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": extra["usage"],
                    }
                )
        else:
            async for text in chunks:
                yield sse_event({"content": text})
            extra = final() if final is not None else None
            yield sse_event({"done": True, **(extra or {})})
    except Exception as exc:  # the status is sent: report in-band, end without [DONE]
        log.warning("llmedge: stream failed: %r", exc)
        err = openai_error_body(f"upstream stream failed: {exc}", "upstream_error", "stream_error")
        yield sse_event(err, event="error")
        return
    if done:
        yield b"data: [DONE]\n\n"


def sse_response(
    chunks: AsyncIterable[str],
    *,
    format: str = "text",
    model: str = "",
    every: int = 8,
    sentence: bool = True,
    first_immediately: bool = True,
    max_delay: float | None = None,
    coalesce_chunks: bool = True,
    completion_id: str | None = None,
    final: Callable[[], Mapping[str, Any] | None] | None = None,
    done: bool = True,
    headers: Mapping[str, str] | None = None,
    status_code: int = 200,
) -> StreamingResponse:
    """An SSE ``StreamingResponse`` of the text ``chunks``, coalesced (see
    :func:`coalesce`; ``coalesce_chunks=False`` sends each chunk as is).

    ``format="text"``: ``data: {"content": "..."}`` per flush, then
    ``data: {"done": true, ...final()}``, then ``data: [DONE]``.
    ``format="openai"``: ``chat.completion.chunk`` events (a first one with
    the assistant role, content deltas, a ``finish_reason: "stop"`` chunk, a
    usage chunk when ``final()`` returns ``{"usage": {...}}``), then
    ``data: [DONE]``. If ``chunks`` raises, an ``event: error`` with an
    OpenAI-shaped body is sent and the stream ends without ``[DONE]``.
    """
    if format not in ("text", "openai"):
        raise ValueError(f"format must be 'text' or 'openai', got {format!r}")
    _check_coalesce(every, max_delay)
    if final is not None and not callable(final):
        raise TypeError(f"final must be a callable returning a dict or None, got {final!r}")
    if coalesce_chunks:
        chunks = coalesce(
            chunks,
            every=every,
            sentence=sentence,
            first_immediately=first_immediately,
            max_delay=max_delay,
        )
    body = _sse_body(
        chunks,
        format=format,
        model=model,
        completion_id=completion_id or f"chatcmpl-{uuid.uuid4().hex[:24]}",
        final=final,
        done=done,
    )
    hdrs = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **dict(headers or {})}
    return StreamingResponse(
        body, media_type="text/event-stream", headers=hdrs, status_code=status_code
    )


async def parse_openai_stream(
    lines: AsyncIterable[str],
    *,
    on_usage: Callable[[dict[str, Any]], Any] | None = None,
) -> AsyncIterator[str]:
    """The content deltas of an upstream OpenAI chat completion stream (see
    :func:`parse_openai_events`; raises :class:`IncompleteStreamError` when it
    ends without ``data: [DONE]``)."""
    events = parse_openai_events(lines, on_usage=on_usage)
    try:
        async for event in events:
            content = event_content(event)
            if content:
                yield content
    finally:
        await events.aclose()

"""Health and metrics: :class:`Monitor` (``/health``, Prometheus ``/metrics``
read from llmedge's own statistics at scrape time) and the latency middleware."""

from __future__ import annotations

import math
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

import llmedge
from llmedge.fastapi.errors import install_error_handler
from llmedge.fastapi.ratelimit import RateLimit

__all__ = ["Monitor", "LatencyMiddleware", "process_memory"]

_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


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
    (their ``stats()`` per upstream); ``stores``: one :class:`llmedge.RedisStore`
    or a name mapping (``health()`` in ``/health``, its counters in
    ``/metrics``). Each monitor has its own ``CollectorRegistry`` (``.registry``).

    Health: ``unhealthy`` (HTTP 503) when every breaker is open, ``degraded``
    when some breaker is open or half-open or a store is disconnected (its
    users are on their fallback policy), else ``healthy`` (HTTP 200).
    """

    def __init__(
        self,
        *,
        breakers: Iterable[Any] | Mapping[str, Any] | None = None,
        caches: Any = None,
        costs: Any = None,
        rate_limits: Iterable[RateLimit] = (),
        routers: Any = None,
        stores: Any = None,
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
        self.stores = _named(
            "stores",
            stores,
            lambda s: (
                callable(getattr(s, "health", None)) and callable(getattr(s, "metrics", None))
            ),
        )
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
            f"routers={sorted(self.routers)!r}, stores={sorted(self.stores)!r})"
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
        stores = {name: s.health() for name, s in self.stores.items()}
        if states and all(s in _OPEN_STATES for s in states):
            status = "unhealthy"
        elif any(s in (*_OPEN_STATES, "half_open") for s in states) or not all(
            h.get("connected") for h in stores.values()
        ):
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
        if stores:
            body["stores"] = stores
        if self.routers:
            body["routers"] = {name: r.stats() for name, r in self.routers.items()}
        if self.rate_limits:
            body["rate_limits"] = {
                rl.name: {
                    "granted": rl.granted,
                    "rejections": dict(rl.rejections),
                    **_local_keys(rl.limiter),
                }
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


def _local_keys(limiter: Any) -> dict[str, int]:
    """``{"keys": n}``: the keys a process-local limiter holds state for
    (bounded by its ``max_keys``); nothing for one whose state is in a store."""
    if getattr(limiter, "shared", False) or not hasattr(limiter, "__len__"):
        return {}
    return {"keys": len(limiter)}


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

        connected = GaugeMetricFamily(
            f"{ns}_store_connected", "1 while the store reaches Redis", labels=["store"]
        )
        counters = {
            kind: CounterMetricFamily(f"{ns}_store_{kind}", help_text, labels=["store"])
            for kind, help_text in (
                ("calls", "Calls to Redis"),
                ("errors", "Calls to Redis that failed"),
                ("timeouts", "Calls to Redis that passed the store's timeout"),
                ("fallbacks", "Decisions made by a fallback policy instead of Redis"),
                ("reconnects", "Connections to Redis re-established"),
            )
        }
        for name, store in m.stores.items():
            connected.add_metric([name], 1.0 if store.health().get("connected") else 0.0)
            counts = store.metrics()
            for kind, family in counters.items():
                family.add_metric([name], counts.get(kind, 0))
        yield connected
        yield from counters.values()

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

"""The gateway's backend: the llmedge components behind one small interface.

``LlmedgeBackend`` uses llmedge (SemanticCache, CircuitBreaker, RateLimiter,
PromptOptimizer, CostTracker). The load tests swap in a pure-Python backend
with the same methods (``benches/baselines/service.py``), so the gateway's
request logic is literally shared: ``LLMEDGE_SERVICE_BACKEND`` names
``llmedge`` (the default), ``baseline`` (that module, importable when the
repository's ``benches/`` is on ``PYTHONPATH``) or any ``module:factory``.

The interface (what ``app.py`` calls):

* ``cache``: ``await get(prompt, partition) -> (response, kind) | None``,
  ``await aset(prompt, text, partition=...)``, ``stats()``; the llmedge
  backend's semantic tier embeds with the embedder of ``LLMEDGE_EMBEDDER``
  (``make_embedder``), and a failing embeddings service makes a lookup a
  miss and a store a no-op rather than a failed request;
* ``breaker(name, exclude=...)``: a circuit breaker for ``llmedge.Router``
  (the permit protocol ``_acquire()``, ``_on_success``, ``_on_error``,
  ``_release``), with ``name``, ``state``, ``metrics()``,
  ``add_listener(fn)``; an open breaker raises ``llmedge.CircuitOpenError``
  (``.retry_after``);
* ``limiter(requests=(rate, per, burst), tokens=..., max_keys=...)``: for
  ``llmedge.fastapi.RateLimit(limiter=...)``; with a ``store`` (llmedge
  only), breakers and limiter share their state through Redis;
* ``fit(model, messages, max_tokens)``, ``count_messages(model, messages)``,
  ``count_tokens(model, text)``, ``cost_tracker()``.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

import llmedge

HISTORY_LIMIT = 4
# The pure-Python backend of the load tests (repository's benches/ on PYTHONPATH).
BASELINE = "baselines.service:BaselineBackend"


class LlmedgeBackend:
    name = "llmedge"

    def __init__(
        self,
        *,
        threshold: float = 0.85,
        ttl: float = 3600.0,
        max_entries: int = 10_000,
        store: llmedge.RedisStore | None = None,
        local_share: int = 1,
        embedder: Any = None,
    ):
        self.store = store
        self.local_share = local_share
        self.cache = _LlmedgeCache(
            llmedge.SemanticCache(
                threshold=threshold, ttl=ttl, max_entries=max_entries, embedder=embedder
            )
        )
        self._optimizers: dict[str, llmedge.PromptOptimizer] = {}
        self._lock = threading.Lock()

    def breaker(self, name: str, *, exclude: tuple[type[BaseException], ...], **config: Any) -> Any:
        if self.store is not None:
            config["store"] = self.store
        return llmedge.CircuitBreaker(name, exclude=exclude, **config)

    def limiter(self, *, max_keys: int = 100_000, **limits: Any) -> Any:
        if self.store is None:
            return llmedge.RateLimiter.multi(limits, max_keys=max_keys)
        return llmedge.MultiRateLimiter(
            limits, store=self.store, name="chat", local_share=self.local_share, max_keys=max_keys
        )

    def _optimizer(self, model: str) -> llmedge.PromptOptimizer:
        opt = self._optimizers.get(model)  # one per known model: bounded by the model table
        if opt is None:
            opt = llmedge.PromptOptimizer(model, history_limit=HISTORY_LIMIT)
            with self._lock:
                self._optimizers[model] = opt
        return opt

    def fit(self, model: str, messages: list[dict[str, Any]], reserve: int) -> list[dict[str, Any]]:
        opt = self._optimizer(model)
        budget = prompt_budget(opt.max_context_tokens, reserve)
        return opt.fit_messages(messages, max_tokens=budget)

    def count_messages(self, model: str, messages: list[dict[str, Any]]) -> int:
        return llmedge.count_messages(messages, model)

    def count_tokens(self, model: str, text: str) -> int:
        return llmedge.count_tokens(text, model)

    def cost_tracker(self) -> Any:
        return llmedge.CostTracker()


def prompt_budget(context_window: int, reserve: int) -> int:
    budget = context_window - reserve
    if budget <= 0:
        raise llmedge.ContextOverflowError(
            f"max_tokens {reserve} leaves no room for the prompt in a context window of "
            f"{context_window} tokens",
            required=reserve,
            available=context_window,
        )
    return budget


# What a remote embedder raises when its service fails, is unavailable or
# rejects a text: the request goes on without the cache.
_EMBEDDER_ERRORS = (llmedge.UpstreamError, llmedge.UpstreamClientError, llmedge.CircuitOpenError)


class _LlmedgeCache:
    def __init__(self, cache: llmedge.SemanticCache) -> None:
        self.inner = cache
        self.embedder_errors = 0

    async def get(self, prompt: str, partition: str) -> tuple[Any, str] | None:
        try:
            hit = await self.inner.aget(prompt, partition=partition)
        except _EMBEDDER_ERRORS:
            self.embedder_errors += 1
            return None
        return None if hit is None else (hit.response, hit.kind)

    async def aset(self, prompt: str, text: Any, *, partition: Any = None, **_: Any) -> None:
        try:
            await self.inner.aset(prompt, text, partition=partition)
        except _EMBEDDER_ERRORS:
            self.embedder_errors += 1

    def stats(self) -> dict[str, Any]:
        return {**self.inner.stats(), "embedder_errors": self.embedder_errors}


EMBEDDERS = "'hashing', 'sentence-transformers:MODEL' or 'openai:MODEL'"


def check_embedder(settings: Any) -> None:
    """A ValueError naming ``LLMEDGE_EMBEDDER`` unless it is one of ``EMBEDDERS``."""
    kind, sep, model = settings.embedder.partition(":")
    if settings.embedder == "hashing":
        return
    if kind not in ("sentence-transformers", "openai") or not sep or not model.strip():
        raise ValueError(f"LLMEDGE_EMBEDDER must be {EMBEDDERS}, got {settings.embedder!r}")
    if settings.backend != "llmedge":
        raise ValueError(
            f"LLMEDGE_EMBEDDER={settings.embedder!r} needs LLMEDGE_SERVICE_BACKEND=llmedge, "
            f"got {settings.backend!r}"
        )
    url = settings.embedder_url
    if url is not None and not url.startswith(("http://", "https://")):
        raise ValueError(f"LLMEDGE_EMBEDDER_URL must be an http(s) base URL, got {url!r}")
    if not settings.embedder_timeout > 0:
        raise ValueError(f"embedder_timeout must be > 0 seconds, got {settings.embedder_timeout}")


def make_embedder(settings: Any) -> Any:
    """The embedder of ``settings.embedder`` (None: the cache's built-in hashing
    embedder). ``openai:MODEL`` asks its endpoint for the dimension now, so that
    a wrong URL or model stops the start with its reason."""
    check_embedder(settings)
    kind, _, model = settings.embedder.partition(":")
    model = model.strip()
    from llmedge import embedders

    if kind == "sentence-transformers":
        return embedders.SentenceTransformerEmbedder(model)
    if kind == "openai":
        url = settings.embedder_url or settings.upstreams[0]
        key = settings.embedder_api_key
        if key is None and url == settings.upstreams[0]:
            key = settings.upstream_api_key
        # named without its URL: breaker names reach /health and /metrics
        breaker = llmedge.CircuitBreaker(
            f"embeddings {model}",
            failure_threshold=5,
            recovery_timeout=30.0,
            success_threshold=1,
            exclude=(llmedge.UpstreamClientError,),
        )
        embedder = embedders.OpenAIEmbedder(
            url, model, api_key=key, timeout=settings.embedder_timeout, breaker=breaker
        )
        try:
            embedder.dim  # noqa: B018 - the probe
        except (llmedge.UpstreamError, llmedge.UpstreamClientError) as exc:
            embedder.close()
            raise ValueError(
                f"LLMEDGE_EMBEDDER={settings.embedder!r}: the embeddings endpoint {url} "
                f"did not embed a probe text: {exc}"
            ) from exc
        return embedder
    return None


def make_backend(name: str, **config: Any) -> Any:
    """The backend named by ``LLMEDGE_SERVICE_BACKEND``, built with ``config``."""
    if name == "llmedge":
        return LlmedgeBackend(**config)
    spec = BASELINE if name == "baseline" else name
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"LLMEDGE_SERVICE_BACKEND must be 'llmedge', 'baseline' or 'module:factory', "
            f"got {name!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = " (put the repository's benches/ on PYTHONPATH)" if name == "baseline" else ""
        raise ValueError(
            f"LLMEDGE_SERVICE_BACKEND={name!r}: cannot import {module_name!r}{hint}: {exc}"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"LLMEDGE_SERVICE_BACKEND={name!r}: {spec!r} is not a callable")
    return factory(**config)

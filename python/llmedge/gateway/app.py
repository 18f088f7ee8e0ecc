"""The gateway: llmedge in front of OpenAI-compatible upstreams.

Run it (``pip install 'llmedge[service]'``)::

    LLMEDGE_UPSTREAMS=http://127.0.0.1:8001/v1 uvicorn --factory llmedge.gateway:create_app \\
        --http llmedge.gateway.server:HeaderTimeoutProtocol
    LLMEDGE_UPSTREAMS=... gunicorn -k llmedge.gateway.worker.UvicornWorker -w 2 \\
        'llmedge.gateway:create_app()'

Endpoints: ``POST /chat`` (``{"question", "history", "stream", "model"}``),
``POST /v1/chat/completions`` (OpenAI-compatible, streaming and not),
``GET /health``, ``GET /metrics``. Every worker process keeps its own cache
and counters; its breakers and rate limiter too, unless ``LLMEDGE_REDIS_URL``
names a Redis (or a Redis Cluster) that all workers and hosts then share.

Per request: rate limit (per API key, else per client address), history cut
to the last 4 messages and to the model's context budget, a semantic cache
lookup partitioned by model, sampling parameters, system prompt and earlier
turns, then the upstreams in order of preference through an ``llmedge.Router``,
each behind its own circuit breaker (5xx, 429, timeouts and connection errors
are failures and move on to the next upstream; other 4xx are the caller's and
are passed back; when all answered 429 the client gets 429 with the
smallest ``Retry-After`` they gave). Streams forward the first token as soon
as it arrives. An answer is cached only when it completed normally
(``finish_reason`` ``stop``, or ``length`` when the client set
``max_tokens``) without tool calls. Clients see upstreams by label
(``upstream-<index>`` or the label given in ``LLMEDGE_UPSTREAMS``), never by
URL.

Configuration (environment):

=============================  ==============================================
``LLMEDGE_UPSTREAMS``          comma-separated base URLs (``http://h:p/v1``),
                               each optionally labelled (``primary=http://...``;
                               clients see labels, never URLs)
``LLMEDGE_UPSTREAM_API_KEY``   bearer token sent to every upstream (unset: none)
``LLMEDGE_SERVICE_BACKEND``    ``llmedge`` (default) or ``baseline``
``LLMEDGE_MODEL``              default model (``gpt-4o-mini``)
``LLMEDGE_SYSTEM_PROMPT``      system prompt of ``/chat``
``LLMEDGE_CONNECT_TIMEOUT``    seconds to connect to an upstream (1.0)
``LLMEDGE_READ_TIMEOUT``       seconds to the first byte, and between bytes (5.0)
``LLMEDGE_TOTAL_TIMEOUT``      seconds for a whole non-streamed answer (30.0)
``LLMEDGE_BREAKER_FAILURES``   consecutive failures that open a breaker (5)
``LLMEDGE_BREAKER_RECOVERY``   seconds a breaker stays open (5.0)
``LLMEDGE_BREAKER_FAILURE_RATE`` failure rate over the last 20 calls (at least
                               10) that opens it too (0.5; 0: off; llmedge only)
``LLMEDGE_RATE_LIMIT``         ``RATE/PER[/BURST]`` per key, or ``off`` (100/1/200)
``LLMEDGE_TOKENS_PER_MINUTE``  estimated tokens per minute per key (0: off)
``LLMEDGE_CACHE_THRESHOLD``    cosine similarity of a semantic hit (0.85)
``LLMEDGE_CACHE_TTL``          seconds (3600)
``LLMEDGE_CACHE_MAX_ENTRIES``  entries the cache holds at most (10000)
``LLMEDGE_EMBEDDER``           the semantic tier's embedder: ``hashing`` (default),
                               ``sentence-transformers:MODEL`` or ``openai:MODEL``
``LLMEDGE_EMBEDDER_URL``       base URL of ``openai:`` (default: the first upstream)
``LLMEDGE_EMBEDDER_API_KEY``   its bearer token (default: the upstreams' when
                               the embedder's URL is the first upstream's)
``LLMEDGE_EMBEDDER_TIMEOUT``   seconds an embeddings request may take (2.0)
``LLMEDGE_SSE_EVERY``          chunks coalesced per SSE event at most (8)
``LLMEDGE_SSE_MAX_DELAY``      seconds a chunk may wait in the coalescer (0.05)
``LLMEDGE_REDIS_URL``          ``redis://``, ``rediss://`` or ``unix://`` URL, or
                               comma-separated cluster node URLs: the limiter
                               and breakers share their state there (unset:
                               per process; llmedge backend only)
``LLMEDGE_REDIS_TIMEOUT``      seconds any request waits for Redis (0.05)
``LLMEDGE_REDIS_LOCAL_SHARE``  processes sharing the limit: while Redis is
                               unreachable each admits rate / this (1)
``LLMEDGE_RATE_LIMIT_MAX_KEYS`` keys the limiter keeps state for (100000)
``LLMEDGE_MAX_BODY_BYTES``     request body size, 413 beyond (4194304)
``LLMEDGE_MAX_MESSAGES``       messages (or history entries), 413 beyond (2048)
``LLMEDGE_MAX_JSON_DEPTH``     JSON nesting, 400 beyond (64)
``LLMEDGE_BODY_TIMEOUT``       seconds for the body after the headers, 408 (30)
``LLMEDGE_HEADER_TIMEOUT``     seconds for the headers, 408 (10; the server's,
                               see ``llmedge.gateway.server``)
=============================  ==============================================
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

import llmedge
from llmedge.fastapi import (
    Monitor,
    OpenAIError,
    RateLimit,
    event_content,
    openai_error_body,
    replay,
    sse_event,
    sse_response,
)
from llmedge.gateway.backends import check_embedder, make_backend, make_embedder
from llmedge.gateway.limits import LimitsMiddleware, RequestLimits
from llmedge.gateway.upstreams import (
    all_failed_error,
    describe,
    log,
    make_router,
    parse_upstreams,
)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {raw!r}")
    return value


@dataclasses.dataclass
class Settings:
    upstreams: list[str]
    backend: str = "llmedge"
    model: str = "gpt-4o-mini"
    system_prompt: str = "You are a helpful assistant. Answer briefly."
    connect_timeout: float = 1.0
    read_timeout: float = 5.0
    total_timeout: float = 30.0
    breaker_failures: int = 5
    breaker_recovery: float = 5.0
    breaker_failure_rate: float | None = 0.5
    rate_limit: tuple[float, float, int] | None = (100.0, 1.0, 200)
    tokens_per_minute: int = 0
    cache_threshold: float = 0.85
    cache_ttl: float = 3600.0
    cache_max_entries: int = 10_000
    embedder: str = "hashing"
    embedder_url: str | None = None
    embedder_api_key: str | None = None
    embedder_timeout: float = 2.0
    upstream_api_key: str | None = None
    sse_every: int = 8
    sse_max_delay: float | None = 0.05
    reserve_output_tokens: int = 1024
    redis_url: str | list[str] | None = None
    redis_timeout: float = 0.05
    redis_local_share: int = 1
    rate_limit_max_keys: int = 100_000
    max_body_bytes: int = RequestLimits.max_body_bytes
    max_messages: int = RequestLimits.max_messages
    max_json_depth: int = RequestLimits.max_json_depth
    body_timeout: float = RequestLimits.body_timeout

    @classmethod
    def from_env(cls) -> Settings:
        ups = [
            u.strip().rstrip("/")
            for u in os.environ.get("LLMEDGE_UPSTREAMS", "http://127.0.0.1:8001/v1").split(",")
        ]
        ups = [u for u in ups if u]
        rate: tuple[float, float, int] | None
        raw_rate = os.environ.get("LLMEDGE_RATE_LIMIT", "100/1/200").strip()
        if raw_rate.lower() in ("off", "0", ""):
            rate = None
        else:
            parts = raw_rate.split("/")
            try:
                nums = [float(p) for p in parts]
                if len(nums) == 2:
                    nums.append(max(1.0, math.floor(nums[0])))
                if len(nums) != 3 or min(nums) <= 0:
                    raise ValueError
            except ValueError:
                raise ValueError(
                    f"LLMEDGE_RATE_LIMIT must be RATE/PER[/BURST] with positive numbers or "
                    f"'off', got {raw_rate!r}"
                ) from None
            rate = (nums[0], nums[1], int(nums[2]))
        delay = _env_float("LLMEDGE_SSE_MAX_DELAY", 0.05)
        redis_urls = [u.strip() for u in os.environ.get("LLMEDGE_REDIS_URL", "").split(",")]
        redis_urls = [u for u in redis_urls if u]
        return cls(
            upstreams=ups,
            backend=os.environ.get("LLMEDGE_SERVICE_BACKEND", "llmedge").strip() or "llmedge",
            model=os.environ.get("LLMEDGE_MODEL", "gpt-4o-mini"),
            system_prompt=os.environ.get(
                "LLMEDGE_SYSTEM_PROMPT", "You are a helpful assistant. Answer briefly."
            ),
            connect_timeout=_env_float("LLMEDGE_CONNECT_TIMEOUT", 1.0),
            read_timeout=_env_float("LLMEDGE_READ_TIMEOUT", 5.0),
            total_timeout=_env_float("LLMEDGE_TOTAL_TIMEOUT", 30.0),
            breaker_failures=int(_env_float("LLMEDGE_BREAKER_FAILURES", 5)),
            breaker_recovery=_env_float("LLMEDGE_BREAKER_RECOVERY", 5.0),
            breaker_failure_rate=_env_float("LLMEDGE_BREAKER_FAILURE_RATE", 0.5) or None,
            rate_limit=rate,
            tokens_per_minute=int(_env_float("LLMEDGE_TOKENS_PER_MINUTE", 0)),
            cache_threshold=_env_float("LLMEDGE_CACHE_THRESHOLD", 0.85),
            cache_ttl=_env_float("LLMEDGE_CACHE_TTL", 3600.0),
            cache_max_entries=int(_env_float("LLMEDGE_CACHE_MAX_ENTRIES", 10_000)),
            embedder=os.environ.get("LLMEDGE_EMBEDDER", "").strip() or "hashing",
            embedder_url=os.environ.get("LLMEDGE_EMBEDDER_URL", "").strip() or None,
            embedder_api_key=os.environ.get("LLMEDGE_EMBEDDER_API_KEY") or None,
            embedder_timeout=_env_float("LLMEDGE_EMBEDDER_TIMEOUT", 2.0),
            upstream_api_key=os.environ.get("LLMEDGE_UPSTREAM_API_KEY") or None,
            sse_every=int(_env_float("LLMEDGE_SSE_EVERY", 8)),
            sse_max_delay=delay if delay > 0 else None,
            redis_url=(redis_urls[0] if len(redis_urls) == 1 else redis_urls) or None,
            redis_timeout=_env_float("LLMEDGE_REDIS_TIMEOUT", 0.05),
            redis_local_share=int(_env_float("LLMEDGE_REDIS_LOCAL_SHARE", 1)),
            rate_limit_max_keys=int(_env_float("LLMEDGE_RATE_LIMIT_MAX_KEYS", 100_000)),
            max_body_bytes=int(_env_float("LLMEDGE_MAX_BODY_BYTES", RequestLimits.max_body_bytes)),
            max_messages=int(_env_float("LLMEDGE_MAX_MESSAGES", RequestLimits.max_messages)),
            max_json_depth=int(_env_float("LLMEDGE_MAX_JSON_DEPTH", RequestLimits.max_json_depth)),
            body_timeout=_env_float("LLMEDGE_BODY_TIMEOUT", RequestLimits.body_timeout),
        )

    def validate(self) -> None:
        if not self.upstreams:
            raise ValueError("LLMEDGE_UPSTREAMS lists no upstream base URL")
        parse_upstreams(self.upstreams)
        for name in ("connect_timeout", "read_timeout", "total_timeout", "breaker_recovery"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        rate = self.breaker_failure_rate
        if rate is not None and not 0.0 < rate <= 1.0:
            raise ValueError(f"breaker_failure_rate must be in (0, 1] or None, got {rate!r}")
        if self.sse_every < 1:
            raise ValueError(f"sse_every (LLMEDGE_SSE_EVERY) must be >= 1, got {self.sse_every!r}")
        if self.cache_max_entries < 1:
            raise ValueError(
                f"cache_max_entries (LLMEDGE_CACHE_MAX_ENTRIES) must be >= 1, "
                f"got {self.cache_max_entries!r}"
            )
        if self.breaker_failures < 1:
            raise ValueError(f"breaker_failures must be >= 1, got {self.breaker_failures!r}")
        if self.redis_url is not None and self.backend != "llmedge":
            raise ValueError(
                f"LLMEDGE_REDIS_URL needs LLMEDGE_SERVICE_BACKEND=llmedge, got {self.backend!r}"
            )
        if self.redis_local_share < 1:
            raise ValueError(
                f"redis_local_share (LLMEDGE_REDIS_LOCAL_SHARE) must be >= 1, "
                f"got {self.redis_local_share!r}"
            )
        if self.rate_limit_max_keys < 1:
            raise ValueError(
                f"rate_limit_max_keys (LLMEDGE_RATE_LIMIT_MAX_KEYS) must be >= 1, "
                f"got {self.rate_limit_max_keys!r}"
            )
        self.limits()
        check_embedder(self)
        llmedge.model_info(self.model)

    def limits(self) -> RequestLimits:
        return RequestLimits(
            max_body_bytes=self.max_body_bytes,
            max_messages=self.max_messages,
            max_json_depth=self.max_json_depth,
            body_timeout=self.body_timeout,
        )


# ---------------------------------------------------------------------------
# Request bodies
# ---------------------------------------------------------------------------


class HistoryMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class ChatBody(BaseModel):
    """The documents' API: ``{"question", "history", "stream"}`` (+ model)."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1)
    history: list[HistoryMessage] = Field(default_factory=list)
    stream: bool = False
    model: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class CompletionBody(BaseModel):
    """An OpenAI chat completion request; unknown fields are passed upstream."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1)


# Parameters that the partition names on their own; the rest go in as one digest.
_PARTITIONED = ("model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens")

_UNCACHEABLE = (
    "tools",
    "functions",
    "tool_choice",
    "function_call",
    "response_format",
    "logprobs",
    "top_logprobs",
)


# ---------------------------------------------------------------------------
# Upstreams: an llmedge.Router, in order of preference
# ---------------------------------------------------------------------------


def _digest(value: Any) -> str:
    data = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@contextlib.asynccontextmanager
async def _routed(urls: dict[str, str]) -> AsyncIterator[None]:
    """The Router's failures as the service's HTTP errors."""
    try:
        yield
    except llmedge.UpstreamClientError as exc:
        raise _Passthrough(JSONResponse(exc.body, status_code=exc.status)) from None
    except llmedge.AllUpstreamsFailedError as exc:
        raise all_failed_error(exc, urls) from None


# ---------------------------------------------------------------------------
# The shared request logic
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Prepared:
    model: str
    messages: list[dict[str, Any]]
    upstream_body: dict[str, Any]
    prompt: str | None  # the cache key (last user message), None: not cacheable
    partition: str
    prompt_tokens: int
    stream: bool
    include_usage: bool
    limited: bool = False  # the client set max_tokens (or max_completion_tokens)


def _completed(p: Prepared, finish_reason: Any, tool_calls: bool) -> bool:
    """Whether an answer may be cached: it ended normally (``stop``, or
    ``length`` when the client set the limit, so the same request gets the
    same cut) and called no tool. A ``content_filter`` end, or a cut the
    client did not ask for, is never replayed to the next person."""
    return (
        p.prompt is not None
        and not tool_calls
        and (finish_reason == "stop" or (finish_reason == "length" and p.limited))
    )


class Service:
    def __init__(self, settings: Settings) -> None:
        settings.validate()
        self.settings = settings
        # one connection object per process; limiter and breakers share state through it
        self.store = (
            llmedge.RedisStore(settings.redis_url, timeout=settings.redis_timeout)
            if settings.redis_url is not None
            else None
        )
        shared = (
            {"store": self.store, "local_share": settings.redis_local_share} if self.store else {}
        )
        embedder = make_embedder(settings)
        self.embedder = embedder
        if embedder is not None:
            shared["embedder"] = embedder
        self.backend = make_backend(
            settings.backend,
            threshold=settings.cache_threshold,
            ttl=settings.cache_ttl,
            max_entries=settings.cache_max_entries,
            **shared,
        )
        self.router = make_router(settings, self.backend)
        self.urls = dict(parse_upstreams(settings.upstreams))  # label: base URL (logs only)
        self.labels = list(self.urls)
        self.costs = self.backend.cost_tracker()
        self.saved_by_cache = self.backend.cost_tracker()
        self.saved_by_optimizer = self.backend.cost_tracker()
        self._flights: dict[tuple[str, str], asyncio.Future[str]] = {}
        limits: dict[str, Any] = {}
        if settings.rate_limit is not None:
            limits["requests"] = settings.rate_limit
        if settings.tokens_per_minute > 0:
            tpm = settings.tokens_per_minute
            limits["tokens"] = (float(tpm), 60.0, tpm)
        self.rate_limit = (
            RateLimit(
                limiter=self.backend.limiter(max_keys=settings.rate_limit_max_keys, **limits),
                model=settings.model,
                name="chat",
            )
            if limits
            else None
        )

    def prepare(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        stream: bool,
        params: dict[str, Any],
        include_usage: bool,
    ) -> Prepared:
        try:
            llmedge.model_info(model)
        except llmedge.UnknownModelError as exc:
            hint = f"; did you mean {exc.suggestions[0]!r}?" if exc.suggestions else ""
            raise OpenAIError(
                404,
                f"The model {model!r} does not exist{hint}",
                code="model_not_found",
                param="model",
            ) from None
        max_out = params.get("max_completion_tokens") or params.get("max_tokens")
        reserve = int(max_out) if max_out else self.settings.reserve_output_tokens
        be = self.backend
        try:
            fitted = be.fit(model, messages, reserve)
            prompt_tokens = be.count_messages(model, fitted)
            removed = 0
            if len(fitted) < len(messages):
                removed = be.count_messages(model, messages) - prompt_tokens
        except llmedge.ContextOverflowError as exc:
            raise OpenAIError(
                400,
                f"{exc} (the prompt needs {exc.required} tokens, {exc.available} are available)",
                code="context_length_exceeded",
                param="messages",
            ) from None
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise OpenAIError(400, f"invalid messages: {exc}", param="messages") from None
        if removed > 0:
            self.saved_by_optimizer.record(model, removed, 0)
        last = fitted[-1] if fitted else {}
        cacheable = (
            last.get("role") == "user"
            and isinstance(last.get("content"), str)
            # a blank question is passed upstream as it is, never looked up
            and bool(last["content"].strip())
            and not any(params.get(k) is not None for k in _UNCACHEABLE)
            and (params.get("n") or 1) == 1
        )
        system = "\n".join(
            m["content"]
            for m in fitted
            if m.get("role") in ("system", "developer") and isinstance(m.get("content"), str)
        )
        # The earlier turns sent upstream are part of the partition: a
        # follow-up ("and its capital?") means something else after another
        # conversation, so it may only hit after the same one.
        earlier = [
            [m.get("role"), m.get("content")]
            for m in fitted[:-1]
            if m.get("role") not in ("system", "developer")
        ]
        other = sorted(
            [k, v]
            for k, v in params.items()
            if v is not None and k not in _PARTITIONED and k not in ("stream", "stream_options")
        )
        partition = llmedge.partition_key(
            model=model,
            temperature=params.get("temperature"),
            top_p=params.get("top_p"),
            max_tokens=max_out,
            system=hashlib.sha256(system.encode()).hexdigest()[:16] if system else None,
            history=_digest(earlier) if earlier else None,
            # every other parameter sent upstream (stop, seed, penalties, ...)
            # changes the answer too, so it must match exactly as well
            params=_digest(other) if other else None,
        )
        body = {k: v for k, v in params.items() if v is not None}
        body.update(model=model, messages=fitted, stream=stream)
        if stream:
            body["stream_options"] = {**(params.get("stream_options") or {}), "include_usage": True}
        return Prepared(
            model=model,
            messages=fitted,
            upstream_body=body,
            prompt=last["content"] if cacheable else None,
            partition=partition,
            prompt_tokens=prompt_tokens,
            stream=stream,
            include_usage=include_usage,
            limited=max_out is not None,
        )

    async def lookup(self, p: Prepared) -> tuple[str, str] | None:
        if p.prompt is None:
            return None
        found = await self.backend.cache.get(p.prompt, p.partition)
        if found is None or not isinstance(found[0], str):
            return None
        return found

    def _usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def record(self, p: Prepared, usage: dict[str, Any] | None, answer: str) -> tuple[dict, float]:
        if usage and "prompt_tokens" in usage:
            u = self._usage(int(usage["prompt_tokens"]), int(usage.get("completion_tokens", 0)))
            cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        else:
            u = self._usage(p.prompt_tokens, self.backend.count_tokens(p.model, answer))
            cached = 0
        cost = self.costs.record(
            p.model, u["prompt_tokens"], u["completion_tokens"], cached_input_tokens=cached
        )
        return u, float(cost)

    def upstream(self, name: str) -> int:
        """The index of the upstream the router calls ``name`` (its label)."""
        return self.labels.index(name)

    async def complete(self, p: Prepared) -> tuple[str, dict, float, int, dict]:
        async with _routed(self.urls):
            res = await self.router.achat(p.upstream_body)
        data = res.body
        choice = data["choices"][0]
        content = choice["message"].get("content")
        answer = content if isinstance(content, str) else ""
        usage, cost = self.record(p, data.get("usage"), answer)
        tool_calls = bool(choice["message"].get("tool_calls"))
        if answer and _completed(p, choice.get("finish_reason"), tool_calls):
            await self._store(p, answer)
        return answer, usage, cost, self.upstream(res.upstream), data

    async def _store(self, p: Prepared, answer: str) -> None:
        assert p.prompt is not None
        try:
            await self.backend.cache.aset(p.prompt, answer, partition=p.partition)
        except Exception:  # a full or broken cache must not break the answer
            log.exception("storing a completed answer in the cache failed")

    async def open_stream(self, p: Prepared) -> tuple[llmedge.RouterStream, int]:
        """The first upstream whose first token arrived: its events, from the first."""
        async with _routed(self.urls):
            stream = await self.router.astream(p.upstream_body)
        return stream, self.upstream(stream.upstream)

    # -- single flight: identical non-streamed misses in flight share one call --

    def _flight_key(self, p: Prepared) -> tuple[str, str]:
        assert p.prompt is not None
        return p.partition, " ".join(p.prompt.split()).casefold()

    async def _follow(self, p: Prepared) -> tuple[str, str] | None:
        """The answer of an identical request in flight, as an exact hit."""
        if p.stream or p.prompt is None:
            return None
        key = self._flight_key(p)
        while True:
            flight = self._flights.get(key)
            if flight is None:
                return None
            try:
                answer = await asyncio.shield(flight)
            except asyncio.CancelledError:
                if flight.cancelled():
                    # The leader went away: follow whoever leads now (the
                    # first follower to wake takes over), or lead ourselves.
                    if self._flights.get(key) is flight:
                        del self._flights[key]
                    await asyncio.sleep(0)
                    continue
                raise
            return (answer, "exact") if answer else None

    async def _lead(self, p: Prepared) -> tuple[str, dict, float, int, dict]:
        if p.prompt is None:
            return await self.complete(p)
        key = self._flight_key(p)
        flight: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        try:
            result = await self.complete(p)
        except asyncio.CancelledError:
            flight.cancel()
            raise
        except BaseException as exc:
            flight.set_exception(exc)
            flight.exception()  # retrieved, even when nobody follows
            raise
        else:
            flight.set_result(result[0])
            return result
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]

    async def respond(self, p: Prepared, fmt: Literal["chat", "openai"]) -> Response:
        hit = await self.lookup(p)
        if hit is None:
            hit = await self._follow(p)
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        headers = {"X-LLMedge-Backend": self.backend.name}
        if hit is not None:
            answer, kind = hit
            usage = self._usage(p.prompt_tokens, self.backend.count_tokens(p.model, answer))
            self.saved_by_cache.record(p.model, usage["prompt_tokens"], usage["completion_tokens"])
            headers.update({"X-LLMedge-Cache": kind, "X-LLMedge-Upstream": "cache"})
            if p.stream:
                return self._sse(replay(answer), p, fmt, cid, headers, kind, lambda: (usage, 0.0))
            return self._json(fmt, cid, p, answer, kind, usage, 0.0, None, headers)
        headers["X-LLMedge-Cache"] = "none"
        if not p.stream:
            answer, usage, cost, up, data = await self._lead(p)
            headers["X-LLMedge-Upstream"] = str(up)
            return self._json(fmt, cid, p, answer, "none", usage, cost, up, headers, data)
        events, up = await self.open_stream(p)
        upstream_usage = events.usage
        headers["X-LLMedge-Upstream"] = str(up)
        parts: list[str] = []
        ending = _Ending()

        recorded: list[tuple[dict, float]] = []

        async def texts() -> AsyncIterator[str]:
            try:
                async for event in events:
                    text = event_content(event)
                    ending.see(event)
                    if text:
                        parts.append(text)
                        yield text
                text = "".join(parts)
                if text and _completed(p, ending.reason, ending.tool_calls):
                    await self._store(p, text)
            except llmedge.UpstreamError as exc:  # reported to the client in-band
                raise llmedge.UpstreamError(_stream_failure(exc)) from None
            finally:
                try:
                    await events.aclose()
                finally:
                    # A stream cut by the upstream or abandoned by the client
                    # was still served up to here: cost what was received.
                    if parts or upstream_usage:
                        finish()

        def finish() -> tuple[dict, float]:
            if not recorded:
                recorded.append(self.record(p, upstream_usage or None, "".join(parts)))
            return recorded[0]

        if fmt == "openai":  # a proxy: the upstream's chunks as they are
            return self._passthrough_sse(events, p, headers, parts, ending, finish)
        return self._sse(texts(), p, fmt, cid, headers, "none", finish)

    def _passthrough_sse(self, events, p, headers, parts, ending, finish) -> Response:  # type: ignore[no-untyped-def]
        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in _body():
                    yield chunk
            finally:
                await events.aclose()

        async def _body() -> AsyncIterator[bytes]:
            try:
                async for event in events:
                    ending.see(event)
                    parts.append(event_content(event))
                    if event.get("usage") and not event.get("choices") and not p.include_usage:
                        continue  # usage was asked for by us, not by the client
                    yield sse_event(event)
            except Exception as exc:  # the status is sent: report in-band, no [DONE]
                finish()  # what was received was served: cost it
                err = openai_error_body(
                    f"upstream stream failed: {_stream_failure(exc)}",
                    "upstream_error",
                    "stream_error",
                )
                yield sse_event(err, event="error")
                return
            except BaseException:  # the client went away (cancelled)
                finish()
                raise
            finish()
            text = "".join(parts)
            if text and _completed(p, ending.reason, ending.tool_calls):
                await self._store(p, text)
            yield b"data: [DONE]\n\n"

        hdrs = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers}
        return StreamingResponse(body(), media_type="text/event-stream", headers=hdrs)

    def _sse(self, chunks, p, fmt, cid, headers, kind, finish) -> Response:  # type: ignore[no-untyped-def]
        def final() -> dict[str, Any]:
            usage, cost = finish()
            if fmt == "openai":
                return {"usage": usage} if p.include_usage else {}
            return {"cached": kind, "model": p.model, "usage": usage, "cost": cost}

        s = self.settings
        return sse_response(
            chunks,
            format="openai" if fmt == "openai" else "text",
            model=p.model,
            every=s.sse_every,
            max_delay=s.sse_max_delay,
            completion_id=cid,
            final=final,
            headers=headers,
        )

    def _json(self, fmt, cid, p, answer, kind, usage, cost, up, headers, data=None) -> Response:  # type: ignore[no-untyped-def]
        if data is not None and fmt == "openai":  # the upstream's completion as it is
            body: dict[str, Any] = data
        elif fmt == "chat":
            body = {
                "answer": answer,
                "cached": kind,
                "model": p.model,
                "usage": usage,
                "cost": cost,
                "upstream": None if up is None else self.labels[up],
            }
        else:
            body = {
                "id": cid,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": p.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        return JSONResponse(body, headers=headers)


def _stream_failure(exc: Exception) -> str:
    """A stream's failure for the client: the upstream's label and the kind,
    not the error's own text (which may carry an address); that is logged."""
    log.warning("upstream stream failed: %r", exc)
    return describe(exc) if isinstance(exc, llmedge.UpstreamError) else "stream failed"


class _Ending:
    """How a streamed answer ended, from its events: whether it called a
    tool, and its finish reason."""

    def __init__(self) -> None:
        self.tool_calls = False
        self.reason: Any = None

    def see(self, event: dict[str, Any]) -> None:
        for c in event.get("choices") or ():
            delta = c.get("delta") or {}
            if delta.get("tool_calls") or delta.get("function_call"):
                self.tool_calls = True
            if c.get("finish_reason"):
                self.reason = c["finish_reason"]


class _Passthrough(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__("upstream client error")
        self.response = response


# ---------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()))
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # The request's own values ("input", "ctx") are not echoed back: they may
    # be large, and may not even be encodable (a lone surrogate).
    errors = [
        {k: v for k, v in e.items() if k not in ("input", "ctx", "url")} for e in exc.errors()
    ]
    errors = jsonable_encoder(errors)
    body = openai_error_body(_validation_message(errors), code="validation_error")
    body["detail"] = errors
    return JSONResponse(body, status_code=422)


async def _on_passthrough(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _Passthrough)
    return exc.response


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    service = Service(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await service.router.aclose()
        close_embedder = getattr(service.embedder, "close", None)
        if close_embedder is not None:
            close_embedder()
        if service.store is not None:
            service.store.close()

    app = FastAPI(title="llmedge reference chat service", lifespan=lifespan)
    app.state.service = service
    # the embeddings service's breaker too: while it is open the semantic tier is off
    embedder_breaker = getattr(service.embedder, "breaker", None)
    monitor = Monitor(
        breakers=[*service.router.breakers, *([embedder_breaker] if embedder_breaker else [])],
        caches={"chat": service.backend.cache},
        costs={
            "spent": service.costs,
            "saved_by_cache": service.saved_by_cache,
            "saved_by_optimizer": service.saved_by_optimizer,
        },
        rate_limits=[service.rate_limit] if service.rate_limit else [],
        routers={"chat": service.router},
        stores={"redis": service.store} if service.store else None,
    )
    app.state.monitor = monitor
    # inside the monitor's middleware, so that its 4xx are counted too
    app.add_middleware(LimitsMiddleware, limits=settings.limits())
    monitor.install(app)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(_Passthrough, _on_passthrough)
    deps = [Depends(service.rate_limit)] if service.rate_limit else []

    @app.post("/chat", dependencies=deps)
    async def chat(body: ChatBody) -> Response:
        model = body.model or settings.model
        messages = [
            {"role": "system", "content": settings.system_prompt},
            *(m.model_dump() for m in body.history),
            {"role": "user", "content": body.question},
        ]
        params = {"temperature": body.temperature, "max_tokens": body.max_tokens}
        p = service.prepare(
            model=model, messages=messages, stream=body.stream, params=params, include_usage=True
        )
        return await service.respond(p, "chat")

    @app.post("/v1/chat/completions", dependencies=deps)
    async def completions(body: CompletionBody) -> Response:
        raw = body.model_dump(exclude_none=True)
        messages = raw.pop("messages")
        model = raw.pop("model")
        stream = raw.pop("stream", False)
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        p = service.prepare(
            model=model, messages=messages, stream=stream, params=raw, include_usage=include_usage
        )
        return await service.respond(p, "openai")

    return app

"""The rate-limit dependency: :class:`RateLimit`, keyed by API key or client
address, on llmedge's Rust rate limiters."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import Request

import llmedge
from llmedge.fastapi.errors import OpenAIError

__all__ = ["RateLimit", "client_key", "estimate_request_tokens"]


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
        if getattr(self.limiter, "shared", False) and hasattr(self.limiter, "acquire_async"):
            denied = await self._decide_shared(key, costs)
        else:
            denied = self._decide(key, costs)
        if denied is None:
            with self._lock:
                self.granted += 1
            return key
        binding, retry = denied
        self._count(binding)
        seconds = max(1, math.ceil(retry))
        raise OpenAIError(
            429,
            f"Rate limit reached for {binding} on {self.name!r}: try again in {seconds}s",
            type=binding,
            code="rate_limit_exceeded",
            headers={"Retry-After": str(seconds)},
        )

    async def _decide_shared(self, key: str, costs: dict[str, int]) -> tuple[str, float] | None:
        """:meth:`_decide` for a limiter on a store: the Redis round trip is
        awaited on the loop (``acquire_async`` without waiting), never run on
        it; only a denial's binding limit, which reads ``available``, takes a
        worker thread."""
        try:
            if self._single:
                await self.limiter.acquire_async(key, costs["requests"], timeout=0)
            else:
                await self.limiter.acquire_async(key, timeout=0, **costs)
            return None
        except llmedge.RateLimitExceeded as exc:
            if self._single:
                return "requests", exc.retry_after
            return await asyncio.to_thread(self._binding, key, costs), exc.retry_after

    def _decide(self, key: str, costs: dict[str, int]) -> tuple[str, float] | None:
        """None when granted, else (the binding limit, seconds to wait)."""
        if self._single:
            if self.limiter.try_acquire(key, costs["requests"]):
                return None
            return "requests", self.limiter.retry_after(key, costs["requests"])
        if self.limiter.try_acquire(key, **costs):
            return None
        return self._binding(key, costs), self.limiter.retry_after(key, **costs)

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

"""The gateway's backend made of the pure-Python baselines, for the load tests.

The same interface as ``llmedge.gateway.backends.LlmedgeBackend`` (numpy
brute-force cache with the pure-Python hashing embedder, a
lock-around-bookkeeping breaker, token buckets, the OpenAI cookbook's token
counting with tiktoken) through thin adapters, so the gateway's request logic
is literally shared. The gateway loads it with
``LLMEDGE_SERVICE_BACKEND=baseline`` when this repository's ``benches/`` is on
``PYTHONPATH``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import types
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import llmedge
from llmedge.gateway.backends import HISTORY_LIMIT, prompt_budget

from . import cache, embed, messages, resilience

_BASELINES = types.SimpleNamespace(
    cache=cache, embed=embed, messages=messages, resilience=resilience
)


class BaselineBackend:
    name = "baseline"

    def __init__(self, *, threshold: float = 0.85, ttl: float = 3600.0, max_entries: int = 10_000):
        b = _BASELINES
        self._b = b
        if b.messages.offline_tiktoken() is None:
            raise RuntimeError("the baseline backend needs tiktoken and its vocabularies offline")
        self.cache = _BaselineCache(b, threshold=threshold, ttl=ttl, max_entries=max_entries)
        self._rules: dict[str, Any] = {}
        self._lock = threading.Lock()

    def breaker(self, name: str, *, exclude: tuple[type[BaseException], ...], **config: Any) -> Any:
        return _BaselineBreaker(
            self._b.resilience.PyBreaker(
                failure_threshold=config.get("failure_threshold", 5),
                recovery_timeout=config.get("recovery_timeout", 60.0),
            ),
            name,
            exclude,
        )

    def limiter(self, *, max_keys: int = 100_000, **limits: Any) -> Any:
        return _BaselineLimits(self._b.resilience.TokenBucket, limits, max_keys)

    def _rules_for(self, model: str) -> Any:
        rules = self._rules.get(model)
        if rules is None:
            encoding = llmedge.model_info(model)["encoding"]  # the model table is data
            rules = self._b.messages.ChatRules(model, encoding)
            with self._lock:
                self._rules[model] = rules
        return rules

    def count_messages(self, model: str, messages: list[dict[str, Any]]) -> int:
        return self._b.messages.num_tokens_from_messages(messages, self._rules_for(model))

    def count_tokens(self, model: str, text: str) -> int:
        return len(self._rules_for(model).encoding.encode_ordinary(text))

    def fit(self, model: str, messages: list[dict[str, Any]], reserve: int) -> list[dict[str, Any]]:
        """Pinned system messages, the last user message, then the newest
        history while it fits, at most HISTORY_LIMIT messages besides system."""
        rules = self._rules_for(model)
        budget = prompt_budget(llmedge.model_info(model)["context_window"], reserve)
        system = [m for m in messages if m.get("role") in ("system", "developer")]
        rest = [m for m in messages if m.get("role") not in ("system", "developer")]
        used = 3 + sum(rules.message(m) for m in system)
        last_user = max((i for i, m in enumerate(rest) if m.get("role") == "user"), default=None)
        keep: set[int] = set()
        if last_user is not None:
            used += rules.message(rest[last_user])
            keep.add(last_user)
        if used > budget:
            raise llmedge.ContextOverflowError(
                f"the pinned messages need {used} tokens, the budget is {budget}",
                required=used,
                available=budget,
            )
        for i in range(len(rest) - 1, -1, -1):
            if len(keep) >= HISTORY_LIMIT:
                break
            if i in keep:
                continue
            n = rules.message(rest[i])
            if used + n > budget:
                break
            used += n
            keep.add(i)
        return [*system, *(m for i, m in enumerate(rest) if i in keep)]

    def cost_tracker(self) -> Any:
        return _BaselineCosts()


class _BaselineCache:
    """One PyCache per partition; embedding and search off the event loop.

    Bounded as llmedge's cache is: ``max_entries`` in all partitions
    together; at the bound the partition used longest ago gives up its
    least recently used entry, and an emptied partition is dropped (a
    lookup creates none)."""

    def __init__(self, b: Any, *, threshold: float, ttl: float, max_entries: int) -> None:
        self._b = b
        self.embedder = b.embed.PyHashingEmbedder(384)
        self.threshold = threshold
        self.ttl = ttl
        self.max_entries = max_entries
        self.parts: OrderedDict[str, Any] = OrderedDict()  # least recently used first
        self.entries = 0
        self.lock = threading.Lock()
        self.counts = {"exact_hits": 0, "semantic_hits": 0, "misses": 0, "inserts": 0}
        self.counts.update(evictions=0)

    def _get(self, prompt: str, partition: str) -> tuple[Any, str] | None:
        norm = self._b.cache._normalize(prompt)
        with self.lock:
            c = self.parts.get(partition)
            exact = c is not None and norm in c.exact
        vec = None if exact or c is None else self.embedder.embed(prompt)
        with self.lock:
            c = self.parts.get(partition)
            found = None
            if c is not None:
                before = len(c)
                found = c.get(prompt, vec if vec is not None else [1.0] * 384)
                self.entries -= before - len(c)  # expired on the way
                self.parts.move_to_end(partition)
                if not len(c):
                    del self.parts[partition]
            if found is None:
                self.counts["misses"] += 1
                return None
            kind = "exact" if self._b.cache._normalize(found[0]) == norm else "semantic"
            self.counts[f"{kind}_hits"] += 1
            return found[1], kind

    async def get(self, prompt: str, partition: str) -> tuple[Any, str] | None:
        return await asyncio.to_thread(self._get, prompt, partition)

    def _set(self, prompt: str, text: Any, partition: str) -> None:
        vec = self.embedder.embed(prompt)
        with self.lock:
            c = self.parts.get(partition)
            if c is None:
                c = self.parts[partition] = self._b.cache.PyCache(
                    384, threshold=self.threshold, ttl=self.ttl, max_entries=self.max_entries
                )
            self.parts.move_to_end(partition)
            before = len(c)
            c.set(prompt, text, vec)
            self.entries += len(c) - before
            self.counts["inserts"] += 1
            while self.entries > self.max_entries:
                name, oldest = next(iter(self.parts.items()))
                oldest._remove(next(iter(oldest.lru)))
                self.entries -= 1
                self.counts["evictions"] += 1
                if not len(oldest):
                    del self.parts[name]

    async def aset(self, prompt: str, text: Any, *, partition: Any = None, **_: Any) -> None:
        await asyncio.to_thread(self._set, prompt, text, str(partition))

    def stats(self) -> dict[str, Any]:
        with self.lock:
            c = dict(self.counts)
            entries = self.entries
        hits = c["exact_hits"] + c["semantic_hits"]
        lookups = hits + c["misses"]
        return {
            "hits": hits,
            **c,
            "lookups": lookups,
            "hit_rate": hits / lookups if lookups else 0.0,
            "guard_rejections": 0,
            "entries": entries,
            "partitions": len(self.parts),
        }


class _BaselineBreaker:
    """The baseline PyBreaker behind llmedge's breaker interface."""

    def __init__(self, inner: Any, name: str, exclude: tuple[type[BaseException], ...]) -> None:
        self.inner = inner
        self.name = name
        self.exclude = exclude
        self.listeners: list[Callable[[str, str, str], Any]] = []
        self.counts = {"calls": 0, "successes": 0, "failures": 0, "rejections": 0}
        self.lock = threading.Lock()

    @property
    def state(self) -> str:
        return self.inner.state

    def add_listener(self, fn: Callable[[str, str, str], Any]) -> None:
        self.listeners.append(fn)

    def _admit(self) -> bool:
        before = self.inner.state
        try:
            probe = self.inner._admit()
        except self._b_open():
            with self.lock:
                self.counts["rejections"] += 1
            retry = max(0.0, self.inner.opened_at + self.inner.recovery_timeout - time.monotonic())
            raise llmedge.CircuitOpenError(
                f"circuit {self.name!r} is open", name=self.name, retry_after=retry
            ) from None
        self._notify(before)
        with self.lock:
            self.counts["calls"] += 1
        return probe

    def _b_open(self) -> type[BaseException]:
        return resilience.BreakerOpen

    def _record(self, probe: bool, exc: BaseException | None) -> None:
        failed = exc is not None and not isinstance(exc, self.exclude)
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            if probe:  # counts as nothing: hand the probe back
                with self.inner.lock:
                    self.inner.probing = False
            return
        before = self.inner.state
        self.inner._record(probe, failed)
        with self.lock:
            self.counts["failures" if failed else "successes"] += 1
        self._notify(before)

    def _notify(self, before: str) -> None:
        after = self.inner.state
        if after != before:
            for fn in list(self.listeners):
                with contextlib.suppress(Exception):
                    fn(self.name, before, after)

    # The permit protocol llmedge.Router drives its breakers with.
    def _acquire(self) -> bool:
        return self._admit()

    def _on_success(self, probe: bool) -> None:
        self._record(probe, None)

    def _on_error(self, probe: bool, exc: BaseException) -> None:
        self._record(probe, exc)

    def _release(self, probe: bool) -> None:
        self._record(probe, asyncio.CancelledError())

    def metrics(self) -> dict[str, Any]:
        with self.lock:
            c = dict(self.counts)
        state = self.inner.state
        retry = 0.0
        if state == "open":
            retry = max(0.0, self.inner.opened_at + self.inner.recovery_timeout - time.monotonic())
        return {
            "name": self.name,
            "state": state,
            **c,
            "consecutive_failures": self.inner.failures,
            "failure_rate": c["failures"] / c["calls"] if c["calls"] else 0.0,
            "retry_after": retry,
        }


class _BaselineLimits:
    """Token buckets for requests and tokens, charged together or not at all."""

    def __init__(
        self, bucket: Any, limits: dict[str, tuple[Any, ...]], max_keys: int = 100_000
    ) -> None:
        self.buckets = {}
        self.limits = {}
        for name, spec in limits.items():
            rate, per, *rest = spec
            burst = rest[0] if rest else None
            self.buckets[name] = bucket(rate, per=per, burst=burst, max_keys=max_keys)
            self.limits[name] = (float(rate), float(per), int(self.buckets[name].burst))
        self.lock = threading.Lock()

    def _levels(self, key: str, now: float) -> dict[str, float]:
        return {name: b.level(key, now) for name, b in self.buckets.items()}

    def try_acquire(self, key: str = "", **costs: int) -> bool:
        now = time.monotonic()
        with self.lock:
            levels = self._levels(key, now)
            ok = all(levels[n] >= costs.get(n, 0) for n in self.buckets)
            for name, b in self.buckets.items():
                b.store(key, levels[name] - (costs.get(name, 0) if ok else 0), now)
            return ok

    def retry_after(self, key: str = "", **costs: int) -> float:
        now = time.monotonic()
        with self.lock:
            levels = self._levels(key, now)
        wait = 0.0
        for name, b in self.buckets.items():
            need = costs.get(name, 0) - levels[name]
            if need > 0:
                wait = max(wait, need / b.fill)
        return wait

    def __len__(self) -> int:
        with self.lock:
            return len(set().union(*(b.buckets for b in self.buckets.values())))

    def available(self, key: str = "") -> dict[str, int]:
        with self.lock:
            return {n: math.floor(v) for n, v in self._levels(key, time.monotonic()).items()}


class _BaselineCosts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.models: dict[str, dict[str, Any]] = {}

    def record(
        self, model: str, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0
    ) -> float:
        info = llmedge.model_info(model)
        cached_price = info.get("cached_input_price") or info["input_price"]
        cost = (
            (input_tokens - cached_input_tokens) * info["input_price"]
            + cached_input_tokens * cached_price
            + output_tokens * info["output_price"]
        ) / 1e6
        with self.lock:
            row = self.models.setdefault(
                model,
                {
                    "requests": 0,
                    "input_tokens": 0,
                    "cached_input_tokens": 0,
                    "output_tokens": 0,
                    "cost": 0.0,
                },
            )
            row["requests"] += 1
            row["input_tokens"] += input_tokens
            row["cached_input_tokens"] += cached_input_tokens
            row["output_tokens"] += output_tokens
            row["cost"] += cost
        return cost

    def summary(self) -> dict[str, Any]:
        with self.lock:
            models = {m: dict(r) for m, r in self.models.items()}
        total = {"requests": 0, "input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0}
        cost = 0.0
        for r in models.values():
            for k in total:
                total[k] += r[k]
            cost += r["cost"]
        return {"models": models, "total": {**total, "cost": cost}}

    def reset(self) -> None:
        with self.lock:
            self.models.clear()

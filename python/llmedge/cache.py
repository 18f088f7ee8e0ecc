"""The semantic response cache: the Rust core plus its asyncio and
single-flight layer.

``SemanticCache`` subclasses the Rust class ``llmedge._core.SemanticCache``
(which holds the store, the indexes, the exact tier, bounds, statistics and
snapshots) and adds what is easier to get right in Python:

* ``aget``/``aset``/``aget_or_set``: embedding and search run in a worker
  thread, off the event loop. Concurrent ``aget`` calls on one loop are
  micro-batched: every lookup issued while a batch is in flight (or within
  the same loop iteration) joins the next batch, whose misses are embedded in
  one embedder call (``get_many``).
* ``get_or_set``/``aget_or_set``/``cached``: single-flight per (normalised
  prompt, partition): concurrent callers of one missing prompt wait for one
  computation; an exception from it is raised in every waiter.
* The verification of the error-bounded mode (``max_error_rate=``): the Rust
  core decides what is served and which hits to verify; these methods call
  the LLM for a hit drawn for verification, compare the fresh answer with
  the cached one by ``answers_match``, and report the outcome, as they do for
  the candidate a miss was refused (its fresh answer is computed anyway).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import threading
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from llmedge import _core
from llmedge._core import CacheHit, partition_key
from llmedge.errors import UpstreamClientError

__all__ = [
    "SemanticCache",
    "CacheHit",
    "partition_key",
    "exact_answers_match",
    "embedding_answers_match",
]

_MAX_BATCH = 64


def _normalised(answer: Any) -> Any:
    if isinstance(answer, str):
        return " ".join(answer.split()).casefold()
    if isinstance(answer, bytes):
        return b" ".join(answer.split()).lower()
    return answer


def exact_answers_match(cached: Any, fresh: Any) -> bool:
    """The default ``answers_match``: equal after collapsing whitespace and
    folding case (strings and bytes), plain equality for other values."""
    return bool(_normalised(cached) == _normalised(fresh))


def embedding_answers_match(
    embedder: Callable[[list[str]], Any], min_similarity: float = 0.9
) -> Callable[[Any, Any], bool]:
    """An ``answers_match`` for free-text answers: the cosine similarity of
    the two answers' embeddings (by ``embedder``, a callable on a list of
    strings returning one vector per string) at least ``min_similarity``;
    answers equal after normalisation match without an embedder call."""
    if not -1.0 <= min_similarity <= 1.0:
        raise ValueError(f"min_similarity must be in [-1, 1], got {min_similarity!r}")

    def match(cached: Any, fresh: Any) -> bool:
        if exact_answers_match(cached, fresh):
            return True
        a, b = (list(map(float, v)) for v in embedder([str(cached), str(fresh)]))
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        norm = (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5
        return norm > 0 and dot / norm >= min_similarity

    return match


class _Batcher:
    """Micro-batches the lookups of one event loop."""

    def __init__(self, cache: SemanticCache, loop: asyncio.AbstractEventLoop) -> None:
        self.cache = cache
        self.loop = loop
        self.pending: list[tuple[tuple[str, Any, Any], asyncio.Future[Any]]] = []
        self.in_flight = False
        self.scheduled = False
        self.task: asyncio.Task[None] | None = None

    def submit(self, request: tuple[str, Any, Any]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self.loop.create_future()
        self.pending.append((request, fut))
        if not self.in_flight and not self.scheduled:
            # Run after the tasks already ready in this iteration have queued
            # their lookups too.
            self.scheduled = True
            self.loop.call_soon(self._dispatch)
        return fut

    def _dispatch(self) -> None:
        self.scheduled = False
        if self.in_flight or not self.pending:
            return
        batch, self.pending = self.pending[:_MAX_BATCH], self.pending[_MAX_BATCH:]
        self.in_flight = True
        # Keep a reference: the loop holds tasks only weakly.
        self.task = self.loop.create_task(self._run(batch))

    async def _run(self, batch: list[tuple[tuple[str, Any, Any], asyncio.Future[Any]]]) -> None:
        try:
            requests = [r for r, _ in batch]
            results = await self.loop.run_in_executor(None, self.cache.get_many, requests)
            if len(batch) > 1 and any(isinstance(r, UpstreamClientError) for r in results):
                # The embeddings endpoint refused the batch for one of its
                # texts (one over the model's limit, say): ask again one by
                # one, so that the other lookups are not failed with it. A
                # failing endpoint (UpstreamError) is not retried: every
                # lookup would wait for it again.
                results = [
                    (await self.loop.run_in_executor(None, self.cache.get_many, [req]))[0]
                    if isinstance(res, UpstreamClientError)
                    else res
                    for req, res in zip(requests, results, strict=True)
                ]
            for (_, fut), res in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
        except BaseException as e:  # delivered to the waiters
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
        finally:
            self.in_flight = False
            if self.pending:
                self._dispatch()


class SemanticCache(_core.SemanticCache):
    """An LLM response cache that answers repeated and paraphrased prompts.

    See docs/cache.md. Keyword-only configuration:
    ``embedder`` (callable on a list of strings returning a 2-D float array;
    default: the built-in ``HashingEmbedder``), ``dim``, ``threshold`` (cosine
    similarity in [-1, 1]; 1.0 means exact matches only), ``ttl`` (seconds,
    None for no expiry), ``max_entries``, ``max_memory_mb``, ``guard``,
    ``index`` ("auto", "flat" or "hnsw") and ``clock`` (zero-argument callable
    returning monotonic seconds).

    With ``store=llmedge.RedisStore(...)`` and ``namespace=``, every process
    with a cache on that namespace shares what any of them learns (lookups
    stay local; see docs/cache.md): ``background_load`` (load the namespace
    after returning instead of before), ``max_shared_entries`` (entries Redis
    keeps, oldest dropped first), ``max_pending_writes`` (changes queued while
    Redis is away) and ``stream_max_len`` (events Redis keeps for followers).

    With ``max_error_rate=`` (in (0, 1)), semantic hits are served only where
    what the cache learned bounds the rate of wrong answers (``threshold``
    becomes the floor); ``answers_match(cached, fresh) -> bool`` compares the
    answers of verified hits (default ``exact_answers_match``), ``seed`` makes
    the verification draws reproducible, and ``feedback(hit, correct)``
    reports on a hit. See docs/cache.md.
    """

    def __init__(self, **_config: Any) -> None:
        # Configuration was consumed by the Rust __new__.
        self._flights: dict[str, Future[Any]] = {}
        self._flights_lock = threading.Lock()
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Batcher] = (
            weakref.WeakKeyDictionary()
        )
        self._batchers_lock = threading.Lock()

    # ---- snapshots -----------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str], **config: Any) -> SemanticCache:
        """A new cache configured by ``config`` holding the snapshot at ``path``.

        Raises ``CacheSnapshotError`` for a snapshot of another embedder or
        dimension, or a truncated or corrupted file.
        """
        cache = cls(**config)
        cache.load_snapshot(os.fspath(path))
        return cache

    # ---- asyncio -------------------------------------------------------

    def _batcher(self) -> _Batcher:
        loop = asyncio.get_running_loop()
        with self._batchers_lock:
            b = self._batchers.get(loop)
            if b is None:
                b = _Batcher(self, loop)
                self._batchers[loop] = b
            return b

    async def aget(
        self, prompt: str, *, partition: Any = None, embedding: Any = None
    ) -> CacheHit | None:
        """``get`` for asyncio: embedding and search run off the event loop,
        batched with the lookups other tasks issue at the same time."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")
        return await self._batcher().submit((prompt, partition, embedding))

    async def aset(self, prompt: str, response: Any, **kwargs: Any) -> None:
        """``set`` for asyncio: embedding and insertion run off the event loop."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, functools.partial(self.set, prompt, response, **kwargs))

    # ---- single flight -------------------------------------------------

    def _join_flight(self, key: Any) -> tuple[Future, bool]:
        """The in-flight computation for ``key``, and whether this caller leads it."""
        with self._flights_lock:
            flight = self._flights.get(key)
            if flight is not None:
                return flight, False
            flight = self._flights[key] = Future()
            return flight, True

    def _end_flight(self, key: Any) -> None:
        with self._flights_lock:
            self._flights.pop(key, None)

    # ---- verification (error-bounded mode) ----------------------------

    def _matches(self, cached: Any, fresh: Any) -> bool:
        match = self.answers_match or exact_answers_match
        try:
            result = match(cached, fresh)
        except Exception as e:
            raise RuntimeError(
                f"answers_match raised {type(e).__name__}: {e} (nothing was recorded)"
            ) from e
        if type(result).__name__ not in ("bool", "bool_"):
            raise TypeError(
                f"answers_match must return a bool, got {type(result).__name__} "
                "(nothing was recorded)"
            )
        return bool(result)

    def _report(self, hit: CacheHit, fresh: Any, *, probe: bool) -> None:
        """Compares ``fresh`` with the answer of ``hit`` (served and drawn
        for verification, or refused: ``probe``) and records the outcome."""
        self._verified(hit, self._matches(hit.response, fresh), probe=probe)

    async def _areport(self, hit: CacheHit, fresh: Any, *, probe: bool) -> None:
        """``_report`` for asyncio: a user's ``answers_match`` (an embedder
        call, say) runs in a worker thread, never on the event loop."""
        if self.answers_match is None:
            self._report(hit, fresh, probe=probe)
        else:
            await asyncio.to_thread(functools.partial(self._report, hit, fresh, probe=probe))

    def _verifying(self) -> bool:
        return self.max_error_rate is not None

    def get_or_set(
        self,
        prompt: str,
        compute: Callable[[], Any],
        *,
        partition: Any = None,
        embedding: Any = None,
        ttl: float | None = None,
        metadata: Any = None,
        tags: Any = (),
    ) -> Any:
        """The cached response for ``prompt``, or ``compute()`` stored and
        returned. Concurrent callers for one missing prompt and partition wait
        for a single ``compute()``.

        In the error-bounded mode, a hit drawn for verification calls
        ``compute()`` too and returns its answer; the comparison with the
        cached one (and, on a miss, with the refused candidate's) is what
        the cache learns from."""
        hit, probe = self._lookup(prompt, partition=partition, embedding=embedding)
        if hit is not None:
            if not hit.verify:
                return hit.response
            fresh = compute()
            self._report(hit, fresh, probe=False)
            return fresh
        key = self.flight_key(prompt, partition=partition)
        flight, leader = self._join_flight(key)
        if not leader:
            return flight.result()
        try:
            # Another caller may have finished between our miss and our lead.
            hit, later = self._lookup(prompt, partition=partition, embedding=embedding)
            probe = later or probe
            if hit is not None:
                value = hit.response
            else:
                value = compute()
                self.set(
                    prompt,
                    value,
                    partition=partition,
                    embedding=embedding,
                    ttl=ttl,
                    metadata=metadata,
                    tags=tags,
                )
            flight.set_result(value)
        except BaseException as e:
            flight.set_exception(e)
            raise
        finally:
            self._end_flight(key)
        if hit is None and probe is not None:
            self._report(probe, value, probe=True)
        return value

    async def aget_or_set(
        self,
        prompt: str,
        acompute: Callable[[], Awaitable[Any]],
        *,
        partition: Any = None,
        embedding: Any = None,
        ttl: float | None = None,
        metadata: Any = None,
        tags: Any = (),
    ) -> Any:
        """``get_or_set`` for asyncio: ``acompute`` is an async callable (or
        returns an awaitable). Single-flight across tasks and threads; in the
        error-bounded mode, verification as ``get_or_set`` does it."""

        async def call() -> Any:
            result = acompute()
            return await result if inspect.isawaitable(result) else result

        hit, probe = await self._alookup(prompt, partition, embedding)
        if hit is not None:
            if not hit.verify:
                return hit.response
            fresh = await call()
            await self._areport(hit, fresh, probe=False)
            return fresh
        key = self.flight_key(prompt, partition=partition)
        flight, leader = self._join_flight(key)
        if not leader:
            return await asyncio.wrap_future(flight)
        try:
            hit, later = await self._alookup(prompt, partition, embedding)
            probe = later or probe
            if hit is not None:
                value = hit.response
            else:
                value = await call()
                await self.aset(
                    prompt,
                    value,
                    partition=partition,
                    embedding=embedding,
                    ttl=ttl,
                    metadata=metadata,
                    tags=tags,
                )
            flight.set_result(value)
        except BaseException as e:
            flight.set_exception(e)
            # A waiter that never looks would log "exception never retrieved".
            flight.exception()
            raise
        finally:
            self._end_flight(key)
        if hit is None and probe is not None:
            await self._areport(probe, value, probe=True)
        return value

    async def _alookup(
        self, prompt: str, partition: Any, embedding: Any
    ) -> tuple[CacheHit | None, CacheHit | None]:
        """``_lookup`` off the event loop: batched with other lookups when no
        candidate can be refused, on its own in the error-bounded mode."""
        if not self._verifying():
            return await self.aget(prompt, partition=partition, embedding=embedding), None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None,
            functools.partial(self._lookup, prompt, partition=partition, embedding=embedding),
        )

    def cached(
        self,
        *,
        prompt: Callable[..., str] | None = None,
        partition: Any = None,
        ttl: float | None = None,
        tags: Any = (),
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator caching a sync or async function's result by prompt.

        ``prompt(*args, **kwargs)`` builds the prompt (default: the first
        positional argument, which must be a str); ``partition`` is a value or
        a callable ``(*args, **kwargs) -> partition``.
        """

        def prompt_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            if prompt is not None:
                return prompt(*args, **kwargs)
            if args and isinstance(args[0], str):
                return args[0]
            if "prompt" in kwargs and isinstance(kwargs["prompt"], str):
                return kwargs["prompt"]
            raise TypeError(
                "cached function needs a str prompt as first argument (or pass prompt=)"
            )

        def partition_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            return partition(*args, **kwargs) if callable(partition) else partition

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    return await self.aget_or_set(
                        prompt_of(args, kwargs),
                        lambda: fn(*args, **kwargs),
                        partition=partition_of(args, kwargs),
                        ttl=ttl,
                        tags=tags,
                    )

                return async_wrapper

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return self.get_or_set(
                    prompt_of(args, kwargs),
                    lambda: fn(*args, **kwargs),
                    partition=partition_of(args, kwargs),
                    ttl=ttl,
                    tags=tags,
                )

            return wrapper

        return decorate

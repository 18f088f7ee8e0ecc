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

__all__ = ["SemanticCache", "CacheHit", "partition_key"]

_MAX_BATCH = 64


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
        for a single ``compute()``."""
        hit = self.get(prompt, partition=partition, embedding=embedding)
        if hit is not None:
            return hit.response
        key = self.flight_key(prompt, partition=partition)
        flight, leader = self._join_flight(key)
        if not leader:
            return flight.result()
        try:
            # Another caller may have finished between our miss and our lead.
            hit = self.get(prompt, partition=partition, embedding=embedding)
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
            return value
        except BaseException as e:
            flight.set_exception(e)
            raise
        finally:
            self._end_flight(key)

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
        returns an awaitable). Single-flight across tasks and threads."""
        hit = await self.aget(prompt, partition=partition, embedding=embedding)
        if hit is not None:
            return hit.response
        key = self.flight_key(prompt, partition=partition)
        flight, leader = self._join_flight(key)
        if not leader:
            return await asyncio.wrap_future(flight)
        try:
            hit = await self.aget(prompt, partition=partition, embedding=embedding)
            if hit is not None:
                value = hit.response
            else:
                result = acompute()
                value = await result if inspect.isawaitable(result) else result
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
            return value
        except BaseException as e:
            flight.set_exception(e)
            # A waiter that never looks would log "exception never retrieved".
            flight.exception()
            raise
        finally:
            self._end_flight(key)

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

"""Answering with server-sent events: :func:`sse_response` (plain JSON events or
OpenAI ``chat.completion.chunk`` events) over text chunks coalesced by
:func:`coalesce`, :func:`replay` of a cached answer, and
:func:`cache_on_complete`, which stores a streamed answer only once it
finished. Reading an upstream's stream is :mod:`llmedge.sse`'s job."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from fastapi.responses import StreamingResponse

from llmedge._aio import uncancellable
from llmedge.fastapi.errors import openai_error_body

__all__ = ["coalesce", "replay", "cache_on_complete", "sse_event", "sse_response"]

log = logging.getLogger("llmedge")


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
            await uncancellable(_aclose(it))
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
        # Also when the client left: the chunks' source (an upstream
        # connection) is closed now, not when the garbage collector runs.
        await uncancellable(_stop(pending, it))


async def _stop(pending: asyncio.Future[str] | None, it: Any) -> None:
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

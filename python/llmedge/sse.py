"""Reading server-sent event streams: the one parser llmedge uses.

Streams in OpenAI's framing (``data: {json}`` events, ended by ``data: [DONE]``)
are read here, whoever reads them: the FastAPI helpers
(:func:`parse_openai_stream`, re-exported by ``llmedge.fastapi``), the
reference service's proxy, the demo and the load tests. Needs nothing beyond
the standard library.

:func:`iter_events` and :func:`aiter_events` give the JSON events of a stream's
lines (sync and async) and stop at ``data: [DONE]``; a stream that ends
without it, sends an event with an ``error`` key, or a payload that is not a
JSON object raises :class:`~llmedge.errors.IncompleteStreamError`, so a cut
stream is never mistaken for a complete answer. :func:`iter_lines` splits a
body read in chunks into lines.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from typing import Any

from llmedge.errors import IncompleteStreamError

__all__ = [
    "DONE",
    "iter_lines",
    "iter_events",
    "aiter_events",
    "parse_openai_events",
    "parse_openai_stream",
    "event_content",
    "IncompleteStreamError",
]

#: The payload of the last event of a complete stream.
DONE = "[DONE]"


def _event(line: str) -> dict[str, Any] | str | None:
    """One line's JSON event, :data:`DONE`, or None for a line without data
    (blank, comment, ``event:``, ``id:``)."""
    line = line.rstrip("\r")
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == DONE:
        return DONE
    try:
        event = json.loads(data)
    except json.JSONDecodeError as exc:
        raise IncompleteStreamError(f"upstream sent a malformed SSE event: {data[:200]!r}") from exc
    if not isinstance(event, dict):
        raise IncompleteStreamError(f"upstream sent a non-object SSE event: {data[:200]!r}")
    if "error" in event:
        raise IncompleteStreamError(f"upstream stream reported an error: {event['error']!r}")
    return event


def _ended_without_done() -> IncompleteStreamError:
    return IncompleteStreamError("upstream stream ended without data: [DONE]")


def iter_lines(chunks: Iterable[str | bytes]) -> Iterator[str]:
    """The lines (without their ``\\n``) of a body read in chunks of any size;
    bytes are decoded as UTF-8, a character split between chunks included."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    buffer = ""
    for chunk in chunks:
        buffer += decoder.decode(chunk) if isinstance(chunk, bytes) else chunk
        *lines, buffer = buffer.split("\n")
        yield from lines
    buffer += decoder.decode(b"", final=True)
    if buffer:
        yield buffer


def iter_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON events of an SSE stream's lines, up to ``data: [DONE]``;
    :class:`IncompleteStreamError` when the stream breaks (see the module)."""
    for line in lines:
        event = _event(line)
        if isinstance(event, dict):
            yield event
        elif event == DONE:
            return
    raise _ended_without_done()


async def aiter_events(
    lines: AsyncIterable[str],
    *,
    on_usage: Callable[[dict[str, Any]], Any] | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """:func:`iter_events` for lines read asynchronously
    (``httpx.Response.aiter_lines()``); ``on_usage(usage)`` is called with an
    event's ``usage`` when it has one."""
    async for line in lines:
        event = _event(line)
        if isinstance(event, dict):
            usage = event.get("usage")
            if usage and on_usage is not None:
                on_usage(usage)
            yield event
        elif event == DONE:
            return
    raise _ended_without_done()


def parse_openai_events(
    lines: AsyncIterable[str],
    *,
    on_usage: Callable[[dict[str, Any]], Any] | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """The parsed events (``chat.completion.chunk`` dicts) of an upstream
    OpenAI SSE stream, read from its lines (``httpx.Response.aiter_lines()``).

    ``on_usage(usage)`` is called with a usage chunk's ``usage``. A stream
    that ends without ``data: [DONE]``, sends an ``error`` event or a
    malformed one raises :class:`IncompleteStreamError`. (It is
    :func:`aiter_events`, under the name the FastAPI helpers have always had.)
    """
    return aiter_events(lines, on_usage=on_usage)


def event_content(event: Mapping[str, Any]) -> str:
    """The text content of one ``chat.completion.chunk`` (its first choice)."""
    for choice in event.get("choices") or ():
        content = (choice.get("delta") or {}).get("content")
        if isinstance(content, str):
            return content
    return ""


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

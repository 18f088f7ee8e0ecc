"""Reading an upstream's OpenAI server-sent events (no web framework needed:
the Router and ``llmedge.fastapi`` share it)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Mapping
from typing import Any

from llmedge.errors import LlmEdgeError

__all__ = ["IncompleteStreamError", "parse_openai_events", "event_content"]


class IncompleteStreamError(LlmEdgeError, ConnectionError):
    """An upstream SSE stream ended without ``data: [DONE]`` (cut mid-way)."""


async def parse_openai_events(
    lines: AsyncIterable[str],
    *,
    on_usage: Callable[[dict[str, Any]], Any] | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """The parsed events (``chat.completion.chunk`` dicts) of an upstream
    OpenAI SSE stream, read from its lines (``httpx.Response.aiter_lines()``).

    ``on_usage(usage)`` is called with a usage chunk's ``usage``. A stream
    that ends without ``data: [DONE]``, sends an ``error`` event or a
    malformed one raises :class:`IncompleteStreamError`.
    """
    async for raw in lines:
        line = raw.rstrip("\r")
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except json.JSONDecodeError as exc:
            raise IncompleteStreamError(
                f"upstream sent a malformed SSE event: {data[:200]!r}"
            ) from exc
        if not isinstance(event, dict):
            raise IncompleteStreamError(f"upstream sent a non-object SSE event: {data[:200]!r}")
        if "error" in event:
            raise IncompleteStreamError(f"upstream stream reported an error: {event['error']!r}")
        usage = event.get("usage")
        if usage and on_usage is not None:
            on_usage(usage)
        yield event
    raise IncompleteStreamError("upstream stream ended without data: [DONE]")


def event_content(event: Mapping[str, Any]) -> str:
    """The text content of one ``chat.completion.chunk`` (its first choice)."""
    for choice in event.get("choices") or ():
        content = (choice.get("delta") or {}).get("content")
        if isinstance(content, str):
            return content
    return ""

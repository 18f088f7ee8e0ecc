"""The mock's answers: a deterministic function of the model, the last user
message and a seed, so a cache hit returns exactly what the upstream would
have said; its embeddings: the hashing embedder's vectors, identical for
identical texts and close for texts that share words."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["mock_answer", "mock_embeddings", "mock_tool_call"]

# Common short English words: each is one token with its leading space in the
# OpenAI encodings, so an answer of N words streams as N chunks of one token.
_WORDS = (
    "the of and to in is it that for on with as at by from this be are was or an "
    "not but can all one has more will if so we they their which when there use "
    "your out up about time new some what its only other how most may than then "
    "also first over after two way make work well any these good each much data "
    "set run call read case point part line word long high open best real fast "
    "safe key cost rate test build keep plan step model cache token price limit"
).split()


def _last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    str(part.get("text", ""))
                    for part in content
                    if isinstance(part, Mapping) and part.get("type") == "text"
                )
    return ""


def mock_answer(
    model: str, messages: Sequence[Mapping[str, Any]], answer_tokens: int = 24, *, seed: int = 0
) -> str:
    """The answer the mock gives: words chosen by a hash of the model, the last
    user message and the seed, in sentences of six to nine words."""
    if answer_tokens < 1:
        raise ValueError(f"answer_tokens must be at least 1, got {answer_tokens!r}")
    digest = hashlib.blake2b(
        f"{seed}\0{model}\0{_last_user_text(messages)}".encode("utf-8", "surrogatepass"),
        digest_size=32,
    ).digest()
    state = int.from_bytes(digest, "little")
    words: list[str] = []
    sentence = 0
    for i in range(answer_tokens):
        state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 256)
        word = _WORDS[(state >> 128) % len(_WORDS)]
        if sentence == 0:
            word = word.capitalize()
        sentence += 1
        end = i == answer_tokens - 1 or sentence >= 6 + (state >> 64) % 4
        if end:
            word += "."
            sentence = 0
        words.append(word)
    return " ".join(words)


def _tool_name(tool: Any) -> str | None:
    if isinstance(tool, Mapping) and isinstance(tool.get("function"), Mapping):
        name = tool["function"].get("name")
        return name if isinstance(name, str) and name else None
    return None


def _argument(schema: Any, text: str) -> Any:
    kind = schema.get("type") if isinstance(schema, Mapping) else None
    if isinstance(schema, Mapping) and isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    return {
        "string": text,
        "integer": 1,
        "number": 1.0,
        "boolean": True,
        "array": [],
        "object": {},
    }.get(kind if isinstance(kind, str) else "string", text)


def mock_tool_call(
    messages: Sequence[Mapping[str, Any]], tools: Any, tool_choice: Any = None
) -> tuple[str, str] | None:
    """The tool call the mock answers with, as ``(name, arguments JSON)``, or
    None for a text answer: a call when the request offers ``tools``, unless
    ``tool_choice`` is ``"none"`` or the last message is a tool's result
    (which the model answers in text). The function called is the one
    ``tool_choice`` names, else the first; its arguments fill the schema's
    required properties (all of them when none is required): strings with the
    last user message, numbers with 1, booleans with true, enums with their
    first value. Raises ValueError on malformed ``tools``."""
    if tools is None:
        return None
    if not isinstance(tools, list) or not tools:
        raise ValueError("'tools' must be a non-empty array of tool objects")
    names = [_tool_name(t) for t in tools]
    for i, name in enumerate(names):
        if name is None:
            raise ValueError(
                f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}"
            )
    if tool_choice == "none" or (messages and messages[-1].get("role") == "tool"):
        return None
    chosen = 0
    if isinstance(tool_choice, Mapping):
        wanted = _tool_name(tool_choice)
        if wanted not in names:
            raise ValueError(f"tool_choice names {wanted!r}, which is not among tools {names!r}")
        chosen = names.index(wanted)
    function = tools[chosen]["function"]
    params = function.get("parameters")
    props = params.get("properties") if isinstance(params, Mapping) else None
    props = props if isinstance(props, Mapping) else {}
    required = params.get("required") if isinstance(params, Mapping) else None
    keys = [k for k in required if k in props] if isinstance(required, list) else list(props)
    text = _last_user_text(messages)
    arguments = {k: _argument(props[k], text) for k in keys}
    return names[chosen], json.dumps(arguments, ensure_ascii=False)  # type: ignore[return-value]


def mock_embeddings(texts: Sequence[str], dim: int) -> list[list[float]]:
    """The mock's embeddings of ``texts``: :class:`llmedge.HashingEmbedder` vectors of
    ``dim`` floats (L2-normalised), the same for the same text on every call."""
    import llmedge

    return llmedge.HashingEmbedder(dim)(list(texts))

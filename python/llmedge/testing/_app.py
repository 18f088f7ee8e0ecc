"""The mock LLM as a plain ASGI application (no framework): OpenAI's chat
completions (plain and streamed), embeddings, models and health, and the admin endpoints
(``/mock/faults``, ``/mock/config``, ``/mock/stats``, ``/mock/reset``) that
switch faults on and off at run time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from llmedge.testing._answers import mock_answer, mock_embeddings, mock_tool_call
from llmedge.testing._state import _Config, _Faults, _State

_Scope = dict[str, Any]
_Receive = Callable[[], Awaitable[dict[str, Any]]]
_Send = Callable[[dict[str, Any]], Awaitable[None]]

_ERROR_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    404: ("invalid_request_error", "not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "overloaded"),
    504: ("server_error", "timeout"),
}


#: OpenAI's limit of inputs per embeddings request, which the mock enforces too.
MAX_EMBEDDING_INPUTS = 2048
DEFAULT_EMBEDDING_DIM = 384


class _BadRequest(Exception):
    pass


def _count_text(model: str, text: str) -> int:
    import llmedge

    try:
        return llmedge.count_tokens(text, model)
    except KeyError:  # not in llmedge's model table (an embedding model): count as gpt-4o
        return llmedge.count_tokens(text, "gpt-4o")


def _usage_counts(model: str, messages: list[dict[str, Any]], answer: str) -> tuple[int, int]:
    import llmedge

    try:
        prompt = llmedge.count_messages(messages, model)
        completion = llmedge.count_tokens(answer, model)
    except KeyError:  # not in llmedge's model table: count as gpt-4o
        prompt = llmedge.count_messages(messages, "gpt-4o")
        completion = llmedge.count_tokens(answer, "gpt-4o")
    except (TypeError, ValueError) as exc:
        raise _BadRequest(f"messages: {exc}") from None
    return prompt, completion


def _parse_chat_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _BadRequest(f"the body must be a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest(f"'model' must be a non-empty string, got {model!r}")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty array of message objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _BadRequest(f"messages[{i}] must be an object with a string 'role'")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _BadRequest(f"'stream' must be a boolean, got {stream!r}")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise _BadRequest(f"'max_tokens' must be a positive integer, got {max_tokens!r}")
    return body


class _MockApp:
    """The ASGI application."""

    def __init__(self, state: _State) -> None:
        self.state = state
        self._ids = 0

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"].rstrip("/")
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            if path == "/v1/chat/completions" and method == "POST":
                await self._chat(body, receive, send)
            elif path == "/v1/embeddings" and method == "POST":
                await self._embeddings(body, receive, send)
            elif path in ("/v1/models", "/models") and method == "GET":
                await _send_json(send, 200, {"object": "list", "data": [_model_entry("mock")]})
            elif path == "/health" and method == "GET":
                await _send_json(send, 200, {"status": "ok"})
            elif path == "/mock/stats" and method == "GET":
                await _send_json(send, 200, self.state.snapshot())
            elif path == "/mock/faults" and method == "POST":
                self.state.set_faults(_json_object(body))
                await _send_json(send, 200, self.state.snapshot()["faults"])
            elif path == "/mock/config" and method == "POST":
                self.state.set_config(_json_object(body))
                await _send_json(send, 200, self.state.snapshot()["config"])
            elif path == "/mock/reset" and method == "POST":
                self.state.reset_stats()
                await _send_json(send, 200, {"reset": True})
            else:
                await _send_error(send, 404, f"no route for {method} {scope['path']}")
        except (_BadRequest, ValueError, TypeError) as exc:
            await _send_error(send, 400, str(exc))

    def _next_id(self) -> str:
        self._ids += 1
        return f"chatcmpl-mock-{self._ids}"

    async def _failed(self, fate: str, faults: _Faults, receive: _Receive, send: _Send) -> bool:
        """Answers an injected error or timeout; False when the request goes on."""
        if fate == "error":
            self.state.count_status(faults.status)
            message = f"mock upstream failure (HTTP {faults.status})"
            await _send_error(send, faults.status, message, faults.retry_after)
            return True
        if fate == "timeout":
            await _wait_or_disconnect(faults.hang, receive)
            self.state.count_status(504)
            await _send_error(send, 504, "mock upstream timed out")
            return True
        return False

    async def _chat(self, raw: bytes, receive: _Receive, send: _Send) -> None:
        body = _parse_chat_body(raw)
        model, messages, stream = body["model"], body["messages"], body.get("stream", False)
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        try:
            tool = mock_tool_call(messages, body.get("tools"), body.get("tool_choice"))
        except ValueError as exc:
            raise _BadRequest(str(exc)) from None
        fate, faults, config = self.state.decide(stream)
        if await self._failed(fate, faults, receive, send):
            return
        n = config.answer_tokens if max_tokens is None else min(config.answer_tokens, max_tokens)
        ident, created = self._next_id(), int(time.time())
        message: dict[str, Any]
        if tool is not None:
            name, arguments = tool
            self.state.count_tool_call()
            call = {"id": f"call_{ident[-12:]}", "type": "function"}
            message = {"role": "assistant", "content": None, "tool_calls": [
                {**call, "function": {"name": name, "arguments": arguments}}
            ]}  # fmt: skip
            answer, finish = arguments, "tool_calls"
            # the arguments in pieces of 8 characters, after a first delta
            # naming the call (OpenAI's streamed shape)
            pieces = [arguments[i : i + 8] for i in range(0, len(arguments), 8)]
            deltas: list[dict[str, Any]] = [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"index": 0, **call, "function": {"name": name, "arguments": ""}}
                    ],
                },  # fmt: skip
                *({"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in pieces),
            ]
        else:
            answer = mock_answer(model, messages, n, seed=config.seed)
            cut = max_tokens is not None and max_tokens < config.answer_tokens
            finish = config.finish_reason or ("length" if cut else "stop")
            message = {"role": "assistant", "content": answer}
            words = answer.split(" ")
            words = [words[0]] + [" " + w for w in words[1:]]
            deltas = [{"role": "assistant", "content": words[0]}]
            deltas += [{"content": w} for w in words[1:]]
        prompt_tokens, completion_tokens = _usage_counts(model, messages, answer)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if not stream:
            await asyncio.sleep(config.ttft + config.tpot * n)
            self.state.count_status(200)
            self.state.count_tokens(prompt_tokens, completion_tokens)
            choice = {"index": 0, "message": message, "finish_reason": finish}
            await _send_json(
                send,
                200,
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [choice],
                    "usage": usage,
                },
            )
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunk = _Chunks(ident, created, model)
        tail = chunk({}, finish)
        if include_usage:
            tail += chunk.usage(usage)
        self.state.count_status(200)
        self.state.stream_opened()
        disconnected = False
        try:
            # The client may leave mid-stream (uvicorn's send() does not say
            # so): race the stream against the disconnect, and count it.
            sender = asyncio.ensure_future(
                self._stream(send, chunk, deltas, tail, usage, fate, config)
            )
            waiter = asyncio.ensure_future(_disconnect(receive))
            try:
                await asyncio.wait({sender, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                if not sender.done():
                    disconnected = True
                    sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
        finally:
            self.state.stream_closed(disconnected)

    async def _embeddings(self, raw: bytes, receive: _Receive, send: _Send) -> None:
        body = _json_object(raw)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequest(f"'model' must be a non-empty string, got {model!r}")
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts:
            raise _BadRequest("'input' must be a string or a non-empty array of strings")
        if len(texts) > MAX_EMBEDDING_INPUTS:
            raise _BadRequest(
                f"'input' holds {len(texts)} items; at most {MAX_EMBEDDING_INPUTS} per request"
            )
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text:
                raise _BadRequest(f"input[{i}] must be a non-empty string, got {text!r}")
        dim = body.get("dimensions", DEFAULT_EMBEDDING_DIM)
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 8192:
            raise _BadRequest(f"'dimensions' must be an integer in [1, 8192], got {dim!r}")
        if body.get("encoding_format", "float") != "float":
            raise _BadRequest(
                f"'encoding_format' must be 'float' (the mock serves no other), "
                f"got {body.get('encoding_format')!r}"
            )
        fate, faults, config = self.state.decide(False, embedding_inputs=len(texts))
        if await self._failed(fate, faults, receive, send):
            return
        vectors = mock_embeddings(texts, dim)
        tokens = sum(_count_text(model, t) for t in texts)
        if config.ttft:
            await asyncio.sleep(config.ttft)
        self.state.count_status(200)
        self.state.count_tokens(tokens, 0)
        await _send_json(
            send,
            200,
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": v}
                    for i, v in enumerate(vectors)
                ],
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    async def _stream(
        self,
        send: _Send,
        chunk: _Chunks,
        deltas: list[dict[str, Any]],
        tail: bytes,
        usage: dict[str, int],
        fate: str,
        config: _Config,
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        cut = len(deltas) // 2 if fate == "break" else None
        if config.ttft:
            await asyncio.sleep(config.ttft)
        for i, delta in enumerate(deltas):
            if cut is not None and i == cut:
                # End the response without a finish reason or [DONE]: the
                # client sees a stream that stopped half-way.
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if i and config.tpot:
                await asyncio.sleep(config.tpot)
            await send({"type": "http.response.body", "body": chunk(delta), "more_body": True})
        self.state.count_tokens(usage["prompt_tokens"], usage["completion_tokens"])
        await send(
            {"type": "http.response.body", "body": tail + b"data: [DONE]\n\n", "more_body": False}
        )


class _Chunks:
    """One streamed completion's ``chat.completion.chunk`` events."""

    def __init__(self, ident: str, created: int, model: str) -> None:
        self.head = {"id": ident, "object": "chat.completion.chunk", "created": created}
        self.model = model

    def __call__(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return self._event({**self.head, "model": self.model, "choices": [choice]})

    def usage(self, usage: dict[str, int]) -> bytes:
        return self._event({**self.head, "model": self.model, "choices": [], "usage": usage})

    @staticmethod
    def _event(payload: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def _disconnect(receive: _Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _model_entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "llmedge-mock"}


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw or b"{}")
    except ValueError as exc:
        raise _BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _BadRequest(f"the body must be a JSON object, got {type(value).__name__}")
    return value


async def _wait_or_disconnect(seconds: float, receive: _Receive) -> None:
    """Sleep, but stop early when the client goes away."""

    waiter = asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait_for(asyncio.shield(waiter), timeout=seconds)
    except asyncio.TimeoutError:
        pass
    finally:
        waiter.cancel()


async def _send_json(
    send: _Send, status: int, payload: Any, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _send_error(send: _Send, status: int, message: str, retry_after: float = 1.0) -> None:
    kind, code = _ERROR_TYPES.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", str(status))
    )
    headers = [(b"retry-after", f"{retry_after:g}".encode())] if status in (429, 503) else []
    await _send_json(
        send, status, {"error": {"message": message, "type": kind, "code": code}}, headers
    )

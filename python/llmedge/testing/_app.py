"""The mock LLM as a plain ASGI application (no framework): OpenAI's chat
completions (plain and streamed), embeddings, models and health, and the admin endpoints
(``/mock/faults``, ``/mock/config``, ``/mock/stats``, ``/mock/reset``) that
switch faults on and off at run time."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from llmedge.testing._answers import mock_answer, mock_embeddings
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
        fate, faults, config = self.state.decide(stream)
        if await self._failed(fate, faults, receive, send):
            return
        n = config.answer_tokens if max_tokens is None else min(config.answer_tokens, max_tokens)
        answer = mock_answer(model, messages, n, seed=config.seed)
        finish = (
            "length" if max_tokens is not None and max_tokens < config.answer_tokens else "stop"
        )
        prompt_tokens, completion_tokens = _usage_counts(model, messages, answer)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        ident, created = self._next_id(), int(time.time())
        if not stream:
            await asyncio.sleep(config.ttft + config.tpot * n)
            self.state.count_status(200)
            self.state.count_tokens(prompt_tokens, completion_tokens)
            await _send_json(
                send,
                200,
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer},
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                },
            )
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        await self._stream(
            send, ident, created, model, answer, finish, usage, include_usage, fate, config
        )

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
        ident: str,
        created: int,
        model: str,
        answer: str,
        finish: str,
        usage: dict[str, int],
        include_usage: bool,
        fate: str,
        config: _Config,
    ) -> None:
        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            payload = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

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
        self.state.count_status(200)
        pieces = answer.split(" ")
        pieces = [pieces[0]] + [" " + p for p in pieces[1:]]
        cut = len(pieces) // 2 if fate == "break" else None
        if config.ttft:
            await asyncio.sleep(config.ttft)
        for i, piece in enumerate(pieces):
            if cut is not None and i == cut:
                # End the response without a finish reason or [DONE]: the
                # client sees a stream that stopped half-way.
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if i and config.tpot:
                await asyncio.sleep(config.tpot)
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            await send({"type": "http.response.body", "body": chunk(delta), "more_body": True})
        tail = chunk({}, finish)
        if include_usage:
            payload = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            tail += b"data: " + json.dumps(payload).encode() + b"\n\n"
        self.state.count_tokens(usage["prompt_tokens"], usage["completion_tokens"])
        await send(
            {"type": "http.response.body", "body": tail + b"data: [DONE]\n\n", "more_body": False}
        )


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

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    waiter = asyncio.ensure_future(disconnected())
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

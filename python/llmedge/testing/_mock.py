"""An OpenAI-compatible mock LLM upstream for tests and load tests.

The mock is a plain ASGI application (no framework), served by uvicorn in a
background thread (:class:`MockLLM`) or in a subprocess (:func:`spawn_mock`).
Its answers are a deterministic function of the model and the last user
message, so a cache hit returns exactly what the upstream would have said.
Latency (time to first token, time per token) and faults (error rate, HTTP 429
and 5xx, hanging requests, streams cut mid-way, failing everything) are set at
run time, from Python or over HTTP (``POST /mock/faults``), which is how load
tests switch a subprocess mock into a failure and back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["MockLLM", "MockProcess", "mock_answer", "spawn_mock"]

_Scope = dict[str, Any]
_Receive = Callable[[], Awaitable[dict[str, Any]]]
_Send = Callable[[dict[str, Any]], Awaitable[None]]

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

_ERROR_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    404: ("invalid_request_error", "not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "overloaded"),
    504: ("server_error", "timeout"),
}


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


@dataclass
class _Faults:
    error_rate: float = 0.0
    status: int = 500
    timeout_rate: float = 0.0
    hang: float = 30.0
    break_rate: float = 0.0
    fail_all: bool = False
    retry_after: float = 1.0

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> _Faults:
        _reject_unknown(values, cls, "fault")
        faults = cls(**values)
        for name in ("error_rate", "timeout_rate", "break_rate"):
            _check_number(name, getattr(faults, name), 0.0, 1.0, "a number in [0, 1]")
        _check_number("status", faults.status, 400, 599, "an HTTP error status in 400..599", int)
        _check_number("hang", faults.hang, 0.0, 3600.0, "seconds in [0, 3600]")
        _check_number("retry_after", faults.retry_after, 0.0, 3600.0, "seconds in [0, 3600]")
        if not isinstance(faults.fail_all, bool):
            raise ValueError(f"fail_all must be a bool, got {faults.fail_all!r}")
        return faults


@dataclass
class _Config:
    ttft: float = 0.0
    tpot: float = 0.0
    answer_tokens: int = 24
    seed: int = 0

    def validate(self) -> None:
        for name in ("ttft", "tpot"):
            _check_number(name, getattr(self, name), 0.0, 60.0, "seconds in [0, 60]")
        _check_number("answer_tokens", self.answer_tokens, 1, 100_000, "an int in [1, 100000]", int)
        _check_number("seed", self.seed, -(2**63), 2**63, "an int", int)


def _check_number(
    name: str,
    value: Any,
    low: float,
    high: float,
    accepted: str,
    kinds: type | tuple[type, ...] = (int, float),
) -> None:
    """Raise a ValueError naming ``name``, the value and what is accepted
    unless ``value`` is of ``kinds`` (never a bool) and within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        raise ValueError(f"{name} must be {accepted}, got {value!r}")


def _reject_unknown(values: Mapping[str, Any], cls: type, what: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} setting(s) {unknown}; accepted: {sorted(known)}")


@dataclass
class _Stats:
    requests: int = 0
    streams: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    timeouts: int = 0
    breaks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Spread:
    """Spreads a rate evenly over requests: with rate r, exactly floor(n * r)
    of the first n requests are picked, so "half the requests" is every other
    one rather than a coin flip."""

    def __init__(self) -> None:
        self.count = 0

    def pick(self, rate: float) -> bool:
        before = math.floor(self.count * rate)
        self.count += 1
        return math.floor(self.count * rate) > before


class _State:
    def __init__(self, config: _Config) -> None:
        config.validate()
        self.lock = threading.Lock()
        self.config = config
        self.faults = _Faults()
        self.stats = _Stats()
        self._errors = _Spread()
        self._timeouts = _Spread()
        self._breaks = _Spread()

    def set_faults(self, values: Mapping[str, Any]) -> None:
        faults = _Faults.parse(values)
        with self.lock:
            self.faults = faults
            self._errors, self._timeouts, self._breaks = _Spread(), _Spread(), _Spread()

    def set_config(self, values: Mapping[str, Any]) -> None:
        _reject_unknown(values, _Config, "config")
        with self.lock:
            config = _Config(**{**asdict(self.config), **values})
        config.validate()
        with self.lock:
            self.config = config

    def decide(self, stream: bool) -> tuple[str, _Faults, _Config]:
        """One request's fate: "ok", "error", "timeout" or "break"."""
        with self.lock:
            faults, config = self.faults, self.config
            self.stats.requests += 1
            if stream:
                self.stats.streams += 1
            if faults.fail_all or self._errors.pick(faults.error_rate):
                return "error", faults, config
            if self._timeouts.pick(faults.timeout_rate):
                self.stats.timeouts += 1
                return "timeout", faults, config
            if stream and self._breaks.pick(faults.break_rate):
                self.stats.breaks += 1
                return "break", faults, config
            return "ok", faults, config

    def count_status(self, status: int) -> None:
        with self.lock:
            key = str(status)
            self.stats.by_status[key] = self.stats.by_status.get(key, 0) + 1

    def count_tokens(self, prompt: int, completion: int) -> None:
        with self.lock:
            self.stats.prompt_tokens += prompt
            self.stats.completion_tokens += completion

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            stats = asdict(self.stats)
            stats["faults"] = asdict(self.faults)
            stats["config"] = asdict(self.config)
            return stats

    def reset_stats(self) -> None:
        with self.lock:
            self.stats = _Stats()


class _BadRequest(Exception):
    pass


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

    async def _chat(self, raw: bytes, receive: _Receive, send: _Send) -> None:
        body = _parse_chat_body(raw)
        model, messages, stream = body["model"], body["messages"], body.get("stream", False)
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        fate, faults, config = self.state.decide(stream)
        if fate == "error":
            self.state.count_status(faults.status)
            message = f"mock upstream failure (HTTP {faults.status})"
            await _send_error(send, faults.status, message, faults.retry_after)
            return
        if fate == "timeout":
            await _wait_or_disconnect(faults.hang, receive)
            self.state.count_status(504)
            await _send_error(send, 504, "mock upstream timed out")
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


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"the mock LLM cannot listen on {host}:{port}: {exc}") from None
    return sock


class MockLLM:
    """An OpenAI-compatible mock upstream served in this process.

    ``MockLLM(...)`` only configures; ``start()`` (or ``with``/``async with``)
    serves it with uvicorn on a background thread; ``app`` is the ASGI
    application itself, usable without a server (``httpx.ASGITransport``).
    """

    def __init__(
        self,
        *,
        ttft: float = 0.0,
        tpot: float = 0.0,
        answer_tokens: int = 24,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        _check_number("port", port, 0, 65535, "an int in [0, 65535] (0 picks a free port)", int)
        self._state = _State(_Config(ttft=ttft, tpot=tpot, answer_tokens=answer_tokens, seed=seed))
        self.app = _MockApp(self._state)
        self.host = host
        self._port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "not started"
        config = self._state.config
        return (
            f"MockLLM({where}, ttft={config.ttft}, tpot={config.tpot}, "
            f"answer_tokens={config.answer_tokens})"
        )

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(
                "the mock LLM is not started; call start() or use it in a with block"
            )
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (``.../v1``)."""
        return self.url + "/v1"

    def start(self, timeout: float = 30.0) -> MockLLM:
        if self._server is not None:
            raise RuntimeError(f"the mock LLM is already running at {self.url}")
        try:
            import uvicorn
        except ImportError:
            raise ImportError(
                "the mock LLM's server needs uvicorn: pip install 'llmedge[fastapi]'"
            ) from None
        sock = _bind(self.host, self._port)
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"llmedge-mock-{port}", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise RuntimeError(f"the mock LLM did not start on {self.host}:{port}")
            time.sleep(0.005)
        self._server, self._thread, self._port = server, thread, port
        self._sock = sock
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.should_exit = True
        if thread is not None:
            thread.join(timeout=10)
        self._sock.close()
        self._server = self._thread = None

    def __enter__(self) -> MockLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> MockLLM:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    def set_faults(
        self,
        *,
        error_rate: float = 0.0,
        status: int = 500,
        timeout_rate: float = 0.0,
        hang: float = 30.0,
        break_rate: float = 0.0,
        fail_all: bool = False,
        retry_after: float = 1.0,
    ) -> None:
        """Replace the fault settings (the defaults are no faults).

        ``error_rate`` of the requests get HTTP ``status`` (evenly spread:
        0.5 is every other request); ``timeout_rate`` of them hang for
        ``hang`` seconds, then get 504; ``break_rate`` of the streams stop
        half-way without a finish reason or ``[DONE]``; ``fail_all`` answers
        every request with ``status``; 429 and 503 answers carry
        ``Retry-After: retry_after`` (seconds).
        """
        self._state.set_faults(
            {
                "error_rate": error_rate,
                "status": status,
                "timeout_rate": timeout_rate,
                "hang": hang,
                "break_rate": break_rate,
                "fail_all": fail_all,
                "retry_after": retry_after,
            }
        )

    def clear_faults(self) -> None:
        self._state.set_faults({})

    def configure(self, **settings: Any) -> None:
        """Change ``ttft``, ``tpot``, ``answer_tokens`` or ``seed`` while running."""
        self._state.set_config(settings)

    def stats(self) -> dict[str, Any]:
        """Requests, streams, responses by status, timeouts, broken streams,
        tokens served, and the current faults and configuration."""
        return self._state.snapshot()

    def reset_stats(self) -> None:
        self._state.reset_stats()


class MockProcess:
    """A mock LLM running in a subprocess (see :func:`spawn_mock`), driven over
    its admin endpoints."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, log_path: str) -> None:
        self.process = process
        self.url = url
        self.base_url = url + "/v1"
        self._log_path = log_path

    def __repr__(self) -> str:
        state = "running" if self.process.poll() is None else f"exited {self.process.returncode}"
        return f"MockProcess({self.url}, pid={self.process.pid}, {state})"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def _admin(self, method: str, path: str, payload: Mapping[str, Any] | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = json.loads(exc.read() or b"{}").get("error", {}).get("message", str(exc))
            raise ValueError(detail) from None

    def set_faults(self, **faults: Any) -> None:
        """The same settings as :meth:`MockLLM.set_faults`."""
        self._admin("POST", "/mock/faults", faults)

    def clear_faults(self) -> None:
        self._admin("POST", "/mock/faults", {})

    def configure(self, **settings: Any) -> None:
        self._admin("POST", "/mock/config", settings)

    def stats(self) -> dict[str, Any]:
        return self._admin("GET", "/mock/stats")  # type: ignore[no-any-return]

    def reset_stats(self) -> None:
        self._admin("POST", "/mock/reset", {})

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._log_path)

    def log(self) -> str:
        """What the subprocess wrote to stderr so far."""
        try:
            with open(self._log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> MockProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn_mock(
    *,
    port: int = 0,
    host: str = "127.0.0.1",
    ttft: float = 0.0,
    tpot: float = 0.0,
    answer_tokens: int = 24,
    seed: int = 0,
    startup_timeout: float = 30.0,
) -> MockProcess:
    """Start ``python -m llmedge.testing`` in a subprocess and wait until it
    listens; ``port=0`` lets it pick a free port."""
    _Config(ttft=ttft, tpot=tpot, answer_tokens=answer_tokens, seed=seed).validate()
    log = tempfile.NamedTemporaryFile(prefix="llmedge-mock-", suffix=".log", delete=False)  # noqa: SIM115
    command = [
        sys.executable,
        "-m",
        "llmedge.testing",
        "--host",
        host,
        "--port",
        str(port),
        "--ttft",
        str(ttft),
        "--tpot",
        str(tpot),
        "--answer-tokens",
        str(answer_tokens),
        "--seed",
        str(seed),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL
    )
    log.close()
    result: list[bytes] = []

    def read_first_line() -> None:
        assert process.stdout is not None
        result.append(process.stdout.readline())

    reader = threading.Thread(target=read_first_line, daemon=True)
    reader.start()
    reader.join(startup_timeout)
    line = result[0] if result else b""
    marker = b"listening on "
    if marker not in line:
        process.kill()
        process.wait()
        with open(log.name, "rb") as f:
            tail = f.read()[-2000:].decode(errors="replace")
        os.unlink(log.name)
        raise RuntimeError(f"the mock LLM subprocess did not start ({' '.join(command)}):\n{tail}")
    url = line.split(marker, 1)[1].strip().decode()
    return MockProcess(process, url, log.name)

"""An OpenAI-compatible mock LLM upstream for tests and load tests: the servers.

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
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from llmedge.testing._app import _MockApp
from llmedge.testing._state import _check_number, _Config, _State

__all__ = ["MockLLM", "MockProcess", "spawn_mock"]


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"the mock LLM cannot listen on {host}:{port}: {exc}") from None
    return sock


class _ThreadServer:
    """An ASGI app served by uvicorn on a background thread of this process."""

    def __init__(self, app: Any, host: str, port: int, what: str, *, lifespan: str) -> None:
        self.app, self.host, self.port, self.what, self.lifespan = app, host, port, what, lifespan
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def start(self, timeout: float = 30.0) -> None:
        try:
            import uvicorn
        except ImportError:
            raise ImportError(
                f"the {self.what}'s server needs uvicorn: pip install 'llmedge[service]'"
            ) from None
        sock = _bind(self.host, self.port)
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan=self.lifespan,
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"llmedge-{port}", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(timeout=10)
                sock.close()
                raise RuntimeError(f"the {self.what} did not start on {self.host}:{port}")
            time.sleep(0.005)
        self._server, self._thread, self._sock, self.port = server, thread, sock, port

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None


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
        self._server: _ThreadServer | None = None

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
        self._server = _ThreadServer(self.app, self.host, self._port, "mock LLM", lifespan="off")
        self._server.start(timeout)
        self._port = self._server.port
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

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

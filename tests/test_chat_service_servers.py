"""The reference service on real servers: under gunicorn with two uvicorn
workers, and a client that disconnects mid-stream from a uvicorn socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from conftest import ANSWER_TOKENS  # noqa: E402
from test_chat_service import BACKENDS, ROOT, chat_app, expected  # noqa: E402

import llmedge  # noqa: E402
from llmedge.testing import MockLLM  # noqa: E402

# ---------------------------------------------------------------------------
# Under gunicorn with two uvicorn workers
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def gunicorn(env: dict[str, str], workers: int):
    """The reference service under gunicorn with `workers` uvicorn workers and
    `env` added to the environment; yields its base URL once every worker
    answers /health (each reports its pid). Stops it with SIGTERM, which must
    end it cleanly within 30 s."""
    from redis_support import free_port

    port = free_port()
    full_env = dict(os.environ)
    # the llmedge this test imports (the checkout's editable package or an
    # installed wheel), and benches/ for the baseline backend
    full_env["PYTHONPATH"] = os.pathsep.join(
        [
            str(Path(llmedge.__file__).parents[1]),
            str(ROOT / "benches"),
            *filter(None, [full_env.get("PYTHONPATH")]),
        ]
    )
    full_env.update(env)
    cmd = [sys.executable, "-m", "gunicorn", "-k", "llmedge.gateway.worker.UvicornWorker",
           "-w", str(workers), "-b", f"127.0.0.1:{port}",
           "--graceful-timeout", "5", "llmedge.gateway:create_app()"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 120
        while len(pids) < workers:
            assert time.monotonic() < deadline, f"only workers {pids} answered within 120 s"
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
            with contextlib.suppress(httpx.TransportError):
                r = httpx.get(url + "/health", timeout=5, headers={"Connection": "close"})
                if r.status_code in (200, 503):
                    pids.add(r.json()["pid"])
                    continue
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            pytest.fail("gunicorn did not stop within 30 s of SIGTERM")
        finally:
            proc.stdout.close()
    assert proc.returncode == 0, f"gunicorn exited with {proc.returncode}"


@pytest.mark.timeout(180)
def test_runs_under_gunicorn_with_two_workers(upstreams):
    pytest.importorskip("gunicorn")
    with gunicorn({"LLMEDGE_UPSTREAMS": upstreams[0].base_url}, 2) as url:
        r = httpx.post(url + "/chat", json={"question": "Hello from gunicorn?"}, timeout=10)
        assert r.status_code == 200
        assert r.json()["answer"] == expected("gpt-4o-mini", "Hello from gunicorn?")


# ---------------------------------------------------------------------------
# A client that disconnects mid-stream (a real server and socket)
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def served(app):
    """``app`` under uvicorn on a free loopback port, in a thread; yields its URL."""
    import threading

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_client_disconnect_mid_stream_is_not_cached_nor_a_failure(backend):
    with MockLLM(tpot=0.05, answer_tokens=ANSWER_TOKENS) as mock:  # 1.2 s per answer
        app = chat_app.create_app(
            chat_app.Settings(upstreams=[mock.base_url], backend=backend, sse_max_delay=None)
        )
        with served(app) as url:
            async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=30) as c:
                body = {"question": "Leave halfway?", "stream": True}
                async with c.stream("POST", "/chat", json=body) as r:
                    async for chunk in r.aiter_text():
                        assert '"content"' in chunk
                        break  # and close the connection
                # the service ends the request when it sees the disconnect
                done = 'llmedge_http_request_duration_seconds_count{method="POST",route="/chat"'
                for _ in range(1000):
                    if done in (await c.get("/metrics")).text:
                        break
                    await asyncio.sleep(0.01)
                else:
                    pytest.fail("the service never finished the abandoned stream")
                health = (await c.get("/health")).json()
                assert health["caches"]["chat"]["inserts"] == 0
                (breaker,) = health["breakers"].values()
                assert breaker["failures"] == 0 and breaker["state"] == "closed"
                r = await c.post("/chat", json={"question": "Leave halfway?"})
                assert r.json()["cached"] == "none"
                assert r.json()["answer"] == expected("gpt-4o-mini", "Leave halfway?")


@pytest.mark.asyncio
@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", ["/chat", "/v1/chat/completions"])
async def test_disconnected_clients_close_their_upstream_streams_at_once(path):
    """200 clients leave mid-stream with chunk coalescing on (max_delay): every
    upstream stream is closed within a second (the mock counts open streams),
    not whenever the garbage collector runs."""
    import gc

    clients = 200
    # 100 tokens, 50 ms apart: a stream lasts 5 s unless the gateway closes it
    with MockLLM(tpot=0.05, answer_tokens=100) as mock:
        settings = chat_app.Settings(
            upstreams=[mock.base_url], rate_limit=None, sse_max_delay=0.05, sse_every=4
        )
        gc.disable()  # the finalisers of abandoned generators must not be what closes them
        try:
            with served(chat_app.create_app(settings)) as url:
                limits = httpx.Limits(max_connections=clients)
                async with httpx.AsyncClient(
                    base_url=url, trust_env=False, timeout=30, limits=limits
                ) as c:

                    async def leave_after_first_event(i: int) -> None:
                        q = f"Question {i} that will be abandoned?"
                        body = (
                            {"question": q, "stream": True}
                            if path == "/chat"
                            else {"model": "gpt-4o-mini", "stream": True,
                                  "messages": [{"role": "user", "content": q}]}
                        )  # fmt: skip
                        async with c.stream("POST", path, json=body) as r:
                            assert r.status_code == 200
                            async for _ in r.aiter_bytes():
                                break  # and close the connection

                    await asyncio.gather(*(leave_after_first_event(i) for i in range(clients)))
                    left = time.monotonic()
                    assert mock.stats()["streams"] == clients
                    await asyncio.sleep(1.0)
                    stats = mock.stats()
                    assert stats["open_streams"] == 0, (
                        f"{stats['open_streams']} upstream streams still open "
                        f"{time.monotonic() - left:.1f} s after the clients left"
                    )
                    assert stats["disconnects"] == clients
        finally:
            gc.enable()

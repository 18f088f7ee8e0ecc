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
    cmd = [sys.executable, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker",
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


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_client_disconnect_mid_stream_is_not_cached_nor_a_failure(backend):
    import threading

    import uvicorn

    with MockLLM(tpot=0.05, answer_tokens=ANSWER_TOKENS) as mock:  # 1.2 s per answer
        app = chat_app.create_app(
            chat_app.Settings(upstreams=[mock.base_url], backend=backend, sse_max_delay=None)
        )
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            while not server.started:
                assert thread.is_alive()
                await asyncio.sleep(0.01)
            url = f"http://127.0.0.1:{port}"
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
        finally:
            server.should_exit = True
            await asyncio.to_thread(thread.join, 10)
            sock.close()

"""The gateway under hostile clients, on a real server (uvicorn in a
subprocess, with the header-timeout protocol): a 100 MB body, a million
messages, JSON nested 100,000 deep, slow-loris clients, 10,000 API keys.
Each gets a clear 4xx or a timeout, the server's memory stays bounded and
other clients are served meanwhile."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

import llmedge  # noqa: E402
from llmedge.gateway.limits import RequestLimits, json_shape  # noqa: E402
from llmedge.testing import MockLLM  # noqa: E402

MIB = 1024 * 1024
MAX_KEYS = 1000
TIMEOUT = 2.0  # LLMEDGE_HEADER_TIMEOUT and LLMEDGE_BODY_TIMEOUT of the server below


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    def __init__(self, url: str, proc: subprocess.Popen):
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])
        self.proc = proc

    def memory(self, field: str) -> int:
        """VmRSS or VmHWM (peak) of the server process, in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} in /proc/{self.proc.pid}/status")

    def served(self) -> None:
        """A well-behaved client gets its answer."""
        key = {"x-api-key": f"polite-{time.monotonic_ns()}"}  # the limit is 1/min per key
        r = httpx.post(
            self.url + "/chat", json={"question": "Still there?"}, headers=key, timeout=30
        )
        assert r.status_code == 200 and r.json()["answer"]


@pytest.fixture(scope="module")
def gateway():
    if not Path("/proc/self/status").exists():
        pytest.skip("reads the server's memory from /proc")
    with MockLLM() as mock:
        port = free_port()
        env = dict(os.environ)
        env.update(
            PYTHONPATH=os.pathsep.join(
                [str(Path(llmedge.__file__).parents[1]), *filter(None, [env.get("PYTHONPATH")])]
            ),
            LLMEDGE_UPSTREAMS=mock.base_url,
            LLMEDGE_HEADER_TIMEOUT=str(TIMEOUT),
            LLMEDGE_BODY_TIMEOUT=str(TIMEOUT),
            LLMEDGE_RATE_LIMIT="1/60/1",  # one request per key and minute
            LLMEDGE_RATE_LIMIT_MAX_KEYS=str(MAX_KEYS),
        )
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "llmedge.gateway:create_app",
               "--http", "llmedge.gateway.server:HeaderTimeoutProtocol",
               "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
                assert time.monotonic() < deadline, "the gateway did not start in 60 s"
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                time.sleep(0.1)
            gw = Gateway(url, proc)
            gw.served()  # warm (tokenizer tables, embedder): memory is compared after this
            yield gw
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()


def raw(port: int, data: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(data)
    return s


def read_all(s: socket.socket) -> bytes:
    out = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            out += chunk
    return out


def status_and_body(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def headers(path: str, length: int | None = None, extra: str = "") -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {path}-{time.monotonic_ns()}\r\n{size}{extra}\r\n"
    ).encode()


# -- size ---------------------------------------------------------------------


def test_a_declared_100_mb_body_is_refused_before_it_is_read(gateway):
    with raw(gateway.port, headers("/chat", 100 * MIB)) as s:
        status, body = status_and_body(read_all(s))  # answered, then closed
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert "104857600 bytes; at most 4194304" in body["error"]["message"]
    gateway.served()


def test_a_chunked_100_mb_body_is_cut_off_and_memory_stays_bounded(gateway):
    peak = gateway.memory("VmHWM")
    outcome: list[object] = []

    def body():
        block = b'{"question": "' + b"a" * MIB
        yield block
        for _ in range(99):
            yield b"a" * MIB

    try:
        r = httpx.post(
            gateway.url + "/chat", content=body(), headers={"x-api-key": "big"}, timeout=60
        )
        outcome.append(r.status_code)
        assert r.status_code == 413 and "at most 4194304" in r.json()["error"]["message"]
    except httpx.TransportError as exc:  # the server closed while we were still sending
        outcome.append(type(exc).__name__)
    assert outcome
    assert gateway.memory("VmHWM") - peak < 40 * MIB
    gateway.served()


def test_a_million_messages_are_refused(gateway):
    message = b'{"role":"user","content":"a"}'
    million = b'{"model":"gpt-4o-mini","messages":[' + b",".join([message] * 1_000_000) + b"]}"
    assert len(million) > RequestLimits().max_body_bytes  # 30 MB
    with raw(gateway.port, headers("/v1/chat/completions", len(million))) as s:
        status, body = status_and_body(read_all(s))
    assert status == 413 and body["error"]["code"] == "request_too_large"
    # within the size limit, the count is what refuses them (a large body is
    # inspected off the event loop)
    peak = gateway.memory("VmHWM")
    for n in (100_000, 3000):
        many = [{"role": "user", "content": "a"}] * n
        r = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": many},
            headers={"Authorization": f"Bearer many-{n}"},
            timeout=60,
        )
        assert r.status_code == 413, r.text
        assert r.json()["error"]["message"] == (
            f"messages holds {n} messages; at most 2048 are accepted (LLMEDGE_MAX_MESSAGES)"
        )
    assert gateway.memory("VmHWM") - peak < 40 * MIB
    history = [{"role": "user", "content": "a"}] * 2049
    r = httpx.post(
        gateway.url + "/chat",
        json={"question": "q", "history": history},
        headers={"Authorization": "Bearer history"},
        timeout=60,
    )
    assert r.status_code == 413 and "history holds 2049 messages" in r.text
    gateway.served()


# -- nesting ------------------------------------------------------------------


def test_deeply_nested_json_is_refused(gateway):
    for depth in (100_000, 65):
        nested = b"[" * depth + b"]" * depth
        body = (
            b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"x":'
            + nested
            + b"}"
        )
        r = httpx.post(
            gateway.url + "/v1/chat/completions",
            content=body,
            headers={"Authorization": f"Bearer deep-{depth}", "Content-Type": "application/json"},
            timeout=30,
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "json_too_deep"
        assert "deeper than 64 levels" in r.json()["error"]["message"]
    gateway.served()


def test_json_shape_is_depth_and_message_count():
    def nest(n: int) -> bytes:
        return b'{"a":' * n + b"1" + b"}" * n

    assert json_shape(nest(64)) == (64, None, 0)
    # strings (brackets, escaped quotes inside) and scalars do not nest
    text = json.dumps({"s": '[[[[{{{{ " ]]', "l": [[1, [2]], {"k": [3]}]}).encode()
    assert json_shape(text) == (4, None, 0)
    body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}] * 5}
    assert json_shape(json.dumps(body).encode()) == (5, "messages", 5)
    assert json_shape(b"[" * 100_000 + b"]" * 100_000) == (sys.maxsize, None, 0)
    assert json_shape(b"not json [[[") is None  # the application reports it
    with pytest.raises(ValueError, match=r"max_json_depth \(LLMEDGE_MAX_JSON_DEPTH\) must be"):
        RequestLimits(max_json_depth=0)
    with pytest.raises(ValueError, match=r"body_timeout .* must be seconds > 0, got nan"):
        RequestLimits(body_timeout=float("nan"))


# -- slow loris ---------------------------------------------------------------


def drip(s: socket.socket, data: bytes, stop: threading.Event) -> int:
    """Sends ``data`` one byte a second until the server closes; the bytes sent."""
    sent = 0
    with contextlib.suppress(OSError):
        for i in range(len(data)):
            if stop.wait(1.0):
                break
            s.send(data[i : i + 1])
            sent += 1
    return sent


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_slow_loris_client_times_out_and_others_are_served(gateway, where):
    if where == "headers":
        first = b"POST /chat HTTP/1.1\r\nHost: gateway\r\n"
        rest = b"X-Slow: " + b"a" * 100 + b"\r\n\r\n"
    else:
        payload = json.dumps({"question": "a" * 100}).encode()
        first = headers("/chat", len(payload))
        rest = payload
    stop = threading.Event()
    with raw(gateway.port, first) as s:
        sent: list[int] = []
        t = threading.Thread(target=lambda: sent.append(drip(s, rest, stop)))
        t.start()
        try:
            gateway.served()  # meanwhile
            response = read_all(s)  # until the server closes the connection
        finally:
            stop.set()
            t.join()
    status, body = status_and_body(response)
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert f"did not arrive within {TIMEOUT:g} s" in body["error"]["message"]
    assert sent[0] < len(rest)  # cut off before the client was done


def read_response(s: socket.socket) -> tuple[int, dict]:
    """One response on a kept-alive connection (its Content-Length bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"the server closed the connection after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += s.recv(65536)
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_an_idle_kept_alive_connection_gets_no_unsolicited_408(gateway):
    """Between requests the header deadline does not run: a client that reuses a
    connection after longer than LLMEDGE_HEADER_TIMEOUT (within uvicorn's
    keep-alive of 5 s) gets its answer, not a 408 written while it was idle."""
    payload = json.dumps({"question": "Again?"}).encode()
    with raw(gateway.port, headers("/chat", len(payload)) + payload) as s:
        assert read_response(s)[0] == 200
        time.sleep(TIMEOUT * 1.5)
        s.sendall(headers("/chat", len(payload)) + payload)
        assert read_response(s)[0] == 200


def test_slow_headers_on_a_kept_alive_connection_time_out(gateway):
    """The deadline starts again at the next request's first byte."""
    payload = json.dumps({"question": "Again?"}).encode()
    with raw(gateway.port, headers("/chat", len(payload)) + payload) as s:
        assert read_response(s)[0] == 200
        s.sendall(b"POST /chat HTTP/1.1\r\nHost: gateway\r\n")  # and no more
        start = time.monotonic()
        status, body = status_and_body(read_all(s))
        assert status == 408 and body["error"]["code"] == "request_timeout"
        assert TIMEOUT * 0.9 <= time.monotonic() - start


# -- many keys ------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_10000_api_keys_keep_limiter_state_and_metric_labels_bounded(gateway):
    import asyncio

    def series(text: str) -> set[str]:
        return {line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")}

    async def flood() -> float:
        # connections idle longer than the server's keep-alive (5 s) are not reused
        limits = httpx.Limits(max_connections=32, keepalive_expiry=2)
        async with httpx.AsyncClient(base_url=gateway.url, limits=limits, timeout=60) as c:
            # warm up: every status and route this test produces, once
            for key in ("warm-1", "warm-2", "warm-2"):  # a miss, a hit, a 429
                await c.post("/chat", json={"question": "Key?"}, headers={"x-api-key": key})
            await c.get("/health")
            await c.get("/metrics")
            before = series((await c.get("/metrics")).text)
            rss = gateway.memory("VmRSS")
            sem = asyncio.Semaphore(32)

            async def one(i: int) -> int:
                async with sem:
                    r = await c.post(
                        "/chat", json={"question": "Key?"}, headers={"x-api-key": f"key-{i}"}
                    )
                    return r.status_code

            start = time.monotonic()
            codes = await asyncio.gather(*(one(i) for i in range(10_000)))
            rate = 10_000 / (time.monotonic() - start)
            assert set(codes) == {200}  # each key's first request
            health = (await c.get("/health")).json()
            assert health["rate_limits"]["chat"]["keys"] <= MAX_KEYS
            assert series((await c.get("/metrics")).text) == before
            assert gateway.memory("VmRSS") - rss < 40 * MIB
            # a key seen just now is still limited: state kept for active keys
            r = await c.post("/chat", json={"question": "Key?"}, headers={"x-api-key": "key-9999"})
            assert r.status_code == 429
            return rate

    asyncio.run(flood())
    gateway.served()


def test_header_timeout_setting(monkeypatch):
    from llmedge.gateway.server import DEFAULT_HEADER_TIMEOUT, header_timeout

    monkeypatch.delenv("LLMEDGE_HEADER_TIMEOUT", raising=False)
    assert header_timeout() == DEFAULT_HEADER_TIMEOUT
    monkeypatch.setenv("LLMEDGE_HEADER_TIMEOUT", "2.5")
    assert header_timeout() == 2.5
    for bad in ("0", "-1", "soon", "inf"):
        monkeypatch.setenv("LLMEDGE_HEADER_TIMEOUT", bad)
        with pytest.raises(
            ValueError, match=f"LLMEDGE_HEADER_TIMEOUT must be seconds > 0, got '{bad}'"
        ):
            header_timeout()


def test_limits_are_settings_with_environment_variables(monkeypatch):
    from llmedge.gateway.app import Settings

    monkeypatch.setenv("LLMEDGE_MAX_BODY_BYTES", "1000")
    monkeypatch.setenv("LLMEDGE_MAX_MESSAGES", "7")
    monkeypatch.setenv("LLMEDGE_MAX_JSON_DEPTH", "9")
    monkeypatch.setenv("LLMEDGE_BODY_TIMEOUT", "1.5")
    assert Settings.from_env().limits() == RequestLimits(1000, 7, 9, 1.5)
    monkeypatch.setenv("LLMEDGE_MAX_MESSAGES", "0")
    with pytest.raises(ValueError, match=r"max_messages \(LLMEDGE_MAX_MESSAGES\) must be"):
        Settings.from_env().validate()

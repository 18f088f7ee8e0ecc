"""``llmedge serve`` and the gateway's embedder: the command line (flags over
environment, errors, uvicorn and gunicorn), run through the pytest plugin's
``llmedge_gateway`` in front of its ``mock_llm``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from llmedge.gateway import cli  # noqa: E402
from llmedge.testing import MockLLM, mock_answer  # noqa: E402

QUESTION = "What is a context window?"


def ask(url: str, question: str = QUESTION, **kw) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}], **kw}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30, trust_env=False)


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("llmedge_gateway", [{"subprocess": True}], indirect=True)
def test_serve_with_one_worker_answers_caches_and_reports(llmedge_gateway, mock_llm):
    url = llmedge_gateway.url
    first, second = ask(url), ask(url)
    expected = mock_answer("gpt-4o-mini", [{"role": "user", "content": QUESTION}], 24)
    assert first.json()["choices"][0]["message"]["content"] == expected
    assert first.headers["x-llmedge-cache"] == "none"
    assert second.headers["x-llmedge-cache"] == "exact"
    assert mock_llm.stats()["requests"] == 1
    health = httpx.get(url + "/health", trust_env=False).json()
    assert health["status"] == "healthy"
    assert "llmedge_" in httpx.get(url + "/metrics", trust_env=False).text
    pgid = llmedge_gateway.process.pid
    llmedge_gateway.stop()
    assert _group_gone(pgid)


@pytest.mark.parametrize(
    "llmedge_gateway",
    [{"subprocess": True, "workers": 2, "env": {"LLMEDGE_UPSTREAMS": "ftp://ignored"}}],
    indirect=True,
)
def test_serve_with_two_workers_runs_gunicorn_and_flags_override_the_environment(
    llmedge_gateway,
):
    pytest.importorskip("gunicorn")
    url = llmedge_gateway.url
    assert all(ask(url, f"question {i}").status_code == 200 for i in range(6))
    pids = {httpx.get(url + "/health", trust_env=False).json()["pid"] for _ in range(20)}
    assert llmedge_gateway.process.pid not in pids  # workers answer, not the master
    pgid = llmedge_gateway.process.pid
    llmedge_gateway.stop()
    assert _group_gone(pgid)


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmedge", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--upstream", "ftp://x"], "must be http(s) base URLs"),
        (["--embedder", "word2vec"], "LLMEDGE_EMBEDDER must be 'hashing'"),
        (["--embedder", "openai:"], "LLMEDGE_EMBEDDER must be 'hashing'"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--port", "70000"], "--port must be in 0..65535"),
    ],
)
def test_serve_rejects_bad_settings_with_their_value(args, message):
    out = _serve(*args)
    assert out.returncode == 2
    assert message in out.stderr


def test_start_up_failures_end_with_a_message_not_a_traceback():
    # what create_app builds (the Redis store, the embedder) is checked once,
    # before uvicorn or gunicorn start, for one worker or several
    for workers in ("1", "2"):
        out = _serve("--workers", workers, "--redis", "notaurl")
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert "notaurl" in out.stderr
        out = _serve(
            "--workers", workers,
            "--embedder", "openai:text-embedding-3-small",
            "--embedder-url", "http://127.0.0.1:1/v1",
        )  # fmt: skip
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert "did not embed a probe text" in out.stderr


def test_a_bad_environment_value_is_named_too():
    out = _serve(env={"LLMEDGE_READ_TIMEOUT": "soon"})
    assert out.returncode == 2
    assert "LLMEDGE_READ_TIMEOUT must be a number, got 'soon'" in out.stderr


def test_missing_extras_name_the_extra(monkeypatch, capsys):
    modules = {**cli.SERVICE_MODULES, "llmedge_no_such_module": "no-such-dist"}
    monkeypatch.setattr(cli, "SERVICE_MODULES", modules)
    monkeypatch.setattr(cli.missing_service_modules, "__defaults__", (modules,))
    from llmedge.__main__ import main

    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "missing: no-such-dist" in err and "pip install 'llmedge[service]'" in err
    assert main(["demo", "--duration", "5"]) == 2
    assert "llmedge[service] (missing: no-such-dist)" in capsys.readouterr().out
    import llmedge.gateway

    with pytest.raises(ImportError, match=r"llmedge\[service\] \(missing: no-such-dist\)"):
        llmedge.gateway.create_app  # noqa: B018


@pytest.mark.parametrize(
    "llmedge_gateway", [{"embedder": "openai:text-embedding-3-small"}], indirect=True
)
def test_the_gateway_embeds_with_the_upstreams_embeddings_endpoint(llmedge_gateway, mock_llm):
    url = llmedge_gateway.url
    assert ask(url).headers["x-llmedge-cache"] == "none"
    assert ask(url).headers["x-llmedge-cache"] == "exact"
    stats = mock_llm.stats()
    assert stats["embedding_requests"] >= 2 and stats["requests"] >= 3
    embedder = llmedge_gateway.service.backend.cache.inner
    assert embedder.embedder_identity.startswith("openai-compatible/text-embedding-3-small@")
    # the embeddings service's breaker is reported, named without its URL
    health = httpx.get(url + "/health", trust_env=False).json()
    assert "embeddings text-embedding-3-small" in health["breakers"]
    assert mock_llm.base_url not in json.dumps(health)
    metrics = httpx.get(url + "/metrics", trust_env=False).text
    assert 'breaker="embeddings text-embedding-3-small"' in metrics


def test_a_failing_embeddings_service_makes_cache_misses_not_errors(mock_llm):
    from llmedge.testing import GatewayServer

    with MockLLM() as embeddings:
        gateway = GatewayServer(
            [mock_llm.base_url],
            embedder="openai:text-embedding-3-small",
            embedder_url=embeddings.base_url,
            embedder_timeout=1.0,
        )
        with gateway:
            url = gateway.url
            embeddings.set_faults(fail_all=True, status=500)
            answers = [ask(url) for _ in range(7)]
            assert [r.status_code for r in answers] == [200] * 7
            assert {r.headers["x-llmedge-cache"] for r in answers} == {"none"}
            cache = httpx.get(url + "/health", trust_env=False).json()["caches"]["chat"]
            assert cache["embedder_errors"] >= 7
            # the embedder's breaker opened: later lookups send nothing
            sent = embeddings.stats()["embedding_requests"]
            ask(url)
            assert embeddings.stats()["embedding_requests"] == sent


def test_an_unreachable_embeddings_endpoint_stops_the_start(mock_llm):
    from llmedge.gateway import Settings, create_app

    with MockLLM() as embeddings:
        embeddings.set_faults(fail_all=True, status=404)
        settings = Settings(
            upstreams=[mock_llm.base_url],
            embedder="openai:text-embedding-3-small",
            embedder_url=embeddings.base_url,
        )
        with pytest.raises(ValueError, match="did not embed a probe text.*HTTP 404"):
            create_app(settings)


def test_embedder_settings_are_checked():
    from llmedge.gateway import Settings

    base = {"upstreams": ["http://127.0.0.1:1/v1"]}
    for settings, match in [
        ({"embedder": "sentence-transformers"}, "LLMEDGE_EMBEDDER must be"),
        ({"embedder": "openai:m", "backend": "baseline"}, "needs LLMEDGE_SERVICE_BACKEND"),
        ({"embedder": "openai:m", "embedder_url": "localhost"}, "LLMEDGE_EMBEDDER_URL must"),
        ({"embedder": "openai:m", "embedder_timeout": 0}, "embedder_timeout must be > 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            Settings(**base, **settings).validate()
    Settings(**base).validate()


def test_the_upstream_api_key_reaches_the_upstream():
    from llmedge.testing import GatewayServer
    from llmedge.testing._server import _ThreadServer

    seen: list[str | None] = []

    async def upstream(scope, receive, send):  # records the Authorization header
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        seen.append((headers.get(b"authorization") or b"").decode() or None)
        body = b'{"id":"c","object":"chat.completion","created":0,"model":"gpt-4o-mini",'
        body += b'"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},'
        body += b'"finish_reason":"stop"}]}'
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    server = _ThreadServer(upstream, "127.0.0.1", 0, "upstream", lifespan="off")
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/v1"
        with GatewayServer([url], upstream_api_key="sk-test") as gateway:
            assert ask(gateway.url).json()["choices"][0]["message"]["content"] == "hi"
    finally:
        server.stop()
    assert seen == ["Bearer sk-test"]

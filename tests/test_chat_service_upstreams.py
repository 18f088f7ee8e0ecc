# ruff: noqa: F811
"""The gateway and its upstreams: labels instead of URLs wherever a client
looks, 429 when every upstream rate-limits, which answers may be cached, and
tool calls end to end (the mock answers with them)."""

from __future__ import annotations

import json
import logging
import socket

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

# svc: the fixture (a gateway over both mocks), used as an argument (F811)
from test_chat_service import BACKENDS, chat_app, expected, sse_data, svc  # noqa: E402, F401

from llmedge.gateway.upstreams import parse_upstreams  # noqa: E402


def client_for(app):
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://svc")


def closed_port_url() -> str:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


# -- labels ---------------------------------------------------------------


def test_upstream_entries_take_an_optional_label():
    assert parse_upstreams(["http://a/v1/", "primary=https://b/v1", " x.y-1 = http://c "]) == [
        ("upstream-0", "http://a/v1"),
        ("primary", "https://b/v1"),
        ("x.y-1", "http://c"),
    ]
    with pytest.raises(ValueError, match=r"label 'bad label' must be 1-64 letters"):
        parse_upstreams(["bad label=http://a/v1"])
    with pytest.raises(ValueError, match=r"labels must be unique, got \['a', 'a'\]"):
        parse_upstreams(["a=http://x/v1", "a=http://y/v1"])
    with pytest.raises(ValueError, match=r"http\(s\) base URLs.*'primary=ftp://x'"):
        parse_upstreams(["primary=ftp://x"])


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_clients_never_see_upstream_urls(upstreams, backend, caplog):
    """502, 504 and stream errors, /chat answers, /health and /metrics name
    upstreams by label; the URLs are in the log."""
    first, second = upstreams
    dead = closed_port_url()
    port = dead.rsplit(":", 1)[1].split("/")[0]
    settings = chat_app.Settings(
        upstreams=[f"primary={first.base_url}", f"backup={second.base_url}", dead],
        backend=backend,
        read_timeout=0.3,
        breaker_failures=100,
        sse_max_delay=None,
        rate_limit=None,
    )
    urls = (first.base_url, second.base_url, dead, "127.0.0.1", port)
    app = chat_app.create_app(settings)
    seen = []
    with caplog.at_level(logging.WARNING, logger="llmedge.gateway"):
        async with app.router.lifespan_context(app), client_for(app) as c:
            r = await c.post("/chat", json={"question": "Who answers?"})
            assert r.json()["upstream"] == "primary"
            seen.append(r.text)
            first.set_faults(fail_all=True, status=500)
            second.set_faults(fail_all=True, status=503)
            r = await c.post("/chat", json={"question": "Nobody answers?"})
            assert r.status_code == 502
            message = r.json()["error"]["message"]
            assert message == (
                "every upstream failed: primary: answered 500; backup: answered 503; "
                "upstream-2: failed (connection or protocol error)"
            )
            seen.append(r.text)
            for m in upstreams:
                m.set_faults(timeout_rate=1.0, hang=5.0)
            r = await c.post("/chat", json={"question": "Everyone hangs?"})
            # (the last failure is the dead one's: 502, not 504)
            assert r.status_code == 502
            assert "primary: timed out; backup: timed out" in r.json()["error"]["message"]
            seen.append(r.text)
            first.set_faults(break_rate=1.0)
            body = {"model": "gpt-4o-mini", "stream": True,
                    "messages": [{"role": "user", "content": "Cut me off?"}]}  # fmt: skip
            r = await c.post("/v1/chat/completions", json=body)
            assert "event: error" in r.text and "primary: failed" in r.text
            seen.append(r.text)
            r = await c.post("/chat", json={"question": "Cut me off again?", "stream": True})
            assert "event: error" in r.text and "primary: failed" in r.text
            seen.append(r.text)
            health = (await c.get("/health")).json()
            assert set(health["breakers"]) == {"primary", "backup", "upstream-2"}
            assert set(health["routers"]["chat"]) == {"primary", "backup", "upstream-2"}
            seen.append(json.dumps(health))
            seen.append((await c.get("/metrics")).text)
    for text in seen:
        for url in urls:
            assert url not in text
    logged = caplog.text
    assert first.base_url in logged and dead in logged


# -- 429 from every upstream ------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_every_upstream_rate_limiting_gives_429_with_the_smallest_retry_after(
    upstreams, backend
):
    first, second = upstreams
    settings = chat_app.Settings(
        upstreams=[m.base_url for m in upstreams], backend=backend, sse_max_delay=None
    )
    app = chat_app.create_app(settings)
    async with app.router.lifespan_context(app), client_for(app) as c:
        first.set_faults(fail_all=True, status=429, retry_after=7)
        second.set_faults(fail_all=True, status=429, retry_after=3)
        for stream in (False, True):
            r = await c.post("/chat", json={"question": f"Busy? {stream}", "stream": stream})
            assert r.status_code == 429
            assert r.json()["error"]["code"] == "upstream_rate_limited"
            # the first answer: both were asked; then both cool down (no call)
            assert r.headers["Retry-After"] == "3"
        assert first.stats()["requests"] == 1 and second.stats()["requests"] == 1

        # a 429 beside another failure is a failure: 502
        settings = chat_app.Settings(upstreams=[m.base_url for m in upstreams], backend=backend)
    app = chat_app.create_app(settings)
    async with app.router.lifespan_context(app), client_for(app) as c:
        first.set_faults(fail_all=True, status=429, retry_after=7)
        second.set_faults(fail_all=True, status=500)
        r = await c.post("/chat", json={"question": "Half busy?"})
        assert r.status_code == 502 and "Retry-After" not in r.headers


# -- what may be cached -------------------------------------------------------


async def _ask(c, path: str, stream: bool, question: str, **params):
    if path == "/chat":
        r = await c.post("/chat", json={"question": question, "stream": stream, **params})
    else:
        messages = [{"role": "user", "content": question}]
        body = {"model": "gpt-4o-mini", "messages": messages, "stream": stream, **params}
        r = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/chat", "/v1/chat/completions"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("finish", "params", "cached"),
    [
        ("content_filter", {}, False),
        ("length", {}, False),  # cut, but the client set no limit
        ("length", {"max_tokens": 500}, True),  # the cut the client asked for
        ("stop", {}, True),
    ],
)
async def test_only_a_normally_completed_answer_is_cached(
    svc, upstreams, path, stream, finish, params, cached
):
    upstreams[0].configure(finish_reason=finish)
    q = f"Will this {finish} answer be replayed ({path}, {stream}, {params})?"
    await _ask(svc.client, path, stream, q, **params)
    upstreams[0].configure(finish_reason=None)
    r = await _ask(svc.client, path, False, q, **params)
    assert r.headers["x-llmedge-cache"] == ("exact" if cached else "none")
    assert upstreams[0].stats()["requests"] == (1 if cached else 2)


# -- tool calls end to end ----------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city", "unit"],
        },
    },
}


def tool_arguments(question: str) -> dict:
    return {"city": question, "unit": "celsius"}


@pytest.mark.asyncio
async def test_tool_calls_through_the_gateway(svc, upstreams):
    q = "What is the weather in Paris?"
    messages = [{"role": "user", "content": q}]
    body = {"model": "gpt-4o-mini", "messages": messages, "tools": [WEATHER]}
    r = await svc.client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == tool_arguments(q)
    assert choice["message"]["content"] is None

    # streamed: OpenAI's chunks (the call's id and name first, then the
    # arguments in pieces), passed through unchanged
    r = await svc.client.post("/v1/chat/completions", json={**body, "stream": True})
    events = sse_data(r.text)
    assert events[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"] for e in events[:-1] if e.get("choices")]
    head = deltas[0]["tool_calls"][0]
    assert head["index"] == 0 and head["function"]["name"] == "get_weather" and head["id"]
    arguments = "".join(
        d["tool_calls"][0]["function"]["arguments"] for d in deltas if d.get("tool_calls")
    )
    assert json.loads(arguments) == tool_arguments(q)
    finishes = [e["choices"][0]["finish_reason"] for e in events[:-1] if e.get("choices")]
    assert finishes[-1] == "tool_calls"

    # the tool's result goes back: the model answers in text
    follow = [
        *messages,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": '{"temp": 21}'},
    ]
    r = await svc.client.post("/v1/chat/completions", json={**body, "messages": follow})
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"]
    # tool_choice "none" answers in text; naming a function calls it
    r = await svc.client.post("/v1/chat/completions", json={**body, "tool_choice": "none"})
    assert r.json()["choices"][0]["message"]["content"] == expected("gpt-4o-mini", q)
    named = {"type": "function", "function": {"name": "get_weather"}}
    r = await svc.client.post("/v1/chat/completions", json={**body, "tool_choice": named})
    assert r.json()["choices"][0]["finish_reason"] == "tool_calls"
    # nothing with tools is cached: every request reached the upstream
    assert upstreams[0].stats()["requests"] == 5
    assert upstreams[0].stats()["tool_calls"] == 3
    # a malformed tools list is the caller's error, passed back
    r = await svc.client.post("/v1/chat/completions", json={**body, "tools": [{"type": "x"}]})
    assert r.status_code == 400 and "tools[0]" in r.json()["error"]["message"]

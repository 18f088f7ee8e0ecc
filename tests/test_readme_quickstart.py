"""The README's FastAPI quick start runs as written, against a fake provider."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from docs_text import docs_text  # noqa: E402

import llmedge  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


def _quickstart_source() -> str:
    text = docs_text()
    section = text.split("## Quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the quick start"
    return match.group(1)


@pytest.fixture()
def app_ns():
    ns: dict = {"__name__": "readme_quickstart"}
    exec(compile(_quickstart_source(), str(README), "exec"), ns)
    calls: list[list[dict]] = []

    async def fake_llm(messages):
        calls.append(messages)
        return f"answer to: {messages[-1]['content']}"

    ns["call_llm"] = fake_llm
    ns["calls"] = calls
    yield ns
    llmedge.breakers().pop("openai", None)


def _client(app) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=("10.0.0.7", 5))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest.mark.asyncio
async def test_quickstart_answers_caches_and_tracks_cost(app_ns):
    client = _client(app_ns["app"])
    r1 = await client.post("/chat", json={"question": "What is the capital of France?"})
    assert r1.status_code == 200
    assert r1.json() == {"answer": "answer to: What is the capital of France?", "cached": None}
    r2 = await client.post("/chat", json={"question": "what is the  capital of France?"})
    assert r2.json()["cached"] == "exact"
    assert len(app_ns["calls"]) == 1
    # a number change is a different question: the guard refuses the semantic hit
    r3 = await client.post("/chat", json={"question": "What is the capital of France in 1800?"})
    assert r3.json()["cached"] is None
    assert len(app_ns["calls"]) == 2
    summary = app_ns["costs"].summary()
    assert summary["total"]["cost"] > 0


@pytest.mark.asyncio
async def test_quickstart_breaker_answers_503_with_retry_after(app_ns):
    async def down(messages):
        raise ConnectionError("provider down")

    app_ns["call_llm"] = down
    client = _client(app_ns["app"])
    for i in range(5):
        r = await client.post("/chat", json={"question": f"question {i}"})
        assert r.status_code == 500
    r = await client.post("/chat", json={"question": "one more"})
    assert r.status_code == 503
    assert 0 < int(r.headers["Retry-After"]) <= 60


@pytest.mark.asyncio
async def test_quickstart_rate_limits_with_retry_after(app_ns):
    app_ns["limiter"] = llmedge.RateLimiter(1, per=60.0, burst=2)
    client = _client(app_ns["app"])
    codes = [(await client.post("/chat", json={"question": f"q {i}"})) for i in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert 0 < int(codes[2].headers["Retry-After"]) <= 60

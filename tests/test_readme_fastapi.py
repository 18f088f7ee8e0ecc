"""The README's llmedge.fastapi example runs as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from docs_text import docs_text  # noqa: E402

import llmedge  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


def _block() -> str:
    section = docs_text().split("## FastAPI integration\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the FastAPI integration section"
    return match.group(1)


@pytest.fixture()
def ns():
    namespace: dict = {"__name__": "readme_fastapi"}
    exec(compile(_block(), str(README), "exec"), namespace)
    yield namespace
    llmedge.breakers().pop("provider", None)


def _events(text: str) -> list:
    return [
        line[6:] if line[6:] == "[DONE]" else json.loads(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ")
    ]


@pytest.mark.asyncio
async def test_readme_example_streams_caches_replays_and_reports(ns):
    transport = httpx.ASGITransport(app=ns["app"], client=("10.1.1.1", 9))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        q = {"question": "What is a token?"}
        r = await c.post("/chat", json=q, headers={"x-api-key": "a"})
        assert r.status_code == 200
        events = _events(r.text)
        assert events[-1] == "[DONE]" and events[-2] == {"done": True, "cached": "none"}
        text = "".join(e["content"] for e in events[:-2])
        assert text == "You asked: What is a token? Here is the answer. "

        r = await c.post("/chat", json=q, headers={"x-api-key": "a"})
        events = _events(r.text)
        assert events[-2] == {"done": True, "cached": "exact"}
        assert "".join(e["content"] for e in events[:-2]) == text

        health = (await c.get("/health")).json()
        assert health["status"] == "healthy"
        assert health["caches"]["answers"]["exact_hits"] == 1
        metrics = (await c.get("/metrics")).text
        assert 'llmedge_cache_hits_total{cache="answers",kind="exact"} 1.0' in metrics
        assert 'llmedge_breaker_calls_total{breaker="provider"} 1.0' in metrics

        # a burst of 20 per key, refilled at 10/s (real time here): a key
        # sending back to back is refused after at least 20 requests
        granted = 0
        for _ in range(200):
            r = await c.post("/chat", json=q, headers={"x-api-key": "b"})
            if r.status_code != 200:
                break
            granted += 1
        assert r.status_code == 429 and granted >= 20
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert (await c.post("/chat", json=q, headers={"x-api-key": "c"})).status_code == 200

"""The reference chat service's own cost per request: the llmedge backend
against the same service on the pure-Python baselines
(``LLMEDGE_SERVICE_BACKEND=baseline``).

Everything runs in one process with no network: the service is driven through
``httpx.ASGITransport`` and its upstream client is pointed at the mock LLM's
ASGI app (no time to first token, no time per token), so the time measured is
the service's work: validation, rate limit, history fitting and token
counting, the cache lookup and insert (embedding included), the breaker, the
upstream's JSON or SSE parsing, cost tracking and the response. The real load
tests (concurrency, latency percentiles, failures) are in ``loadtest/``.

Workload: real questions from ``mqp.csv`` (pairs of medical questions a
doctor marked as paraphrases): each question, then the same question again
(an exact repeat), then its paraphrase, 10 requests in flight at a time.
``correct``: every answer is the mock's answer to the question asked or to
the one it was matched with, and the exact repeats were all hits.
"""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import pytest
from conftest import record

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from llmedge.gateway import app as chat_app  # noqa: E402
from llmedge.testing import MockLLM, mock_answer  # noqa: E402

IMPLS = ["llmedge", "baseline"]
MODEL = "gpt-4o-mini"
ANSWER_TOKENS = 24


def _pairs(data_dir: Path, n: int) -> list[tuple[str, str]]:
    out = []
    with open(data_dir / "mqp.csv", newline="") as f:
        for row in csv.reader(f):
            if len(row) >= 4 and row[3] == "1":
                out.append((row[1], row[2]))
                if len(out) == n:
                    break
    return out


async def _drive(backend: str, requests: list[dict], concurrency: int = 10) -> list:
    mock = MockLLM(answer_tokens=ANSWER_TOKENS)
    settings = chat_app.Settings(
        upstreams=["http://mock/v1"], backend=backend, rate_limit=None, sse_max_delay=None
    )
    app = chat_app.create_app(settings)
    async with app.router.lifespan_context(app):
        service = app.state.service
        upstream = httpx.AsyncClient(transport=httpx.ASGITransport(app=mock.app))
        service.client = upstream
        transport = httpx.ASGITransport(app=app)
        results: list = [None] * len(requests)
        async with upstream, httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
            # requests are issued in waves so that a repeat follows its original
            for start in range(0, len(requests), concurrency):
                wave = range(start, min(start + concurrency, len(requests)))
                responses = await asyncio.gather(*(c.post("/chat", json=requests[i]) for i in wave))
                for i, r in zip(wave, responses, strict=True):
                    results[i] = (r.status_code, r.headers.get("x-llmedge-cache"), r.text)
    return results


def _workload(pairs: list[tuple[str, str]], stream: bool) -> list[dict]:
    reqs = [{"question": q1, "stream": stream} for q1, _ in pairs]
    reqs += [{"question": q1, "stream": stream} for q1, _ in pairs]
    reqs += [{"question": q2, "stream": stream} for _, q2 in pairs]
    return reqs


def _check(pairs: list[tuple[str, str]], requests: list[dict], results: list) -> bool:
    import json

    n = len(pairs)
    ok = True
    for i, (req, (status, kind, text)) in enumerate(zip(requests, results, strict=True)):
        if status != 200:
            return False
        if req["stream"]:
            events = [
                json.loads(line[6:])
                for line in text.splitlines()
                if line.startswith("data: {") and '"content"' in line
            ]
            answer = "".join(e["content"] for e in events)
        else:
            answer = json.loads(text)["answer"]
        asked = mock_answer(MODEL, [{"role": "user", "content": req["question"]}], ANSWER_TOKENS)
        original = mock_answer(MODEL, [{"role": "user", "content": pairs[i % n][0]}], ANSWER_TOKENS)
        ok &= answer in (asked, original)
        if n <= i < 2 * n:
            ok &= kind == "exact"
    return ok


@pytest.fixture(scope="module")
def pairs(data_dir, quick):
    return _pairs(data_dir, 50 if quick else 300)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("impl", IMPLS)
def test_service_requests(benchmark, impl, stream, pairs):
    n = len(pairs)
    kind = "SSE streams" if stream else "JSON answers"
    benchmark.group = f"service: {3 * n} /chat {kind} (question, repeat, paraphrase)"
    requests = _workload(pairs, stream)
    try:
        results = asyncio.run(_drive(impl, requests))
    except RuntimeError as exc:  # the baseline needs tiktoken offline
        pytest.skip(str(exc))
    correct = _check(pairs, requests, results)
    hits = {k: sum(1 for r in results if r[1] == k) for k in ("exact", "semantic", "none")}
    benchmark.extra_info["hits"] = hits
    record(benchmark, impl, correct)
    benchmark.pedantic(lambda: asyncio.run(_drive(impl, requests)), rounds=3, iterations=1)
    assert correct, hits

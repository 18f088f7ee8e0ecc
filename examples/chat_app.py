"""A chat backend on llmedge, written as an application would: FastAPI in front
of one OpenAI-compatible provider, with a rate limit per API key, a semantic
cache (paraphrases found with the provider's own embeddings), a circuit breaker
and /health and /metrics.

    pip install "llmedge[service]"
    LLM_BASE_URL=https://api.openai.com/v1 LLM_API_KEY=sk-... \\
        uvicorn --app-dir examples chat_app:app

Without LLM_BASE_URL it expects the mock LLM: python -m llmedge.testing --port 8001
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import httpx
from fastapi import Depends, FastAPI, HTTPException

import llmedge
from llmedge.embedders import OpenAIEmbedder
from llmedge.fastapi import Monitor, RateLimit

BASE_URL = os.environ.get("LLM_BASE_URL", "http://127.0.0.1:8001/v1")
API_KEY = os.environ.get("LLM_API_KEY")
MODEL = os.environ.get("LLM_MODEL", "gpt-4o-mini")
EMBEDDING_MODEL = os.environ.get("LLM_EMBEDDING_MODEL", "text-embedding-3-small")

headers = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}
provider = httpx.AsyncClient(base_url=BASE_URL, headers=headers, timeout=30.0)
embedder = OpenAIEmbedder(BASE_URL, EMBEDDING_MODEL, api_key=API_KEY, dimensions=256)
cache = llmedge.SemanticCache(embedder=embedder, threshold=0.85, ttl=3600.0)


class ProviderRejected(Exception):
    """A 4xx from the provider: the request's fault, not the provider's."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"provider answered {status}: {text[:200]}")
        self.status = status


breaker = llmedge.CircuitBreaker(
    "provider", failure_threshold=5, recovery_timeout=30.0, exclude=(ProviderRejected,)
)
# the embeddings endpoint failing (or refusing a text) only turns the cache off
CACHE_ERRORS = (llmedge.UpstreamError, llmedge.UpstreamClientError, llmedge.CircuitOpenError)
# per API key, else per client address: 10 requests a minute, all at once if need be
limit = RateLimit(requests=(10, 60.0, 10), model=MODEL)
optimizer = llmedge.PromptOptimizer(MODEL, history_limit=6)
costs = llmedge.CostTracker()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await provider.aclose()
    embedder.close()


app = FastAPI(title="chat on llmedge", lifespan=lifespan)
Monitor(breakers=[breaker], caches={"answers": cache}, costs=costs, rate_limits=[limit]).install(
    app
)


@breaker  # a 5xx, a timeout or a refused connection counts against the provider
async def complete(messages: list[dict]) -> dict:
    r = await provider.post("/chat/completions", json={"model": MODEL, "messages": messages})
    if 400 <= r.status_code < 500:
        raise ProviderRejected(r.status_code, r.text)
    r.raise_for_status()
    return r.json()


@app.post("/chat")
async def chat(body: dict, key: str = Depends(limit)) -> dict:
    question = body.get("question")
    if not isinstance(question, str) or not question.strip():
        raise HTTPException(422, "body.question must be a non-empty string")
    partition = llmedge.partition_key(model=MODEL, temperature=0)
    try:
        hit = await cache.aget(question, partition=partition)
    except CACHE_ERRORS:
        hit = None  # embeddings unavailable: answer without the cache
    if hit is not None:
        return {"answer": hit.response, "cached": hit.kind}
    messages = optimizer.fit_messages(
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": question}]
    )
    try:
        reply = await complete(messages)
    except llmedge.CircuitOpenError as exc:
        retry = f"{max(1, round(exc.retry_after))}"
        raise HTTPException(503, "provider unavailable", headers={"Retry-After": retry}) from exc
    except ProviderRejected as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    except httpx.HTTPError as exc:
        raise HTTPException(502, f"provider failed: {exc}") from exc
    answer = reply["choices"][0]["message"]["content"]
    usage = reply.get("usage", {})
    costs.record(MODEL, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
    with contextlib.suppress(*CACHE_ERRORS):
        await cache.aset(question, answer, partition=partition)
    return {"answer": answer, "cached": None}

"""One cache for every gateway worker, through Redis (real Redis, real gunicorn).

* the pure-Python baseline of the shared cache (benches/baselines/shared_cache.py);
* ``gunicorn -w 4`` with ``LLMEDGE_REDIS_URL``: a question answered by one
  worker is a hit (exact, and semantic for a rewrite) in the others, through
  HTTP, with one upstream call in all; ``/health`` and ``/metrics`` show the
  replication;
* a short run of the multi-worker load test (loadtest/workers.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("gunicorn")
pytest.importorskip("fastapi")
pytest.importorskip("redis")
httpx = pytest.importorskip("httpx")

from conftest import load_script  # noqa: E402

from llmedge.testing import MockLLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))

from baselines.embed import PyHashingEmbedder  # noqa: E402
from baselines.shared_cache import RedisPyCache  # noqa: E402

pytestmark = pytest.mark.timeout(600)

QUESTION = "What is the capital of France?"
REWRITE = "What is the capital city of France?"  # cosine 0.85+ with the hashing embedder


lt = load_script("loadtest/workers.py", "loadtest_workers")


# --------------------------------------------------------------------- the baseline


def test_the_baseline_shares_entries_through_redis(redis_server):
    embed = PyHashingEmbedder(384).embed
    a = RedisPyCache(redis_server.url, embed, max_entries=3)
    b = RedisPyCache(redis_server.url, embed, max_entries=3)
    other = RedisPyCache(redis_server.url, embed, namespace="other")
    a.set(QUESTION, {"text": "Paris"}, "model-a")
    assert b.get("  what is the capital of FRANCE? ", "model-a") == ({"text": "Paris"}, "exact")
    assert b.get(REWRITE, "model-a") == ({"text": "Paris"}, "semantic")
    assert b.get(QUESTION, "model-b") is None  # another partition
    assert other.get(QUESTION, "model-a") is None  # another namespace
    # the same prompt again replaces the answer everywhere
    b.set(QUESTION, "Paris, France", "model-a")
    assert a.get(QUESTION, "model-a") == ("Paris, France", "exact")
    assert len(a) == 1
    s = b.stats()
    assert (s["exact_hits"], s["semantic_hits"], s["misses"], s["inserts"]) == (1, 1, 1, 1)


def test_the_baseline_is_bounded_least_recently_used_first(redis_server):
    embed = PyHashingEmbedder(384).embed
    a = RedisPyCache(redis_server.url, embed, max_entries=3)
    b = RedisPyCache(redis_server.url, embed, max_entries=3)
    questions = [
        "How do I reset my password?",
        "Why is the sky blue?",
        "What should I pack for a hiking trip?",
        "How do vaccines train the immune system?",
        "What is the time complexity of binary search?",
    ]
    for q in questions[:3]:
        a.set(q, q.upper(), "p")
    assert b.get(questions[0], "p") is not None  # used: the oldest is now questions[1]
    a.set(questions[3], "x", "p")
    b.set(questions[4], "y", "p")
    assert len(a) == 3
    assert a.get(questions[1], "p") is None and a.get(questions[2], "p") is None
    assert [a.get(q, "p") is not None for q in (questions[0], *questions[3:])] == [True] * 3
    assert a.stats()["evictions"] + b.stats()["evictions"] == 2
    # what is left in Redis is what the bound allows: no vector, prompt or entry of the evicted
    keys = {k.decode() for k in a.redis.keys("baseline:chat:*")}
    assert sum(1 for k in keys if k.startswith("baseline:chat:e:")) == 3
    part = a._part("p")
    for suffix in ("exact", "vec", "norm"):
        assert a.redis.hlen(f"baseline:chat:p:{part}:{suffix}") == 3


def test_the_baseline_survives_redis_loss_as_misses(redis_server):
    a = RedisPyCache(redis_server.url, PyHashingEmbedder(384).embed, timeout=0.2)
    a.set(QUESTION, "Paris", "p")
    redis_server.kill()
    assert a.get(QUESTION, "p") is None
    a.set(REWRITE, "Paris", "p")  # dropped, counted
    s = a.stats()
    assert s["redis_errors"] == 2 and s["misses"] == 1 and s["entries"] is None


# --------------------------------------------------------------------- through the gateway


async def _ask(pool, pid: int, question: str) -> str:
    conn = await pool.acquire(pid)
    try:
        r = await conn.client.post("/chat", json={"question": question})
        assert r.status_code == 200, r.text
        return r.headers["x-llmedge-cache"]
    finally:
        await pool.release(conn)


async def _get(pool, pid: int, path: str) -> httpx.Response:
    conn = await pool.acquire(pid)
    try:
        return await conn.client.get(path)
    finally:
        await pool.release(conn)


async def _health(pool, pid: int) -> dict:
    return (await _get(pool, pid, "/health")).json()


async def _wait_received(pool, pid: int, n: int) -> dict:
    """A worker's /health once its cache learned ``n`` entries from the others."""
    deadline = time.monotonic() + 30
    while True:
        shared = (await _health(pool, pid))["caches"]["chat"]["shared"]
        if shared["received"] >= n:
            return shared
        assert time.monotonic() < deadline, f"worker {pid} received {shared} within 30 s"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("backend", ["llmedge", "baseline"])
def test_a_set_in_one_worker_is_a_hit_in_the_others(redis_server, backend, tmp_path):
    with MockLLM(answer_tokens=8) as upstream:
        proc, url = lt.start_service(
            backend, 4, redis_server.url, upstream.base_url, tmp_path / "log"
        )
        try:
            asyncio.run(_set_here_hit_there(url, proc, upstream, backend))
        finally:
            proc.stop()
    assert not proc.pids()


async def _set_here_hit_there(url, proc, upstream, backend):
    pool = lt.Pool(url)
    try:
        first, *others = sorted(lt.worker_pids(proc))
        assert len(others) == 3
        upstream.reset_stats()
        assert await _ask(pool, first, QUESTION) == "none"
        for pid in others:
            if backend == "llmedge":  # the others learn it in the background
                await _wait_received(pool, pid, 1)
            assert await _ask(pool, pid, QUESTION) == "exact"
        assert await _ask(pool, others[0], REWRITE) == "semantic"
        assert upstream.stats()["requests"] == 1
        if backend != "llmedge":
            return
        health = await _health(pool, first)
        shared = health["caches"]["chat"]["shared"]
        assert shared["namespace"] == "chat" and shared["connected"] is True
        assert shared["sent"] >= 1
        text = (await _get(pool, others[1], "/metrics")).text
        assert 'llmedge_cache_shared_connected{cache="chat",namespace="chat"} 1.0' in text
        assert 'llmedge_cache_shared_received_total{cache="chat"}' in text
    finally:
        await pool.close()


# --------------------------------------------------------------------- the load test


def test_a_short_multi_worker_run(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMEDGE_DATA", str(tmp_path / "none"))  # the built-in prompt set
    argv = ["--scenario", "share", "--backend", "llmedge", "--requests", "150", "--users", "4",
            "--out", str(tmp_path)]  # fmt: skip
    assert lt.main(argv) == 0
    report = json.loads((tmp_path / "workers.json").read_text())
    assert report["left_running"] == []
    runs = {r["label"]: r for r in report["runs"]}
    assert set(runs) == {"share-llmedge-1w", "share-llmedge-4w", "share-llmedge-4w-redis"}
    for r in runs.values():
        assert r["summary"]["requests"] == 150 and r["summary"]["ok"] == 150
    alone, shared = runs["share-llmedge-4w"], runs["share-llmedge-4w-redis"]
    # every repeat and paraphrase went to a worker its question was not sent to
    assert alone["summary"]["repeats_elsewhere"] >= 0.95
    assert shared["summary"]["repeats_elsewhere"] >= 0.95
    # with one cache for all, those are hits; with one per worker, mostly not
    assert shared["summary"]["hit_rate"] > alone["summary"]["hit_rate"]
    assert shared["upstream_calls"] < alone["upstream_calls"]
    received = [w["cache"]["shared"]["received"] for w in shared["worker_stats"].values()]
    assert len(received) == 4 and all(n > 0 for n in received)
    text = (tmp_path / "workers.md").read_text()
    assert "| llmedge | 4 | yes |" in text and "## Goals" in text

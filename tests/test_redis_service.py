"""The reference service under ``gunicorn -w 4`` with ``LLMEDGE_REDIS_URL``: the
four workers share one rate limit and one breaker per upstream through Redis,
checked through HTTP; ``/health`` reports the store; losing Redis degrades the
service to its fallback without a single 5xx, and it recovers on its own."""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("gunicorn")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from test_chat_service_servers import gunicorn  # noqa: E402

from llmedge.testing import MockLLM  # noqa: E402

pytestmark = pytest.mark.timeout(300)

WORKERS = 4


def healths(url: str, workers: int = WORKERS) -> dict[int, dict]:
    """/health of every worker (new connections until each pid answered)."""
    seen: dict[int, dict] = {}
    for _ in range(400):
        r = httpx.get(url + "/health", timeout=10, headers={"Connection": "close"})
        body = r.json()
        seen[body["pid"]] = body
        if len(seen) == workers:
            return seen
    raise AssertionError(f"only {len(seen)} of {workers} workers answered /health")


async def post_many(url: str, n: int, concurrency: int, key: str) -> list[int]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as c:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> int:
            async with sem:
                r = await c.post(
                    "/chat",
                    json={"question": f"question {i}?"},
                    headers={"Authorization": f"Bearer {key}", "Connection": "close"},
                )
                return r.status_code

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def test_gunicorn_workers_share_one_limit_and_report_the_store(redis_server):
    with MockLLM(answer_tokens=8) as upstream:
        env = {
            "LLMEDGE_UPSTREAMS": upstream.base_url,
            "LLMEDGE_REDIS_URL": redis_server.url,
            "LLMEDGE_REDIS_TIMEOUT": "0.5",
            "LLMEDGE_REDIS_LOCAL_SHARE": str(WORKERS),
            # 40 requests per hour per key: nothing refills during the test
            "LLMEDGE_RATE_LIMIT": "1/3600/40",
        }
        with gunicorn(env, WORKERS) as url:
            codes = asyncio.run(post_many(url, 160, concurrency=16, key="tenant"))
            assert codes.count(200) == 40, sorted(set(codes))
            assert codes.count(429) == 120
            per_worker = healths(url)
            granted = {pid: h["rate_limits"]["chat"]["granted"] for pid, h in per_worker.items()}
            assert sum(granted.values()) == 40
            assert sum(1 for g in granted.values() if g > 0) >= 2, granted
            for h in per_worker.values():
                store = h["stores"]["redis"]
                assert store["connected"] is True and store["cluster"] is False
                assert store["scripts_loaded"] >= 1
                assert h["status"] == "healthy"
            # another key has its own limit, in every worker
            assert asyncio.run(post_many(url, 10, 5, key="other")) == [200] * 10

            # Redis lost: no 5xx, the local fallback (40 / 4 workers per hour each)
            redis_server.kill()
            codes = asyncio.run(post_many(url, 80, concurrency=8, key="fresh"))
            assert set(codes) <= {200, 429}, codes
            assert 0 < codes.count(200) <= 40
            # a worker notices when it next needs Redis: more requests reach them all
            deadline = time.monotonic() + 60
            while not all(h["status"] == "degraded" for h in healths(url).values()):
                assert time.monotonic() < deadline, "workers still healthy 60 s after the kill"
                codes = asyncio.run(post_many(url, 8, concurrency=8, key="wake"))
                assert set(codes) <= {200, 429}, codes
            for h in healths(url).values():
                assert h["stores"]["redis"]["connected"] is False
            metrics = httpx.get(url + "/metrics", timeout=10).text
            assert 'llmedge_store_connected{store="redis"} 0.0' in metrics

            # back on its own
            redis_server.restart()
            deadline = time.monotonic() + 60
            while not all(h["status"] == "healthy" for h in healths(url).values()):
                assert time.monotonic() < deadline, "workers did not reconnect within 60 s"
                time.sleep(0.2)
            codes = asyncio.run(post_many(url, 60, concurrency=8, key="after"))
            assert codes.count(200) == 40 and codes.count(429) == 20


def test_gunicorn_workers_share_their_breakers(redis_server):
    with MockLLM(answer_tokens=8) as upstream:
        env = {
            "LLMEDGE_UPSTREAMS": upstream.base_url,
            "LLMEDGE_REDIS_URL": redis_server.url,
            "LLMEDGE_REDIS_TIMEOUT": "0.5",
            "LLMEDGE_RATE_LIMIT": "off",
            "LLMEDGE_BREAKER_FAILURES": "3",
            "LLMEDGE_BREAKER_FAILURE_RATE": "0",
            "LLMEDGE_BREAKER_RECOVERY": "600",
        }
        with gunicorn(env, WORKERS) as url:
            upstream.set_faults(fail_all=True)
            upstream.reset_stats()
            codes = []
            for i in range(12):  # one at a time, on new connections: any worker
                r = httpx.post(
                    url + "/chat",
                    json={"question": f"down {i}?"},
                    headers={"Connection": "close"},
                    timeout=30,
                )
                codes.append(r.status_code)
                time.sleep(0.2)  # outcomes reach Redis in batches, 50 ms at most
            # three failures in the whole service open the breaker everywhere
            # (per-worker breakers would each let three through: up to 12)
            failed_upstream = upstream.stats()["requests"]
            assert 3 <= failed_upstream <= 4, (failed_upstream, codes)
            assert codes.count(502) == failed_upstream
            assert codes.count(503) == 12 - failed_upstream
            states = {
                pid: next(iter(h["breakers"].values()))["state"] for pid, h in healths(url).items()
            }
            assert set(states.values()) == {"open"}, states


def test_settings_read_the_redis_environment(monkeypatch):
    from test_chat_service import chat_app

    monkeypatch.setenv("LLMEDGE_REDIS_URL", "redis://r:6379/0")
    monkeypatch.setenv("LLMEDGE_REDIS_TIMEOUT", "0.2")
    monkeypatch.setenv("LLMEDGE_REDIS_LOCAL_SHARE", "4")
    s = chat_app.Settings.from_env()
    assert (s.redis_url, s.redis_timeout, s.redis_local_share) == ("redis://r:6379/0", 0.2, 4)
    monkeypatch.setenv("LLMEDGE_REDIS_URL", "redis://a:7000, redis://b:7001,")
    assert chat_app.Settings.from_env().redis_url == ["redis://a:7000", "redis://b:7001"]
    monkeypatch.delenv("LLMEDGE_REDIS_URL")
    assert chat_app.Settings.from_env().redis_url is None
    chat_app.Settings(
        upstreams=["http://x/v1"], backend="baseline", redis_url="redis://r"
    ).validate()
    with pytest.raises(ValueError, match="LLMEDGE_SERVICE_BACKEND=llmedge, got 'baseline'"):
        chat_app.Settings(
            upstreams=["http://x/v1"], backend="baseline", redis_url=["redis://a", "redis://b"]
        ).validate()
    assert chat_app.Settings.from_env().cache_namespace == "chat"
    monkeypatch.setenv("LLMEDGE_CACHE_NAMESPACE", " support ")
    assert chat_app.Settings.from_env().cache_namespace == "support"
    with pytest.raises(ValueError, match="LLMEDGE_CACHE_NAMESPACE.*'a b'"):
        chat_app.Settings(upstreams=["http://x/v1"], cache_namespace="a b").validate()
    with pytest.raises(ValueError, match="LLMEDGE_REDIS_LOCAL_SHARE.*0"):
        chat_app.Settings(upstreams=["http://x/v1"], redis_local_share=0).validate()

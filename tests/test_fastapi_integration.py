"""llmedge.fastapi: rate limiting, health, metrics and SSE through real FastAPI apps
(httpx.AsyncClient over httpx.ASGITransport)."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from conftest import FakeClock  # noqa: E402
from fastapi import Depends, FastAPI  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import llmedge  # noqa: E402
from llmedge.fastapi import (  # noqa: E402
    IncompleteStreamError,
    Monitor,
    RateLimit,
    cache_on_complete,
    coalesce,
    estimate_request_tokens,
    parse_openai_stream,
    process_memory,
    replay,
    sse_event,
    sse_response,
)


def client_for(app, host: str = "10.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(host, 1234))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def limited_app(limit: RateLimit, monitor: Monitor | None = None) -> FastAPI:
    app = FastAPI()
    (monitor or Monitor(breakers=[], rate_limits=[limit])).install(app)

    @app.post("/chat")
    async def chat(body: dict, key: str = Depends(limit)) -> dict:
        return {"key": key}

    return app


async def agen(items):
    for x in items:
        yield x


async def collect(it) -> list:
    return [x async for x in it]


def sse_events(text: str) -> list[str]:
    return [block for block in text.split("\n\n") if block]


# ---------------------------------------------------------------------------
# Rate limiting
# ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_429_with_retry_after_rounded_up_and_other_keys_unaffected():
    clock = FakeClock()
    limit = RateLimit(requests=(1, 60.0, 2), clock=clock)
    async with client_for(limited_app(limit)) as c:
        alice = {"Authorization": "Bearer sk-alice"}
        assert (await c.post("/chat", json={}, headers=alice)).status_code == 200
        assert (await c.post("/chat", json={}, headers=alice)).status_code == 200
        r = await c.post("/chat", json={}, headers=alice)
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "60"
        err = r.json()["error"]
        assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
        assert "try again in 60s" in err["message"]
        clock.advance(30.0)
        assert (await c.post("/chat", json={}, headers=alice)).headers["Retry-After"] == "30"
        clock.advance(29.5)  # 0.5 s left: rounded up to 1
        assert (await c.post("/chat", json={}, headers=alice)).headers["Retry-After"] == "1"
        # another API key, in either header, and anonymous clients are unaffected
        bob = {"x-api-key": "sk-bob"}
        assert (await c.post("/chat", json={}, headers=bob)).status_code == 200
        assert (await c.post("/chat", json={})).status_code == 200
        clock.advance(0.5)
        assert (await c.post("/chat", json={}, headers=alice)).status_code == 200
    assert limit.rejections == {"requests": 3}
    assert limit.granted == 5


@pytest.mark.asyncio
async def test_clients_without_key_are_limited_by_address():
    limit = RateLimit(requests=(1, 60.0, 1), clock=FakeClock())
    app = limited_app(limit)
    async with client_for(app, "10.0.0.1") as a, client_for(app, "10.0.0.2") as b:
        assert (await a.post("/chat", json={})).json() == {"key": "ip:10.0.0.1"}
        assert (await a.post("/chat", json={})).status_code == 429
        assert (await b.post("/chat", json={})).status_code == 200
        r = await a.post("/chat", json={}, headers={"Authorization": "Bearer k"})
        # the API key itself is not kept: its hash is
        assert r.status_code == 200
        assert r.json()["key"] == "key:" + hashlib.sha256(b"k").hexdigest()[:24]


@pytest.mark.asyncio
async def test_tokens_per_minute_charged_with_estimate_and_too_large_is_413():
    clock = FakeClock()
    limit = RateLimit(
        requests=(100, 1.0), tokens=(100, 60.0, 100), clock=clock, estimate=lambda b, m: b["n"]
    )
    async with client_for(limited_app(limit)) as c:
        assert (await c.post("/chat", json={"n": 60})).status_code == 200
        r = await c.post("/chat", json={"n": 50})
        assert r.status_code == 429 and r.json()["error"]["type"] == "tokens"
        assert r.headers["Retry-After"] == "6"  # 10 tokens missing at 100 per 60 s
        assert (await c.post("/chat", json={"n": 40})).status_code == 200  # not charged before
        r = await c.post("/chat", json={"n": 150})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert limit.rejections == {"requests": 0, "tokens": 2}


@pytest.mark.asyncio
async def test_limits_on_a_store_decide_in_redis_with_the_binding_limit(redis_server):
    store = llmedge.RedisStore(redis_server.url, timeout=0.5)
    multi = llmedge.MultiRateLimiter(
        {"requests": (100, 1.0), "tokens": (100, 60.0, 100)}, store=store, name="api"
    )
    limit = RateLimit(limiter=multi, estimate=lambda b, m: b["n"])
    single = RateLimit(limiter=llmedge.RateLimiter(1, 3600.0, store=store, name="one"))
    async with client_for(limited_app(limit)) as c, client_for(limited_app(single)) as d:
        assert (await c.post("/chat", json={"n": 60})).status_code == 200
        r = await c.post("/chat", json={"n": 50})
        assert r.status_code == 429 and r.json()["error"]["type"] == "tokens"
        assert r.headers["Retry-After"] in {"5", "6"}  # 10 tokens missing at 100 per 60 s
        assert (await c.post("/chat", json={"n": 40})).status_code == 200  # not charged before
        assert (await d.post("/chat", json={})).status_code == 200
        r = await d.post("/chat", json={})
        assert r.status_code == 429 and r.json()["error"]["type"] == "requests"
        assert 3590 <= int(r.headers["Retry-After"]) <= 3600
    assert limit.rejections == {"requests": 0, "tokens": 1}
    assert multi.shared and store.health()["connected"]


@pytest.mark.asyncio
async def test_concurrent_requests_get_exactly_the_burst():
    limit = RateLimit(requests=(1, 3600.0, 10), clock=FakeClock())  # no refill in the test
    async with client_for(limited_app(limit)) as c:
        headers = {"x-api-key": "hammer"}
        rs = await asyncio.gather(*(c.post("/chat", json={}, headers=headers) for _ in range(50)))
    codes = [r.status_code for r in rs]
    assert codes.count(200) == 10 and codes.count(429) == 40
    assert limit.granted == 10 and limit.rejections == {"requests": 40}


@pytest.mark.asyncio
async def test_without_the_error_handler_fastapi_still_answers_429_with_retry_after():
    limit = RateLimit(requests=(1, 60.0, 1), clock=FakeClock())
    app = FastAPI()  # no Monitor.install, no install_error_handler

    @app.get("/x", dependencies=[Depends(limit)])
    async def x() -> dict:
        return {}

    async with client_for(app) as c:
        assert (await c.get("/x")).status_code == 200
        r = await c.get("/x")
    assert r.status_code == 429 and r.headers["Retry-After"] == "60"
    assert r.json()["detail"]["error"]["code"] == "rate_limit_exceeded"


def test_estimate_request_tokens_counts_both_request_shapes():
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    n = llmedge.count_messages(msgs, "gpt-4o")
    assert estimate_request_tokens({"model": "gpt-4o", "messages": msgs}, "gpt-4o") == n
    assert estimate_request_tokens({"question": msgs[0]["content"]}, "gpt-4o") == n
    assert estimate_request_tokens({"messages": msgs, "max_tokens": 50}, "gpt-4o") == n + 50
    assert estimate_request_tokens(None, "gpt-4o") == 0
    assert estimate_request_tokens({"messages": [{"bad": 1}]}, "gpt-4o") > 0


@pytest.mark.asyncio
async def test_rate_limit_on_a_plain_rate_limiter():
    limiter = llmedge.RateLimiter(1, per=10.0, burst=1, clock=FakeClock())
    limit = RateLimit(limiter=limiter)
    async with client_for(limited_app(limit)) as c:
        assert (await c.post("/chat", json={})).status_code == 200
        r = await c.post("/chat", json={})
        assert r.status_code == 429 and r.headers["Retry-After"] == "10"


def test_rate_limit_bad_configuration():
    with pytest.raises(ValueError, match="requests=.*tokens=.*limiter="):
        RateLimit()
    with pytest.raises(ValueError, match="not both"):
        RateLimit(requests=(1, 1.0), limiter=llmedge.RateLimiter(1))
    with pytest.raises(ValueError, match=r"requests must be a tuple.*\(5,\)"):
        RateLimit(requests=(5,))
    with pytest.raises(ValueError, match="rate"):
        RateLimit(requests=(-1, 1.0))
    with pytest.raises(TypeError, match="try_acquire"):
        RateLimit(limiter=object())
    with pytest.raises(ValueError, match="'requests' and/or 'tokens'"):
        RateLimit(limiter=llmedge.RateLimiter.multi({"calls": (1, 1.0)}))
    with pytest.raises(llmedge.UnknownModelError):
        RateLimit(requests=(1, 1.0), model="gpt4o-mini")
    with pytest.raises(TypeError, match="key must be a callable"):
        RateLimit(requests=(1, 1.0), key="user")


# ---------------------------------------------------------------------------
# Health and metrics
# ---------------------------------------------------------------------------


def monitored_app(monitor: Monitor) -> FastAPI:
    app = FastAPI()
    monitor.install(app)
    return app


@pytest.mark.asyncio
async def test_health_states_follow_the_breakers():
    clock = FakeClock()
    a = llmedge.CircuitBreaker("health-a", failure_threshold=1, recovery_timeout=10, clock=clock)
    b = llmedge.CircuitBreaker("health-b", failure_threshold=1, recovery_timeout=10, clock=clock)
    cache = llmedge.SemanticCache()
    cache.set("q", "a")
    monitor = Monitor(breakers=[a, b], caches=cache)
    async with client_for(monitored_app(monitor)) as c:
        r = await c.get("/health")
        body = r.json()
        assert r.status_code == 200 and body["status"] == "healthy"
        assert set(body["breakers"]) == {"health-a", "health-b"}
        assert body["breakers"]["health-a"]["state"] == "closed"
        assert body["caches"]["default"]["entries"] == 1
        assert body["memory"]["rss_bytes"] > 1_000_000

        def fail():
            raise ConnectionError("down")

        with pytest.raises(ConnectionError):
            a.call(fail)
        r = await c.get("/health")
        assert r.status_code == 200 and r.json()["status"] == "degraded"
        health_a = r.json()["breakers"]["health-a"]
        assert {k: health_a[k] for k in ("state", "failures", "consecutive_failures")} == {
            "state": "open",
            "failures": 1,
            "consecutive_failures": 1,
        }
        assert health_a["retry_after"] == 10.0
        b.force_open()
        r = await c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "unhealthy"
        clock.advance(10.0)
        with a:  # a probe runs: a is half-open, so degraded, not unhealthy
            assert a.state == "half_open"
            r = await c.get("/health")
            assert r.status_code == 200 and r.json()["status"] == "degraded"
        b.reset()
        a.reset()
        r = await c.get("/health")
        assert r.json()["status"] == "healthy"


@pytest.mark.asyncio
async def test_health_without_breakers_is_healthy_and_registry_mode_sees_new_breakers():
    monitor = Monitor()  # every registered breaker, read at each request
    async with client_for(monitored_app(monitor)) as c:
        br = llmedge.CircuitBreaker("health-registry-late")
        br.force_open()
        body = (await c.get("/health")).json()
        assert body["breakers"]["health-registry-late"]["state"] == "forced_open"
        br.reset()


def test_process_memory_reports_rss():
    mem = process_memory()
    assert mem["rss_bytes"] > 1_000_000 and mem["source"] in ("psutil", "statm")


@pytest.mark.asyncio
async def test_metrics_after_traffic():
    clock = FakeClock()
    breaker = llmedge.CircuitBreaker("metrics-up", failure_threshold=2, clock=clock)
    cache = llmedge.SemanticCache()
    costs = llmedge.CostTracker()
    limit = RateLimit(requests=(1, 60.0, 1), clock=clock, name="per-key")
    monitor = Monitor(
        breakers=[breaker], caches={"answers": cache}, costs=costs, rate_limits=[limit]
    )
    app = FastAPI()
    monitor.install(app)

    @app.post("/ask", dependencies=[Depends(limit)])
    async def ask(body: dict) -> dict:
        hit = await cache.aget(body["q"])
        if hit is None:
            await cache.aset(body["q"], "answer")
            costs.record("gpt-4o-mini", 100, 20)
        return {"cached": None if hit is None else hit.kind}

    async with client_for(app) as c:
        for i, q in enumerate(["What is the capital of France?"] * 2 + ["What is a cat?"]):
            r = await c.post("/ask", json={"q": q}, headers={"x-api-key": f"k{i}"})
            assert r.status_code == 200
        assert (
            await c.post("/ask", json={"q": "x"}, headers={"x-api-key": "k0"})
        ).status_code == 429

        def fail():
            raise ConnectionError("down")

        for _ in range(2):
            with pytest.raises(ConnectionError):
                breaker.call(fail)
        text = (await c.get("/metrics")).text
    lines = set(text.splitlines())
    assert 'llmedge_cache_hits_total{cache="answers",kind="exact"} 1.0' in lines
    assert 'llmedge_cache_hits_total{cache="answers",kind="semantic"} 0.0' in lines
    assert 'llmedge_cache_misses_total{cache="answers"} 2.0' in lines
    assert 'llmedge_cache_entries{cache="answers"} 2.0' in lines
    assert 'llmedge_breaker_state{breaker="metrics-up",state="open"} 1.0' in lines
    assert 'llmedge_breaker_state{breaker="metrics-up",state="closed"} 0.0' in lines
    assert 'llmedge_breaker_failures_total{breaker="metrics-up"} 2.0' in lines
    assert (
        'llmedge_breaker_transitions_total{breaker="metrics-up",from_state="closed",'
        'to_state="open"} 1.0'
    ) in lines
    assert 'llmedge_rate_limit_rejections_total{limit="requests",limiter="per-key"} 1.0' in lines
    assert 'llmedge_rate_limit_granted_total{limiter="per-key"} 3.0' in lines
    assert (
        'llmedge_llm_tokens_total{kind="input",model="gpt-4o-mini",tracker="default"} 200.0'
    ) in lines
    assert 'llmedge_llm_requests_total{model="gpt-4o-mini",tracker="default"} 2.0' in lines
    cost = costs.summary()["models"]["gpt-4o-mini"]["cost"]
    assert f'llmedge_llm_cost_usd_total{{model="gpt-4o-mini",tracker="default"}} {cost}' in lines
    assert (
        'llmedge_http_request_duration_seconds_count{method="POST",route="/ask",status="200"} 3.0'
    ) in lines
    assert (
        'llmedge_http_request_duration_seconds_count{method="POST",route="/ask",status="429"} 1.0'
    ) in lines
    assert any(line.startswith("llmedge_process_resident_memory_bytes ") for line in lines)


def test_each_monitor_has_its_own_registry():
    m1, m2 = Monitor(breakers=[]), Monitor(breakers=[])
    assert m1.registry is not m2.registry
    m1.latency.labels("GET", "/x", "200").observe(0.1)
    assert b'route="/x"' in m1.metrics_text()
    assert b'route="/x"' not in m2.metrics_text()


def test_monitor_bad_configuration():
    with pytest.raises(ValueError, match="namespace.*'1bad'"):
        Monitor(namespace="1bad")
    with pytest.raises(TypeError, match="not a circuit breaker"):
        Monitor(breakers=[object()])
    with pytest.raises(TypeError, match=r"caches\['c'\]"):
        Monitor(caches={"c": 3})
    with pytest.raises(TypeError, match=r"costs\['default'\]"):
        Monitor(costs="tracker")
    with pytest.raises(ValueError, match="buckets"):
        Monitor(buckets=[])
    with pytest.raises(ValueError, match="buckets"):
        Monitor(buckets=[0.1, float("nan")])
    with pytest.raises(TypeError, match="rate_limits"):
        Monitor(rate_limits=[object()])


# ---------------------------------------------------------------------------
# Server-sent events
# ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_coalesce_flushes_first_chunk_sentences_and_every_n():
    chunks = ["Hello", " there", " my", " friend.", " How", " are", " you", " doing", " on", " x"]
    out = await collect(coalesce(agen(chunks), every=3))
    assert out == ["Hello", " there my friend.", " How are you", " doing on x"]
    out = await collect(coalesce(agen(chunks), every=100, first_immediately=False))
    assert out == ["Hello there my friend.", " How are you doing on x"]
    out = await collect(coalesce(agen(chunks), every=2, sentence=False, first_immediately=False))
    assert out == ["Hello there", " my friend.", " How are", " you doing", " on x"]
    out = await collect(
        coalesce(agen(["a\n", "b", "", "c?", "d"]), every=9, first_immediately=False)
    )
    assert out == ["a\n", "bc?", "d"]


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.text(alphabet="ab .!?\n", max_size=6), max_size=30),
    every=st.integers(1, 6),
    sentence=st.booleans(),
    first=st.booleans(),
    max_delay=st.sampled_from([None, 60.0]),
)
def test_coalesce_keeps_the_text(chunks, every, sentence, first, max_delay):
    it = coalesce(
        agen(chunks), every=every, sentence=sentence, first_immediately=first, max_delay=max_delay
    )
    out = asyncio.run(collect(it))
    assert "".join(out) == "".join(chunks)
    plain = coalesce(agen(chunks), every=every, sentence=sentence, first_immediately=first)
    assert out == asyncio.run(collect(plain))  # a delay that never fires changes nothing
    assert all(out) and len(out) <= len([c for c in chunks if c])
    assert all(len(o) <= sum(len(c) for c in chunks) for o in out)


@pytest.mark.asyncio
async def test_coalesce_max_delay_flushes_while_upstream_is_silent():
    gate = asyncio.Event()

    async def source():
        yield "first"
        yield " second"
        await gate.wait()
        yield " third"

    it = coalesce(source(), every=10, max_delay=0.01)
    assert await anext(it) == "first"
    assert await anext(it) == " second"  # flushed by the delay, not by the (blocked) source
    gate.set()
    assert await anext(it) == " third"
    with pytest.raises(StopAsyncIteration):
        await anext(it)


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet="ab \n\t.é", max_size=60), n=st.integers(1, 4))
def test_replay_reproduces_the_text(text, n):
    out = asyncio.run(collect(replay(text, words_per_chunk=n)))
    assert "".join(out) == text
    assert all(out)


@pytest.mark.asyncio
async def test_sse_bad_configuration():
    with pytest.raises(ValueError, match="format must be 'text' or 'openai', got 'xml'"):
        sse_response(agen([]), format="xml")
    with pytest.raises(ValueError, match="every must be an int >= 1.*0"):
        sse_response(agen([]), every=0)
    with pytest.raises(ValueError, match="max_delay"):
        sse_response(agen([]), max_delay=-1)
    with pytest.raises(TypeError, match="final"):
        sse_response(agen([]), final="x")
    with pytest.raises(TypeError, match="str"):
        await collect(replay(42))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="words_per_chunk"):
        await collect(replay("x", words_per_chunk=0))
    with pytest.raises(ValueError, match="every"):
        await collect(coalesce(agen(["x"]), every=True))


def test_sse_event_encoding():
    assert sse_event("a\nb") == b"data: a\ndata: b\n\n"
    assert sse_event({"x": 1}, event="e", id="7") == b'id: 7\nevent: e\ndata: {"x":1}\n\n'


def sse_app(make_chunks, **kwargs) -> FastAPI:
    app = FastAPI()

    @app.get("/stream")
    async def stream():
        return sse_response(make_chunks(), **kwargs)

    return app


@pytest.mark.asyncio
async def test_sse_response_text_format():
    app = sse_app(
        lambda: agen(["One", " two.", " Three", " four"]),
        every=8,
        final=lambda: {"cached": "none"},
    )
    async with client_for(app) as c:
        r = await c.get("/stream")
    assert r.headers["content-type"].startswith("text/event-stream")
    assert sse_events(r.text) == [
        'data: {"content":"One"}',
        'data: {"content":" two."}',
        'data: {"content":" Three four"}',
        'data: {"done":true,"cached":"none"}',
        "data: [DONE]",
    ]


@pytest.mark.asyncio
async def test_sse_response_openai_format_with_usage():
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    app = sse_app(
        lambda: agen(["Hi", " there."]),
        format="openai",
        model="gpt-4o",
        completion_id="chatcmpl-1",
        final=lambda: {"usage": usage},
    )
    async with client_for(app) as c:
        r = await c.get("/stream")
    events = sse_events(r.text)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert all(
        ch["id"] == "chatcmpl-1" and ch["object"] == "chat.completion.chunk" for ch in chunks
    )
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"])
    assert text == "Hi there."
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == usage
    # the same text through an upstream parser gives the text back
    got = await collect(parse_openai_stream(agen(r.text.split("\n"))))
    assert "".join(got) == "Hi there."


@pytest.mark.asyncio
async def test_sse_response_reports_a_failed_stream_without_done():
    async def broken():
        yield "partial"
        raise IncompleteStreamError("upstream stream ended without data: [DONE]")

    async with client_for(sse_app(broken)) as c:
        r = await c.get("/stream")
    events = sse_events(r.text)
    assert events[0] == 'data: {"content":"partial"}'
    assert events[-1].startswith("event: error\ndata: ")
    assert json.loads(events[-1].split("data: ", 1)[1])["error"]["code"] == "stream_error"
    assert "data: [DONE]" not in events


# ---------------------------------------------------------------------------
# Caching streams only when complete
# ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_cache_on_complete_stores_a_completed_stream():
    cache = llmedge.SemanticCache()
    seen = []
    out = await collect(
        cache_on_complete(
            agen(["The answer", " is 42."]),
            cache,
            "What is the answer?",
            partition={"model": "m"},
            on_complete=seen.append,
        )
    )
    assert out == ["The answer", " is 42."]
    hit = cache.get("what is the answer?", partition={"model": "m"})
    assert hit is not None and hit.response == "The answer is 42."
    assert seen == ["The answer is 42."]
    assert cache.get("What is the answer?", partition={"model": "other"}) is None


@pytest.mark.asyncio
async def test_cache_on_complete_skips_errors_cancellation_disconnect_and_cut_streams():
    cache = llmedge.SemanticCache()

    async def failing():
        yield "half"
        raise ConnectionError("reset")

    with pytest.raises(ConnectionError):
        await collect(cache_on_complete(failing(), cache, "q1"))

    # the client went away: the response closes the iterator early
    it = cache_on_complete(agen(["a", "b", "c"]), cache, "q2")
    assert await anext(it) == "a"
    await it.aclose()

    # cancellation while waiting for the upstream
    gate = asyncio.Event()

    async def slow():
        yield "x"
        await gate.wait()
        yield "y"

    async def consume():
        return await collect(cache_on_complete(slow(), cache, "q3"))

    task = asyncio.ensure_future(consume())
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    # an upstream SSE stream cut without [DONE]
    lines = ['data: {"choices":[{"delta":{"content":"cut"}}]}', ""]
    with pytest.raises(IncompleteStreamError, match="without data: \\[DONE\\]"):
        await collect(cache_on_complete(parse_openai_stream(agen(lines)), cache, "q4"))

    assert len(cache) == 0
    assert all(cache.get(q) is None for q in ("q1", "q2", "q3", "q4"))


@pytest.mark.asyncio
async def test_parse_openai_stream_usage_errors_and_malformed_events():
    usage = []
    lines = [
        ": comment",
        'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}',
        'data: {"choices":[{"delta":{"content":"Hel"}}]}',
        "",
        'data: {"choices":[{"delta":{"content":"lo"},"finish_reason":null}]}',
        'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}',
        "data: [DONE]",
    ]
    out = await collect(parse_openai_stream(agen(lines), on_usage=usage.append))
    assert out == ["Hel", "lo"]
    assert usage == [{"prompt_tokens": 1, "completion_tokens": 2}]
    with pytest.raises(IncompleteStreamError, match="reported an error"):
        await collect(parse_openai_stream(agen(['data: {"error":{"message":"boom"}}'])))
    with pytest.raises(IncompleteStreamError, match="malformed"):
        await collect(parse_openai_stream(agen(["data: {not json"])))
    assert issubclass(IncompleteStreamError, llmedge.LlmEdgeError)
    assert issubclass(IncompleteStreamError, ConnectionError)


def test_import_llmedge_does_not_import_fastapi():
    import subprocess
    import sys

    code = (
        "import sys, llmedge; "
        "bad = [m for m in ('fastapi', 'starlette', 'prometheus_client') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr

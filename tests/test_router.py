"""llmedge.Router against real mock upstreams (llmedge.testing): each
strategy and the hedging do what they promise, faults are survived, bad
configuration is refused."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from conftest import FakeClock

import llmedge
from llmedge import AllUpstreamsFailedError, Retry, Router, Upstream, UpstreamClientError
from llmedge.sse import event_content
from llmedge.testing import MockLLM

pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

_names = itertools.count()


def ask(i: int = 0) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question {i}"}]}


@pytest.fixture(scope="module")
def mocks():
    with (
        MockLLM(answer_tokens=8) as a,
        MockLLM(answer_tokens=8) as b,
        MockLLM(answer_tokens=8) as c,
    ):
        yield a, b, c


@pytest.fixture()
def ups(mocks):
    for m in mocks:
        m.clear_faults()
        m.configure(ttft=0.0, tpot=0.0)
        m.reset_stats()
    yield mocks
    for m in mocks:
        m.clear_faults()


def make(mocks, n=2, *, ups_kw=None, **kw) -> Router:
    ups_kw = ups_kw or [{}] * n
    upstreams = [
        Upstream(m.base_url, name=f"u{i}", **extra)
        for i, (m, extra) in enumerate(zip(mocks[:n], ups_kw, strict=True))
    ]
    kw.setdefault("name", f"router-test-{next(_names)}")
    return Router(upstreams, **kw)


def requests(m: MockLLM) -> int:
    return m.stats()["requests"]


@pytest.mark.asyncio
async def test_answers_with_the_upstream_body_and_what_was_tried(ups):
    async with make(ups) as r:
        res = await r.achat(ask(), temperature=0.5)
    assert res.body["object"] == "chat.completion"
    assert res.body["choices"][0]["message"]["content"] == llmedge.testing.mock_answer(
        "gpt-4o-mini", ask()["messages"], 8
    )
    assert res.upstream == "u0" and [a.outcome for a in res.attempts] == ["ok"]
    assert res.cost > 0 and res.elapsed >= 0


@pytest.mark.asyncio
async def test_ordered_falls_back_and_a_failing_upstream_opens_its_breaker(ups):
    a, b = ups[0], ups[1]
    a.set_faults(fail_all=True, status=500)
    clock = FakeClock()
    async with make(
        ups, breaker={"failure_threshold": 3, "recovery_timeout": 30}, clock=clock
    ) as r:
        for i in range(10):
            res = await r.achat(ask(i))
            assert res.upstream == "u1"
        assert requests(a) == 3 and requests(b) == 10
        assert r.stats()["u0"]["breaker"] == "open"
        assert res.attempts[0].outcome == "circuit_open"
        clock.advance(31)
        a.clear_faults()
        res = await r.achat(ask())
        assert res.upstream == "u0"


@pytest.mark.asyncio
async def test_client_errors_pass_back_without_fallback_or_breaker_failure(ups):
    a, b = ups[0], ups[1]
    a.set_faults(fail_all=True, status=400)
    async with make(ups) as r:
        with pytest.raises(UpstreamClientError) as info:
            await r.achat(ask())
        assert info.value.status == 400 and info.value.body["error"]["code"] == "invalid_request"
        assert requests(b) == 0
        assert r.breakers[0].metrics()["failures"] == 0


@pytest.mark.asyncio
async def test_all_failed_reports_each_attempt(ups):
    for m in ups[:2]:
        m.set_faults(fail_all=True, status=500)
    async with make(ups, retry=Retry(2, jitter="none", base=0.0)) as r:
        with pytest.raises(AllUpstreamsFailedError) as info:
            await r.achat(ask())
    err = info.value
    assert [a.outcome for a in err.attempts] == ["error", "error"]
    assert [e.status for e in err.errors] == [500, 500] and not err.timeout


@pytest.mark.asyncio
async def test_429_retry_after_cools_the_upstream_down(ups):
    a = ups[0]
    a.set_faults(fail_all=True, status=429, retry_after=30)
    clock = FakeClock()
    async with make(ups, clock=clock) as r:
        for i in range(5):
            assert (await r.achat(ask(i))).upstream == "u1"
        assert requests(a) == 1  # then skipped while it asked us to wait
        assert r.stats()["u0"]["cooling_down"] == 30
        clock.advance(30)
        a.clear_faults()
        assert (await r.achat(ask())).upstream == "u0"


@pytest.mark.asyncio
async def test_a_hung_upstream_costs_one_timeout_per_breaker_period(ups):
    a = ups[0]
    a.set_faults(timeout_rate=1.0, hang=60)
    clock = FakeClock()
    slow = {"read_timeout": 0.2, "timeout": 0.2}
    kw = {"breaker": {"failure_threshold": 1, "recovery_timeout": 10}, "clock": clock}
    async with make(ups, ups_kw=[slow, {}], **kw) as r:
        for _period in range(3):
            for i in range(5):
                res = await r.achat(ask(i))
                assert res.upstream == "u1"
            clock.advance(10.5)
        assert a.stats()["timeouts"] == 3  # one per period, each a half-open probe
        assert res.attempts[0].outcome == "circuit_open"


@pytest.mark.asyncio
async def test_no_request_waits_past_its_deadline(ups):
    for m in ups[:2]:
        m.set_faults(timeout_rate=1.0, hang=60)
    slow = {"read_timeout": 60, "timeout": 60, "connect_timeout": 0.2}
    async with make(ups, ups_kw=[slow, slow], deadline=0.3) as r:
        with pytest.raises(AllUpstreamsFailedError) as info:
            await r.achat(ask())
        assert info.value.timeout
        # the hang is 60 s: only the deadline can have ended the request
        assert [a.outcome for a in info.value.attempts] == ["cancelled"]
        with pytest.raises(AllUpstreamsFailedError):
            s = await r.astream(ask())
            await s.aclose()


@pytest.mark.asyncio
async def test_retries_never_exceed_the_budget(ups):
    a = ups[0]
    a.set_faults(fail_all=True, status=503, retry_after=0)
    retry = Retry(4, base=0.0, jitter="none", budget=0.1, min_retries_per_second=0.0)
    kw = {"breaker": {"failure_threshold": 1000}, "retry": retry}
    async with make(ups, n=1, **kw) as r:
        for i in range(50):
            with pytest.raises(AllUpstreamsFailedError):
                await r.achat(ask(i))
    assert requests(a) == 50 + 5


@pytest.mark.asyncio
async def test_least_latency_sends_less_to_the_slow_upstream(ups):
    a, b = ups[0], ups[1]
    a.configure(ttft=0.05)
    async with make(ups, strategy="least_latency", explore_after=None) as r:
        for i in range(40):
            await r.achat(ask(i))
        stats = r.stats()
    assert requests(a) <= 2 and requests(b) >= 38
    assert stats["u0"]["latency_ewma"] > stats["u1"]["latency_ewma"]


@pytest.mark.asyncio
async def test_least_cost_sends_more_to_the_cheap_upstream(ups):
    prices = [{"price": (5.0, 15.0)}, {"price": (0.15, 0.6)}]
    async with make(ups, ups_kw=prices, strategy="least_cost") as r:
        results = [await r.achat(ask(i)) for i in range(20)]
    assert {res.upstream for res in results} == {"u1"}
    assert requests(ups[1]) == 20 and requests(ups[0]) == 0
    # the cost is the answering upstream's price
    u = results[0].body["usage"]
    assert results[0].cost == pytest.approx(
        (u["prompt_tokens"] * 0.15 + u["completion_tokens"] * 0.6) / 1e6
    )


@pytest.mark.asyncio
async def test_least_cost_prefers_a_dearer_upstream_when_the_cheap_one_is_too_slow(ups):
    ups[1].configure(ttft=0.2)
    prices = [{"price": (5.0, 15.0)}, {"price": (0.15, 0.6)}]
    kw = {"strategy": "least_cost", "latency_target": 0.1, "explore_after": None}
    async with make(ups, ups_kw=prices, **kw) as r:
        for i in range(10):
            await r.achat(ask(i))
    assert requests(ups[1]) == 1 and requests(ups[0]) == 9


@pytest.mark.asyncio
async def test_weighted_follows_the_weights(ups):
    weights = [{"weight": 3.0}, {"weight": 1.0}]
    async with make(ups, ups_kw=weights, strategy="weighted", seed=5) as r:
        for i in range(200):
            await r.achat(ask(i))
    share = requests(ups[0]) / 200
    assert 0.65 < share < 0.85


@pytest.mark.asyncio
async def test_least_busy_spreads_concurrent_requests(ups):
    for m in ups:
        m.configure(ttft=0.05)
    async with make(ups, n=3, strategy="least_busy") as r:
        await asyncio.gather(*(r.achat(ask(i)) for i in range(30)))
    assert [requests(m) for m in ups] == [10, 10, 10]


@pytest.mark.asyncio
async def test_exploration_brings_a_recovered_upstream_back(ups):
    a = ups[0]
    a.set_faults(error_rate=1.0)
    clock = FakeClock()
    kw = {"strategy": "least_latency", "explore_after": 5.0, "clock": clock}
    async with make(ups, **kw) as r:
        for i in range(10):
            await r.achat(ask(i))
        assert requests(a) <= 2
        a.clear_faults()
        ups[1].configure(ttft=0.5)
        clock.advance(6)
        res = await r.achat(ask())
        # explored: raced against the usual pick, and it answered first
        assert res.upstream == "u0"
        assert {(x.upstream, x.outcome) for x in res.attempts} == {
            ("u0", "ok"),
            ("u1", "cancelled"),
        }
        assert r.stats()["u0"]["error_rate"] < 1.0


@pytest.mark.asyncio
async def test_hedging_sends_a_second_request_after_the_p95_and_cancels_the_loser(ups):
    a = ups[0]
    async with make(ups, hedge=True, hedge_min_samples=5) as r:
        for i in range(10):
            await r.achat(ask(i))  # a hedge may win now and then: that is the point
        before = r.stats()["u0"]["cancellations"]
        a.set_faults(timeout_rate=1.0, hang=60)  # accepts, then never answers
        res = await r.achat(ask())
        assert res.upstream == "u1"
        outcomes = {(x.upstream, x.outcome, x.hedge) for x in res.attempts}
        assert outcomes == {("u1", "ok", True), ("u0", "cancelled", False)}
        assert r.stats()["u0"]["cancellations"] == before + 1
        assert r.breakers[0].metrics()["failures"] == 0  # a lost hedge is no failure


@pytest.mark.asyncio
async def test_streams_commit_on_the_first_token_and_hedge_a_slow_one(ups):
    a = ups[0]
    async with make(ups, hedge=True, hedge_min_samples=5) as r:
        for i in range(6):
            s = await r.astream(ask(i), stream_options={"include_usage": True})
            chunks = [c async for c in s]
            assert s.usage["completion_tokens"] > 0 and s.cost > 0
        text = "".join(event_content(c) for c in chunks)
        assert text == llmedge.testing.mock_answer("gpt-4o-mini", ask(5)["messages"], 8)
        a.configure(ttft=30.0)  # headers at once, then no token
        s = await r.astream(ask())
        assert s.upstream == "u1"
        assert [c async for c in s]
        assert ("u0", "cancelled") in {(x.upstream, x.outcome) for x in s.attempts}


@pytest.mark.asyncio
async def test_a_stream_cut_before_its_first_token_falls_back(ups):
    ups[0].configure(answer_tokens=1)
    ups[0].set_faults(break_rate=1.0)  # cut at half of one token: before it
    async with make(ups) as r:
        s = await r.astream(ask())
        assert s.upstream == "u1" and [a.outcome for a in s.attempts] == ["error", "ok"]
        await s.aclose()
    ups[0].configure(answer_tokens=8)


@pytest.mark.asyncio
async def test_a_stream_cut_half_way_raises_and_counts_as_a_failure(ups):
    ups[0].set_faults(break_rate=1.0)
    async with make(ups) as r:
        s = await r.astream(ask())
        got = []
        with pytest.raises(llmedge.UpstreamError, match="u0"):
            async for c in s:
                got.append(c)
        assert got and s.upstream == "u0"
        assert r.breakers[0].metrics()["failures"] == 1


@pytest.mark.asyncio
async def test_rpm_limits_move_traffic_to_the_next_upstream(ups):
    clock = FakeClock()
    async with make(ups, ups_kw=[{"rpm": 3}, {}], clock=clock) as r:
        names = [(await r.achat(ask(i))).upstream for i in range(5)]
    assert names == ["u0", "u0", "u0", "u1", "u1"]


def test_blocking_chat_and_stream(ups):
    with make(ups) as r:
        res = r.chat(ask())
        assert res.upstream == "u0"
        chunks = list(r.stream(ask()))
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.asyncio
async def test_model_names_are_mapped_per_upstream(ups):
    async with make(ups, ups_kw=[{"models": {"gpt-4o-mini": "gpt-4o"}}, {}]) as r:
        res = await r.achat(ask())
    assert res.body["model"] == "gpt-4o"
    assert res.cost == pytest.approx(
        llmedge.estimate_cost(
            "gpt-4o", res.body["usage"]["prompt_tokens"], res.body["usage"]["completion_tokens"]
        )
    )


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ([], {}, ValueError, "upstreams must not be empty"),
        (["http://a/v1"], {"strategy": "fastest"}, ValueError, "strategy must be one of .*fastest"),
        ([{"base_url": "http://a/v1", "weight": -1}], {}, ValueError, "weight must be .* got -1"),
        (["http://a/v1"], {"deadline": 0.5}, ValueError, "shorter than .*connect_timeout"),
        (["ftp://a"], {}, ValueError, "base_url must be an http"),
        (["http://a/v1", "http://a/v1"], {}, ValueError, "names must be unique"),
        ([{"base_url": "http://a/v1", "rpm": 0}], {}, ValueError, "rpm must be"),
        ([{"base_url": "http://a/v1", "price": (1,)}], {}, ValueError, "price must be"),
        ("http://a/v1", {}, TypeError, "upstreams must be a list"),
        (["http://a/v1"], {"hedge": "yes"}, TypeError, "hedge must be"),
        (["http://a/v1"], {"latency_target": -1.0}, ValueError, "latency_target"),
        (["http://a/v1"], {"breaker": {"failure_threshold": 0}}, ValueError, "failure_threshold"),
    ],
)
def test_bad_configuration_is_refused_at_construction(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        Router(args if not isinstance(args, list) else list(args), name="bad", **kwargs)


def test_stats_and_repr():
    r = Router(["http://127.0.0.1:9/v1"], name="r-stats", strategy="least_latency")
    row = r.stats()["http://127.0.0.1:9/v1"]
    assert row["selections"] == 0 and row["breaker"] == "closed" and row["latency_p95"] is None
    assert "least_latency" in repr(r) and "r-stats" in repr(r)


@pytest.mark.asyncio
async def test_monitor_exports_router_stats(ups):
    pytest.importorskip("fastapi")
    from llmedge.fastapi import Monitor

    async with make(ups) as r:
        await r.achat(ask())
        monitor = Monitor(breakers=r.breakers, routers={"api": r})
        code, body = monitor.health()
        text = monitor.metrics_text().decode()
    assert code == 200 and body["routers"]["api"]["u0"]["selections"] == 1
    assert 'llmedge_router_selections_total{router="api",upstream="u0"} 1.0' in text
    assert 'llmedge_router_latency_seconds{quantile="0.95",router="api",upstream="u0"}' in text
    with pytest.raises(TypeError, match="routers"):
        Monitor(routers={"x": 3})


def test_threads_share_one_router_for_blocking_calls(ups):
    import threading

    with make(ups) as r:
        errors: list[BaseException] = []

        def work(k: int) -> None:
            try:
                for i in range(5):
                    assert r.chat(ask(100 * k + i)).upstream == "u0"
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert r.stats()["u0"]["successes"] == 40
    assert requests(ups[0]) == 40


@pytest.mark.asyncio
async def test_an_upstream_failing_half_its_calls_loses_its_traffic_and_no_request_fails(ups):
    a, b = ups[0], ups[1]
    a.set_faults(error_rate=0.5, status=500)
    kw = {"strategy": "least_latency", "explore_after": None}
    async with make(ups, breaker={"failure_threshold": 1000}, **kw) as r:
        results = [await r.achat(ask(i)) for i in range(40)]
    assert len(results) == 40  # every failure fell back
    assert requests(a) < 10 and requests(b) >= 35
    assert r.stats()["u0"]["error_rate"] > r.stats()["u1"]["error_rate"]


@pytest.mark.asyncio
async def test_an_upstream_can_bring_its_own_breaker(ups):
    own = llmedge.CircuitBreaker("own-breaker", failure_threshold=1, recovery_timeout=60)
    async with make(ups, ups_kw=[{"breaker": own}, {}]) as r:
        ups[0].set_faults(fail_all=True, status=500)
        await r.achat(ask())
        assert own.state == "open" and r.breakers[0] is own
    with pytest.raises(TypeError, match="breaker must be a mapping .* or a circuit breaker"):
        Router([Upstream("http://a/v1", breaker=object())], name="bad-breaker")


@pytest.mark.asyncio
async def test_a_stream_that_is_answering_does_not_make_its_upstream_look_slow(ups):
    clock = FakeClock()
    async with make(ups, strategy="least_latency", explore_after=None, clock=clock) as r:
        await r.achat(ask())  # u0 answers (0 s on this clock)
        sel = r._selector
        sel.failure(1, sel.begin(1, clock()), 0.0)  # u1 failed once: u0 ranks first
        s = await r.astream(ask())
        assert s.upstream == "u0"
        clock.advance(100)  # the stream is still being read a long time later
        assert (await r.achat(ask(1))).upstream == "u0"
        assert r.stats()["u0"]["in_flight"] == 1
        await s.aclose()
        assert r.stats()["u0"]["in_flight"] == 0


@pytest.mark.asyncio
async def test_routers_on_one_store_share_breakers_and_limits(ups, redis_server):
    """Two routers of one name on one store act as one (as two gunicorn
    workers would): a breaker opened by one is open in the other, an
    upstream's rpm is one budget for both, and equal limits of two upstreams
    stay separate budgets."""
    a, b = ups[0], ups[1]
    store = llmedge.RedisStore(redis_server.url, timeout=1.0)
    name = f"router-shared-{next(_names)}"
    kw = {"name": name, "store": store, "breaker": {"failure_threshold": 3}}
    try:
        async with make(ups, **kw) as r1, make(ups, **kw) as r2:
            assert r1.stats()["u0"]["breaker"] == "closed"
            a.set_faults(fail_all=True, status=500)
            for i in range(3):
                assert (await r1.achat(ask(i))).upstream == "u1"
            assert requests(a) == 3
            # r1 reports its failures in the background; r2 learns of the
            # opening by push without calling u0 itself.
            for _ in range(200):
                if r2.stats()["u0"]["breaker"] == "open":
                    break
                await asyncio.sleep(0.01)
            assert r2.stats()["u0"]["breaker"] == "open"
            res = await r2.achat(ask())
            assert res.upstream == "u1" and res.attempts[0].outcome == "circuit_open"
            assert requests(a) == 3
        a.clear_faults()
        for m in ups:
            m.reset_stats()
        name = f"router-shared-{next(_names)}"
        kw = {"name": name, "store": store, "ups_kw": [{"rpm": 2}, {"rpm": 2}]}
        async with make(ups, **kw) as r1, make(ups, **kw) as r2:
            served = [(await r.achat(ask(i))).upstream for i, r in enumerate([r1, r2] * 2)]
            assert served == ["u0", "u0", "u1", "u1"]
            with pytest.raises(AllUpstreamsFailedError):
                await r1.achat(ask())
        assert requests(a) == 2 and requests(b) == 2
    finally:
        store.close()

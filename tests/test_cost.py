"""estimate_cost and CostTracker."""

from __future__ import annotations

import asyncio
import threading

import pytest

import llmedge
from llmedge import CostTracker, UnknownModelError, estimate_cost


def test_estimate_cost_uses_the_table_prices():
    assert estimate_cost("gpt-4o", 1_000_000, 1_000_000) == pytest.approx(12.5)
    assert estimate_cost("gpt-4o-mini-2024-07-18", 2000, 1000) == pytest.approx(0.0009)
    assert estimate_cost("gpt-4o", 0, 0) == 0.0


def test_cached_tokens_are_part_of_the_prompt():
    # 200 uncached at 2.50 + 800 cached at 1.25, per million
    assert estimate_cost("gpt-4o", 1000, 0, cached_input_tokens=800) == pytest.approx(0.0015)
    # no cache discount: cached tokens billed at the input price
    assert estimate_cost("gpt-4", 1000, 0, cached_input_tokens=800) == pytest.approx(0.03)


@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [
        ((-1, 0), {}, "input_tokens: expected a non-negative integer, got -1"),
        ((0, -2), {}, "output_tokens: expected a non-negative integer, got -2"),
        ((10, 0), {"cached_input_tokens": -1}, "cached_input_tokens: expected"),
        ((10, 0), {"cached_input_tokens": 11}, "cached_input_tokens: 11 exceeds input_tokens 10"),
    ],
)
def test_bad_counts(args, kwargs, fragment):
    with pytest.raises(ValueError) as info:
        estimate_cost("gpt-4o", *args, **kwargs)
    assert fragment in str(info.value)
    tracker = CostTracker()
    with pytest.raises(ValueError):
        tracker.record("gpt-4o", *args, **kwargs)
    assert tracker.summary()["total"]["requests"] == 0


def test_tracker_summary_by_model_and_total():
    t = CostTracker()
    a = t.record("gpt-4o", 1000, 100)
    b = t.record("gpt-4o", 1000, 100, cached_input_tokens=1000)
    c = t.record("gpt-4o-mini", 10_000, 0)
    assert a == pytest.approx(0.0035) and b == pytest.approx(0.00225)
    s = t.summary()
    assert s["models"]["gpt-4o"] == {
        "requests": 2,
        "input_tokens": 2000,
        "cached_input_tokens": 1000,
        "output_tokens": 200,
        "cost": pytest.approx(a + b),
    }
    assert s["models"]["gpt-4o-mini"]["cost"] == pytest.approx(c)
    assert s["total"]["requests"] == 3
    assert s["total"]["input_tokens"] == 12_000
    assert s["total"]["cost"] == pytest.approx(a + b + c)
    assert "requests=3" in repr(t) and "models=2" in repr(t)
    t.reset()
    assert t.summary() == {
        "models": {},
        "total": {
            "requests": 0,
            "input_tokens": 0,
            "cached_input_tokens": 0,
            "output_tokens": 0,
            "cost": 0.0,
        },
    }


def test_unknown_model_leaves_the_tracker_unchanged():
    t = CostTracker()
    t.record("gpt-4o", 10, 10)
    before = t.summary()
    with pytest.raises(UnknownModelError):
        t.record("gpt-9", 10, 10)
    assert t.summary() == before


def test_threads_record_exact_totals():
    t = CostTracker()
    models = ["gpt-4o", "gpt-4o-mini", "o3"]

    def work(k):
        for i in range(500):
            t.record(models[(k + i) % 3], 100, 10, cached_input_tokens=50)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    s = t.summary()
    assert s["total"]["requests"] == 4000
    assert s["total"]["input_tokens"] == 400_000
    assert s["total"]["cached_input_tokens"] == 200_000
    assert sum(m["requests"] for m in s["models"].values()) == 4000
    expected = sum(
        s["models"][m]["requests"] * estimate_cost(m, 100, 10, cached_input_tokens=50)
        for m in models
    )
    assert s["total"]["cost"] == pytest.approx(expected)


def test_asyncio_tasks_share_a_tracker():
    t = CostTracker()

    async def one(i):
        await asyncio.sleep(0)
        return t.record("gpt-4o", i, 0)

    async def main():
        return await asyncio.gather(*(one(i) for i in range(200)))

    costs = asyncio.run(main())
    assert t.summary()["total"]["input_tokens"] == sum(range(200))
    assert t.summary()["total"]["cost"] == pytest.approx(sum(costs))


def test_exported():
    for name in ("estimate_cost", "CostTracker", "count_messages", "fit_messages"):
        assert name in llmedge.__all__

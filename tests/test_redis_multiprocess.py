"""One limit shared by several processes through Redis: exact totals.

Four worker processes (spawned, each with its own RedisStore and limiter of
the same name) call ``try_acquire`` on one key from threads and asyncio tasks;
the totals are checked against what the limit allows. The reference service
under ``gunicorn -w 4`` with ``LLMEDGE_REDIS_URL`` is checked the same way
through HTTP (see test_redis_service.py).
"""

from __future__ import annotations

import pytest
from redis_load import run_processes

import llmedge

pytestmark = pytest.mark.timeout(300)

PROCESSES = 4


def _ok(results):
    errors = [e for r in results for e in r["errors"]]
    assert not errors, "\n".join(errors)
    for r in results:
        assert r["metrics"]["shared"] is True
        # the timeout is generous: every decision was made by Redis
        assert r["metrics"]["fallbacks"] == 0, r["metrics"]
        assert r["store_metrics"]["fallbacks"] == 0, r["store_metrics"]


def test_four_processes_get_exactly_the_burst_of_a_slow_limit(redis_server):
    # 1 permit per hour: nothing refills during the test, so the burst is the total
    spec = {
        "url": redis_server.url,
        "name": "mp-burst",
        "key": "tenant-1",
        "rate": 1,
        "per": 3600.0,
        "burst": 500,
        "threads": 4,
        "attempts": 250,
    }
    results = run_processes([spec] * PROCESSES)
    _ok(results)
    assert sum(r["attempts"] for r in results) == PROCESSES * 4 * 250
    assert sum(r["admitted"] for r in results) == 500


def test_threads_and_asyncio_tasks_in_four_processes_share_one_limit(redis_server):
    spec = {
        "url": redis_server.url,
        "name": "mp-mixed",
        "key": "tenant-2",
        "rate": 1,
        "per": 3600.0,
        "burst": 300,
        "threads": 2,
        "tasks": 8,
        "attempts": 100,
    }
    results = run_processes([spec] * PROCESSES)
    _ok(results)
    assert sum(r["attempts"] for r in results) == PROCESSES * (2 + 8) * 100
    assert sum(r["admitted"] for r in results) == 300


def test_a_refilling_limit_admits_what_it_allows_over_the_interval(redis_server):
    # 400/s with a burst of 2 s: demand (4 processes x 2 threads) is far above
    # the rate for 3 s; an idle gap shorter than the burst loses nothing
    rate, burst = 400.0, 800
    spec = {
        "url": redis_server.url,
        "name": "mp-rate",
        "key": "tenant-3",
        "rate": rate,
        "per": 1.0,
        "burst": burst,
        "threads": 2,
        "duration": 3.0,
    }
    results = run_processes([spec] * PROCESSES)
    _ok(results)
    admitted = sum(r["admitted"] for r in results)
    t_first = min(r["t_first"] for r in results)  # Redis TIME
    # never more than the limit allows from before the first call to after the
    # last (+1: the permit being earned)
    allowed = burst + rate * (max(r["t_last"] for r in results) - t_first)
    assert admitted <= allowed + 1, (admitted, allowed)
    # and at least 99% of what it allows until the last call, demand having
    # exceeded it all along
    demanded = burst + rate * (max(r["t_last_call"] for r in results) - t_first)
    assert admitted >= 0.99 * demanded, (admitted, demanded)
    attempts = sum(r["attempts"] for r in results)
    assert attempts > 2 * admitted, "demand must exceed the limit for this test to mean anything"


def test_multi_limits_are_charged_all_or_nothing_across_processes(redis_server):
    # tokens bind (1,000 per hour, 10 per call: 100 calls); requests allow 150.
    # A denied call must charge neither limit: 50 requests are left at the end.
    limits = {"requests": (1, 3600.0, 150), "tokens": (1, 3600.0, 1000)}
    spec = {
        "url": redis_server.url,
        "name": "mp-multi",
        "key": "tenant-4",
        "limits": limits,
        "costs": [{"requests": 1, "tokens": 10}],
        "threads": 3,
        "tasks": 4,
        "attempts": 60,
    }
    results = run_processes([spec] * PROCESSES)
    _ok(results)
    assert sum(r["admitted"] for r in results) == 100
    assert sum(r["charged"].get("tokens", 0) for r in results) == 1000
    store = llmedge.RedisStore(redis_server.url, timeout=2.0)
    try:
        check = llmedge.MultiRateLimiter(limits, store=store, name="mp-multi")
        assert check.available("tenant-4") == {"requests": 50, "tokens": 0}
        # the same name and configuration sees the same state from a new process
        assert check.try_acquire("tenant-4", requests=1, tokens=0)
        assert not check.try_acquire("tenant-4", requests=1, tokens=1)
    finally:
        store.close()


def test_mixed_costs_never_overspend_the_requests_limit(redis_server):
    # requests bind (200); tokens (100,000) do not; costs vary per call
    limits = {"requests": (1, 3600.0, 200), "tokens": (1, 3600.0, 100_000)}
    costs = [{"requests": 1, "tokens": n} for n in (1, 7, 30, 2, 100)]
    spec = {
        "url": redis_server.url,
        "name": "mp-costs",
        "key": "tenant-5",
        "limits": limits,
        "costs": costs,
        "threads": 4,
        "attempts": 100,
    }
    results = run_processes([spec] * PROCESSES)
    _ok(results)
    assert sum(r["admitted"] for r in results) == 200
    charged = sum(r["charged"].get("tokens", 0) for r in results)
    store = llmedge.RedisStore(redis_server.url, timeout=2.0)
    try:
        check = llmedge.MultiRateLimiter(limits, store=store, name="mp-costs")
        assert check.available("tenant-5") == {"requests": 0, "tokens": 100_000 - charged}
    finally:
        store.close()

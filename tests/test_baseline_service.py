"""The pure-Python backend of the load tests (benches/baselines/service.py)
is bounded as llmedge's is: cache entries over all partitions, limiter keys."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

pytest.importorskip("numpy")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))

from baselines import cache, embed, messages, resilience  # noqa: E402
from baselines.service import _BaselineCache, _BaselineLimits  # noqa: E402

_B = type("B", (), {"cache": cache, "embed": embed, "messages": messages})


def test_cache_entries_are_bounded_over_all_partitions():
    c = _BaselineCache(_B, threshold=0.85, ttl=3600.0, max_entries=50)

    async def fill() -> None:
        for i in range(1000):
            await c.aset(f"question {i}", f"answer {i}", partition=f"user-{i % 300}")

    asyncio.run(fill())
    stats = c.stats()
    assert stats["entries"] == 50 and stats["evictions"] == 950
    assert sum(len(p) for p in c.parts.values()) == 50
    assert stats["partitions"] <= 50
    # the newest entries are the ones kept
    assert asyncio.run(c.get("question 999", "user-99")) == ("answer 999", "exact")
    assert asyncio.run(c.get("question 0", "user-0")) is None


def test_cache_lookups_create_no_partition():
    c = _BaselineCache(_B, threshold=0.85, ttl=3600.0, max_entries=50)

    async def look() -> None:
        for i in range(500):
            assert await c.get("anything", f"never-written-{i}") is None

    asyncio.run(look())
    assert c.stats()["partitions"] == 0 and c.stats()["misses"] == 500


def test_token_bucket_keys_are_bounded_and_active_keys_kept():
    b = resilience.TokenBucket(1.0, 60.0, burst=2, max_keys=100)
    assert b.try_acquire("alice") and b.try_acquire("alice")
    for i in range(10_000):
        b.try_acquire(f"key-{i}")
        b.try_acquire("alice")  # alice stays active: denied, and remembered
    assert len(b.buckets) <= 100
    assert not b.try_acquire("alice")


def test_baseline_limiter_keys_are_bounded():
    limits = _BaselineLimits(resilience.TokenBucket, {"requests": (5.0, 1.0, 10)}, max_keys=1000)
    for i in range(10_000):
        assert limits.try_acquire(f"key-{i}", requests=1)
    assert all(len(b.buckets) <= 1000 for b in limits.buckets.values())

"""The soak scenario's analysis (loadtest/soak.py): growth after warm-up,
latency drift, the per-minute table. The soak itself runs by hand."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "loadtest"))

import soak  # noqa: E402


def sample(t: float, rss: int, fds: int, p50: float = 10.0) -> dict:
    return {
        "t": t, "rss_bytes": rss, "fds": fds, "threads": 3, "cache_entries": 5,
        "evictions": 0, "expirations": 0, "upstream_open_streams": 0,
        **soak.window_stats([{"ms": p50, "status": 200, "error": None, "cached": None}]),
    }  # fmt: skip


def test_growth_compares_the_medians_of_the_first_and_last_quarter():
    assert soak.growth([100, 100, 100, 100, 104, 104, 104, 104]) == 0.04
    # one burst is not a trend
    assert soak.growth([100, 300, 100] + [100] * 9) == 0.0
    assert soak.growth([7]) is None


def test_verdict_and_table():
    samples = [sample(t * 10.0, 100 + (t > 30) * 10, 20) for t in range(60)]
    records = [{"t": 1000.0 + i, "ms": 10.0 + (i > 500), "status": 200} for i in range(600)]
    v = soak.verdict(samples, records, warmup=60.0)
    assert v["rss_bytes_growth"] == 0.1 and v["fds_growth"] == 0.0 and not v["flat"]
    assert v["first_quarter"]["p50_ms"] == 10.0 and v["last_quarter"]["p50_ms"] == 11.0
    report = {
        "config": {
            k: 1.0
            for k in (
                "minutes",
                "rate",
                "cache_ttl",
                "new_users",
                "greedy",
                "trip_seconds",
                "trip_every",
                "abandon",
            )
        }  # fmt: skip
        | {"backend": "llmedge", "cache_entries": 10, "active_users": 5},
        "machine": f"{os.cpu_count()} CPUs",
        "samples": samples,
        "verdict": v,
        "totals": {"requests": 600, "status": {"200": 600}, "transport_errors": 0, "trips": 2},
        "breaker_transitions": {},
        "final": {"upstream_open_streams": 0},
    }
    text = soak.markdown(report)
    assert text.count("\n| ") == 1 + 10  # the header and one row per minute
    assert "RSS +10.0%" in text and "flat: under 5%: NO" in text

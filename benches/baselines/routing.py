"""A pure-Python upstream selector with the same rules as llmedge's
``least_latency`` strategy: an exponentially weighted latency and error rate
per upstream, the last 256 answer times for the hedging p95 (recomputed every
8 answers), an error-inflated score, and exploration of an upstream left
alone for ``explore_after`` seconds. What a user would write without llmedge."""

from __future__ import annotations

import math
import threading
from collections import deque


class _Stats:
    __slots__ = ("latency", "error", "pending", "firsts", "p95", "since", "last")

    def __init__(self) -> None:
        self.latency: float | None = None
        self.error = 0.0
        self.pending: dict[int, float] = {}
        self.firsts: deque[float] = deque(maxlen=256)
        self.p95: float | None = None
        self.since = 0
        self.last = math.nan


class PySelector:
    def __init__(self, n: int, *, alpha: float = 0.2, explore_after: float | None = 5.0):
        self.stats = [_Stats() for _ in range(n)]
        self.alpha = alpha
        self.explore_after = explore_after
        self.lock = threading.Lock()
        self.seq = 0

    def _score(self, s: _Stats, now: float) -> float:
        expected = s.latency or 0.0
        if s.pending:
            expected = max(expected, now - min(s.pending.values()))
        expected = max(expected, 0.001)
        return expected * (1 + 4 * s.error) / max(1 - s.error, 0.05)

    def rank(self, now: float) -> tuple[list[int], list[float | None]]:
        with self.lock:
            for s in self.stats:
                if math.isnan(s.last):
                    s.last = now
            order = sorted(range(len(self.stats)), key=lambda i: self._score(self.stats[i], now))
            hedge = [self.stats[i].p95 if len(self.stats[i].firsts) >= 20 else None for i in order]
            if self.explore_after is not None:
                stale = [
                    p
                    for p in range(1, len(order))
                    if now - self.stats[order[p]].last >= self.explore_after
                ]
                if stale:
                    p = min(stale, key=lambda p: self.stats[order[p]].last)
                    order.insert(0, order.pop(p))
                    hedge.insert(0, hedge.pop(p) if p else hedge[0])
            self.stats[order[0]].last = now
            return order, hedge

    def begin(self, i: int, now: float) -> int:
        with self.lock:
            s = self.stats[i]
            self.seq += 1
            s.pending[self.seq] = now
            s.last = now
            return self.seq

    def success(self, i: int, call: int, total: float, first: float) -> None:
        with self.lock:
            s = self.stats[i]
            s.pending.pop(call, None)
            s.error += self.alpha * (0.0 - s.error)
            s.latency = total if s.latency is None else s.latency + self.alpha * (total - s.latency)
            s.firsts.append(first)
            s.since += 1
            if s.p95 is None or s.since >= 8:
                ordered = sorted(s.firsts)
                s.p95 = ordered[max(1, math.ceil(0.95 * len(ordered))) - 1]
                s.since = 0

"""Pure-Python baselines for the resilience benchmarks.

Written the way a careful engineer would without llmedge: a breaker that
takes a lock only around its bookkeeping (never around the call), and a keyed
token bucket refilled lazily from the elapsed time.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any


class BreakerOpen(Exception):
    pass


class PyBreaker:
    """Consecutive-failure breaker with one half-open probe."""

    def __init__(self, failure_threshold: int = 5, recovery_timeout: float = 60.0):
        self.failure_threshold = failure_threshold
        self.recovery_timeout = recovery_timeout
        self.state = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self.probing = False
        self.lock = threading.Lock()

    def _admit(self) -> bool:
        with self.lock:
            if self.state == "closed":
                return False
            if self.state == "open" and time.monotonic() - self.opened_at >= self.recovery_timeout:
                self.state = "half_open"
            if self.state == "half_open" and not self.probing:
                self.probing = True
                return True
            raise BreakerOpen

    def _record(self, probe: bool, failed: bool) -> None:
        with self.lock:
            if probe:
                self.probing = False
            if failed:
                self.failures += 1
                if probe or self.failures >= self.failure_threshold:
                    self.state = "open"
                    self.opened_at = time.monotonic()
            else:
                self.failures = 0
                if probe:
                    self.state = "closed"

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            probe = self._admit()
            try:
                result = fn(*args, **kwargs)
            except Exception:
                self._record(probe, True)
                raise
            self._record(probe, False)
            return result

        return guarded

    def wrap_async(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            probe = self._admit()
            try:
                result = await fn(*args, **kwargs)
            except Exception:
                self._record(probe, True)
                raise
            self._record(probe, False)
            return result

        return guarded


class TokenBucket:
    """Keyed token bucket: ``rate`` tokens per ``per`` seconds, ``burst`` capacity.

    Bounded as llmedge's limiter is: at ``max_keys`` keys, those whose bucket
    is full again (no state worth keeping) are dropped, then if none was, the
    1/64 touched longest ago (dict order is touch order)."""

    def __init__(
        self, rate: float, per: float = 1.0, burst: int | None = None, max_keys: int = 100_000
    ):
        self.fill = rate / per
        self.burst = float(burst if burst is not None else max(1, int(rate)))
        self.max_keys = max_keys
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def level(self, key: str, now: float) -> float:
        tokens, last = self.buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.fill)

    def store(self, key: str, tokens: float, now: float) -> None:
        """Keeps ``key``'s level (touched now); the caller holds the lock."""
        self.buckets.pop(key, None)
        if len(self.buckets) >= self.max_keys:
            self.bound(now)
        self.buckets[key] = (tokens, now)

    def bound(self, now: float) -> None:
        full = [k for k in self.buckets if self.level(k, now) >= self.burst]
        for k in full:
            del self.buckets[k]
        if len(self.buckets) >= self.max_keys:
            for k in list(self.buckets)[: max(1, self.max_keys // 64)]:
                del self.buckets[k]

    def try_acquire(self, key: str = "", cost: int = 1) -> bool:
        now = time.monotonic()
        with self.lock:
            tokens = self.level(key, now)
            ok = tokens >= cost
            self.store(key, tokens - cost if ok else tokens, now)
            return ok

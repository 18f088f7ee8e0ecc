"""A fake clock for the ``clock=`` argument of breakers, limiters and caches."""

from __future__ import annotations

import threading


class FakeClock:
    """An injectable monotonic clock: calling it reads the time, ``advance`` moves it.

    Pass it as ``clock=`` to :class:`llmedge.CircuitBreaker`,
    :class:`llmedge.RateLimiter` or :class:`llmedge.SemanticCache`; time then
    passes only when the test says so. To test how a class copes with a broken
    clock, set ``now`` to a bad reading (``math.nan``, ``None``...) or to an
    exception, which reading the clock then raises.
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now: object = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        now = self.now
        if isinstance(now, BaseException):
            raise now
        return now  # type: ignore[return-value]

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (>= 0)."""
        if not seconds >= 0:
            raise ValueError(f"a clock only moves forward: seconds must be >= 0, got {seconds!r}")
        with self._lock:
            self.now += seconds  # type: ignore[operator]

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now!r})"

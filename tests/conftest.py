from __future__ import annotations

from pathlib import Path

import pytest

from llmedge import CircuitBreaker

FIXTURES = Path(__file__).resolve().parent / "fixtures"


class FakeClock:
    """An injectable monotonic clock: ``clock()`` reads, ``advance`` moves it."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# Shared by the circuit breaker tests (test_circuit_breaker*.py).


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


def boom():
    raise RuntimeError("boom")


def ok():
    return "ok"


def fail_n(b: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(RuntimeError):
            b.call(boom)

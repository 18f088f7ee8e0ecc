from __future__ import annotations

from pathlib import Path

import pytest

from llmedge import CircuitBreaker
from llmedge.testing import MockLLM

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


# Shared by the reference service's tests (test_chat_service*.py): two mock
# upstreams per test module, their faults and statistics cleared for each test.

ANSWER_TOKENS = 24


@pytest.fixture(scope="module")
def mocks():
    with MockLLM(answer_tokens=ANSWER_TOKENS) as a, MockLLM(answer_tokens=ANSWER_TOKENS) as b:
        yield a, b


@pytest.fixture()
def upstreams(mocks):
    for m in mocks:
        m.clear_faults()
        m.reset_stats()
    yield mocks
    for m in mocks:
        m.clear_faults()

"""llmedge._core.RouteSelector (the Router's decisions) against the
pure-Python model in benches/baselines/routing.py, step by step, and its
bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from llmedge import _core

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
from baselines.routing import PySelector  # noqa: E402

N = 3


class SelectorModel(RuleBasedStateMachine):
    """least_latency with exploration: the Rust ranking equals the model's."""

    def __init__(self) -> None:
        super().__init__()
        self.rust = _core.RouteSelector([1.0] * N, strategy="least_latency", explore_after=5.0)
        self.py = PySelector(N, explore_after=5.0)
        self.now = 0.0
        self.pending: list[tuple[int, int, int, float]] = []  # (upstream, rust id, py id, start)

    @rule(dt=st.floats(0.0, 3.0))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule()
    def rank(self) -> None:
        order, hedge, _ = self.rust.rank(False, "m", self.now)
        assert (order, hedge) == self.py.rank(self.now)

    @rule(i=st.integers(0, N - 1))
    def begin(self, i: int) -> None:
        self.pending.append((i, self.rust.begin(i, self.now), self.py.begin(i, self.now), self.now))

    @precondition(lambda self: self.pending)
    @rule(k=st.integers(0, 100), extra=st.floats(0.0, 1.0))
    def answer(self, k: int, extra: float) -> None:
        i, rid, pid, start = self.pending.pop(k % len(self.pending))
        total = self.now - start + extra
        self.rust.success(i, rid, total, total / 2)
        self.py.success(i, pid, total, total / 2)

    @invariant()
    def in_flight_counts_agree(self) -> None:
        for i in range(N):
            assert self.rust.stats(i)["in_flight"] == len(self.py.stats[i].pending)


SelectorModel.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
test_selector_matches_the_python_model = SelectorModel.TestCase


def test_stats_report_what_happened():
    sel = _core.RouteSelector([1.0, 2.0], strategy="weighted", seed=3)
    call = sel.begin(1, 0.0)
    sel.success(1, call, 0.5, 0.1, 6)
    call = sel.begin(1, 1.0)
    sel.failure(1, call, 0.2)
    row = sel.stats(1)
    assert row["weight"] == 2.0 and row["selections"] == 2
    assert (row["successes"], row["failures"], row["in_flight"]) == (1, 1, 0)
    assert row["latency_p50"] == 0.5 and row["first_token_ewma"] == 0.1
    assert row["per_token_ewma"] == pytest.approx(0.08)
    assert len(sel) == 2 and "weighted" in repr(sel) and sel.strategy == "weighted"


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ([[]], {}, "upstreams must not be empty"),
        ([[1.0, -2.0]], {}, "weight must be a finite number >= 0, got -2"),
        ([[1.0]], {"strategy": "round_robin"}, "strategy must be one of .*round_robin"),
        ([[0.0, 0.0]], {"strategy": "weighted"}, "weight > 0"),
        ([[1.0]], {"alpha": 0.0}, "alpha must be in"),
        ([[1.0]], {"explore_after": -1.0}, "explore_after"),
    ],
)
def test_bad_configuration(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _core.RouteSelector(*args, **kwargs)


def test_bad_calls_leave_the_state_alone():
    sel = _core.RouteSelector([1.0, 1.0])
    with pytest.raises(ValueError, match="upstream index must be in 0..2, got 5"):
        sel.begin(5, 0.0)
    with pytest.raises(ValueError, match="total must be"):
        sel.success(0, 1, float("nan"), 0.0)
    with pytest.raises(ValueError, match="prices must have one entry per upstream"):
        sel.set_prices("m", [1.0])
    assert sel.stats(0)["selections"] == 0 and not sel.has_prices("m")

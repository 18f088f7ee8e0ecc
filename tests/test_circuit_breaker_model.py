"""llmedge.CircuitBreaker against a pure-Python model of its rules (stateful
hypothesis tests)."""

from __future__ import annotations

import math

import pytest
from conftest import FakeClock
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from llmedge import CircuitBreaker, CircuitOpenError

# -- differential test against a pure-Python model ----------------------------------


class ModelBreaker:
    """The documented rules, written plainly: every outcome is kept in a list
    and the window is recomputed from it."""

    def __init__(self, cfg, now):
        self.cfg = cfg
        self.ft = cfg["failure_threshold"]
        self.rt = cfg["recovery_timeout"]
        self.st = cfg["success_threshold"]
        self.rate = cfg.get("failure_rate_threshold")
        self.slow_duration = cfg.get("slow_call_duration")
        self.slow_rate = cfg.get("slow_call_rate_threshold") or (
            1.0 if self.slow_duration is not None else None
        )
        self.window_type = cfg.get("window_type", "count")
        self.size, self.minimum = cfg["window_size"], cfg["minimum_calls"]
        self.hmax = cfg["half_open_max_calls"]
        self.backoff, self.max_recovery = cfg["backoff_multiplier"], cfg["max_recovery_timeout"]
        self.outcomes = []  # (second, failed, slow) since the circuit last closed
        self.state, self.epoch, self.recovery = "closed", 0, self.rt
        self.open_until = now
        self.consec = self.in_flight = self.half_successes = 0

    def window(self, now):
        if self.window_type == "count":
            return self.outcomes[-self.size :]
        second = math.floor(now)
        return [o for o in self.outcomes if second - self.size < o[0] <= second]

    def enter(self, state, now):
        self.state = state
        self.epoch += 1
        self.in_flight = self.half_successes = 0
        if state == "open":
            self.open_until = now + self.recovery
        if state == "closed":
            self.recovery = self.rt
            self.consec = 0
            self.outcomes = []

    def acquire(self, now):
        if self.state in ("closed", "disabled"):
            return (self.epoch, False, now)
        if self.state == "forced_open":
            return None
        if self.state == "open":
            if now < self.open_until:
                return None
            self.enter("half_open", now)
        if self.in_flight < self.hmax:
            self.in_flight += 1
            return (self.epoch, True, now)
        return None

    def record(self, permit, now, failed):
        epoch, probe, start = permit
        slow = self.slow_duration is not None and now - start >= self.slow_duration
        if epoch != self.epoch:
            return
        if self.state == "closed":
            self.consec = self.consec + 1 if failed else 0
            self.outcomes.append((math.floor(now), failed, slow))
            w = self.window(now)
            n = len(w)
            by_rate = n >= self.minimum and (
                (self.rate is not None and sum(o[1] for o in w) >= self.rate * n)
                or (self.slow_rate is not None and sum(o[2] for o in w) >= self.slow_rate * n)
            )
            if self.consec >= self.ft or by_rate:
                self.enter("open", now)
        elif self.state == "half_open" and probe:
            self.in_flight -= 1
            if failed or (slow and self.slow_rate is not None):
                self.recovery = min(self.recovery * self.backoff, self.max_recovery)
                self.enter("open", now)
            else:
                self.half_successes += 1
                if self.half_successes >= self.st:
                    self.enter("closed", now)

    def manual(self, state, now):
        if state == "closed":
            self.recovery = self.rt
            if self.state == "closed":
                self.enter("closed", now)
                return
        if self.state != state:
            self.enter(state, now)


class BreakerMachine(RuleBasedStateMachine):
    CONFIG = dict(
        failure_threshold=3,
        recovery_timeout=10.0,
        success_threshold=2,
        failure_rate_threshold=0.5,
        window_size=6,
        minimum_calls=4,
        half_open_max_calls=2,
        backoff_multiplier=2.0,
        max_recovery_timeout=35.0,
    )

    def __init__(self):
        super().__init__()
        self.clock = FakeClock(0.0)
        self.breaker = CircuitBreaker("model", clock=self.clock, **self.CONFIG)
        self.model = ModelBreaker(self.CONFIG, now=0.0)
        self.held = []  # (stream, model permit)

        @self.breaker
        def stream():
            yield None

        self.stream = stream

    def _start(self):
        expected = self.model.acquire(self.clock.now)
        try:
            s = self.stream()
        except CircuitOpenError:
            assert expected is None
            return None
        assert expected is not None
        return s, expected

    def _finish(self, s, permit, failed):
        if failed:
            with pytest.raises(RuntimeError):
                s.throw(RuntimeError("fail"))
        else:
            assert list(s) == [None]
        self.model.record(permit, self.clock.now, failed)

    @rule(failed=st.booleans(), n=st.integers(1, 5))
    def call(self, failed, n=1):
        for _ in range(n):
            started = self._start()
            if started:
                self._finish(*started, failed)

    @rule(n=st.integers(1, 4))
    def start_and_hold(self, n=1):
        for _ in range(n):
            started = self._start()
            if started:
                self.held.append(started)

    @precondition(lambda self: self.held)
    @rule(i=st.integers(0, 100), failed=st.booleans())
    def finish_held(self, i, failed):
        s, permit = self.held.pop(i % len(self.held))
        self._finish(s, permit, failed)

    @rule(seconds=st.sampled_from([0.5, 5.0, 10.0, 15.0, 20.0, 40.0]))
    def advance(self, seconds):
        self.clock.advance(seconds)

    @rule(action=st.sampled_from(["reset", "force_open", "disable"]))
    def manual(self, action):
        getattr(self.breaker, action)()
        target = {"reset": "closed", "force_open": "forced_open", "disable": "disabled"}
        self.model.manual(target[action], self.clock.now)

    @invariant()
    def same_state(self):
        assert self.breaker.state == self.model.state
        m = self.breaker.metrics()
        if self.model.state == "open":
            assert m["next_attempt_at"] == pytest.approx(self.model.open_until)
        assert m["half_open_in_flight"] == (
            self.model.in_flight if self.model.state == "half_open" else 0
        )


BreakerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
TestBreakerMatchesModel = BreakerMachine.TestCase


class TimeWindowSlowCallMachine(BreakerMachine):
    CONFIG = dict(
        failure_threshold=4,
        recovery_timeout=10.0,
        success_threshold=2,
        failure_rate_threshold=0.75,
        window_type="time",
        window_size=30,
        minimum_calls=3,
        slow_call_duration=15.0,
        slow_call_rate_threshold=0.5,
        half_open_max_calls=2,
        backoff_multiplier=1.5,
        max_recovery_timeout=40.0,
    )


TimeWindowSlowCallMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=30, deadline=None
)
TestTimeWindowSlowCallsMatchModel = TimeWindowSlowCallMachine.TestCase

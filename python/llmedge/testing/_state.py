"""The mock's run-time state: latency settings, faults (validated), and the
statistics it serves on ``/mock/stats``."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class _Faults:
    error_rate: float = 0.0
    status: int = 500
    timeout_rate: float = 0.0
    hang: float = 30.0
    break_rate: float = 0.0
    fail_all: bool = False
    retry_after: float = 1.0

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> _Faults:
        _reject_unknown(values, cls, "fault")
        faults = cls(**values)
        for name in ("error_rate", "timeout_rate", "break_rate"):
            _check_number(name, getattr(faults, name), 0.0, 1.0, "a number in [0, 1]")
        _check_number("status", faults.status, 400, 599, "an HTTP error status in 400..599", int)
        _check_number("hang", faults.hang, 0.0, 3600.0, "seconds in [0, 3600]")
        _check_number("retry_after", faults.retry_after, 0.0, 3600.0, "seconds in [0, 3600]")
        if not isinstance(faults.fail_all, bool):
            raise ValueError(f"fail_all must be a bool, got {faults.fail_all!r}")
        return faults


#: What ``finish_reason`` may force on text answers (None: the natural one).
FINISH_REASONS = (None, "stop", "length", "content_filter")


@dataclass
class _Config:
    ttft: float = 0.0
    tpot: float = 0.0
    answer_tokens: int = 24
    seed: int = 0
    finish_reason: str | None = None

    def validate(self) -> None:
        for name in ("ttft", "tpot"):
            _check_number(name, getattr(self, name), 0.0, 60.0, "seconds in [0, 60]")
        _check_number("answer_tokens", self.answer_tokens, 1, 100_000, "an int in [1, 100000]", int)
        _check_number("seed", self.seed, -(2**63), 2**63, "an int", int)
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(
                f"finish_reason must be one of {FINISH_REASONS!r} (None: stop, or length when "
                f"max_tokens cut the answer), got {self.finish_reason!r}"
            )


def _check_number(
    name: str,
    value: Any,
    low: float,
    high: float,
    accepted: str,
    kinds: type | tuple[type, ...] = (int, float),
) -> None:
    """Raise a ValueError naming ``name``, the value and what is accepted
    unless ``value`` is of ``kinds`` (never a bool) and within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        raise ValueError(f"{name} must be {accepted}, got {value!r}")


def _reject_unknown(values: Mapping[str, Any], cls: type, what: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} setting(s) {unknown}; accepted: {sorted(known)}")


@dataclass
class _Stats:
    requests: int = 0
    streams: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    timeouts: int = 0
    breaks: int = 0
    disconnects: int = 0
    tool_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    embedding_requests: int = 0
    embedding_inputs: int = 0


class _Spread:
    """Spreads a rate evenly over requests: with rate r, exactly floor(n * r)
    of the first n requests are picked, so "half the requests" is every other
    one rather than a coin flip."""

    def __init__(self) -> None:
        self.count = 0

    def pick(self, rate: float) -> bool:
        before = math.floor(self.count * rate)
        self.count += 1
        return math.floor(self.count * rate) > before


class _State:
    def __init__(self, config: _Config) -> None:
        config.validate()
        self.lock = threading.Lock()
        self.config = config
        self.faults = _Faults()
        self.stats = _Stats()
        self._errors = _Spread()
        self._timeouts = _Spread()
        self._breaks = _Spread()
        # streams whose response is still being sent (not reset with the stats)
        self.open_streams = 0

    def stream_opened(self) -> None:
        with self.lock:
            self.open_streams += 1

    def stream_closed(self, disconnected: bool) -> None:
        with self.lock:
            self.open_streams -= 1
            if disconnected:
                self.stats.disconnects += 1

    def set_faults(self, values: Mapping[str, Any]) -> None:
        faults = _Faults.parse(values)
        with self.lock:
            self.faults = faults
            self._errors, self._timeouts, self._breaks = _Spread(), _Spread(), _Spread()

    def set_config(self, values: Mapping[str, Any]) -> None:
        _reject_unknown(values, _Config, "config")
        with self.lock:
            config = _Config(**{**asdict(self.config), **values})
        config.validate()
        with self.lock:
            self.config = config

    def decide(self, stream: bool, embedding_inputs: int = 0) -> tuple[str, _Faults, _Config]:
        """One request's fate: "ok", "error", "timeout" or "break";
        ``embedding_inputs`` counts the texts of an embeddings request."""
        with self.lock:
            faults, config = self.faults, self.config
            self.stats.requests += 1
            if embedding_inputs:
                self.stats.embedding_requests += 1
                self.stats.embedding_inputs += embedding_inputs
            if stream:
                self.stats.streams += 1
            if faults.fail_all or self._errors.pick(faults.error_rate):
                return "error", faults, config
            if self._timeouts.pick(faults.timeout_rate):
                self.stats.timeouts += 1
                return "timeout", faults, config
            if stream and self._breaks.pick(faults.break_rate):
                self.stats.breaks += 1
                return "break", faults, config
            return "ok", faults, config

    def count_status(self, status: int) -> None:
        with self.lock:
            key = str(status)
            self.stats.by_status[key] = self.stats.by_status.get(key, 0) + 1

    def count_tool_call(self) -> None:
        with self.lock:
            self.stats.tool_calls += 1

    def count_tokens(self, prompt: int, completion: int) -> None:
        with self.lock:
            self.stats.prompt_tokens += prompt
            self.stats.completion_tokens += completion

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            stats = asdict(self.stats)
            stats["open_streams"] = self.open_streams
            stats["faults"] = asdict(self.faults)
            stats["config"] = asdict(self.config)
            return stats

    def reset_stats(self) -> None:
        with self.lock:
            self.stats = _Stats()

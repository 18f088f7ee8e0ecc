from __future__ import annotations

import math
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"


class FakeClock:
    """An injectable monotonic clock: ``clock()`` reads, ``advance`` moves it.

    Tests of a broken clock set ``now`` to a bad reading, or to an exception,
    which reading the clock then raises.
    """

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        if isinstance(self.now, BaseException):
            raise self.now
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


#: What a broken clock returns (or raises), the error a class that reads it
#: must raise, and a pattern of that error's message (which names the value).
BAD_CLOCK_READINGS = [
    (math.nan, ValueError, r"clock\(\) returned nan; expected a finite float"),
    (math.inf, ValueError, r"clock\(\) returned inf; expected a finite float"),
    (-math.inf, ValueError, r"clock\(\) returned -inf; expected a finite float"),
    ("soon", TypeError, r"clock\(\) must return a float of seconds, got 'soon'"),
    (None, TypeError, r"clock\(\) must return a float of seconds, got None"),
    (ZeroDivisionError("the clock broke"), ZeroDivisionError, "the clock broke"),
]

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
from redis_support import (
    RedisCluster,
    RedisServer,
    cli_binary,
    missing_binaries,
    require_redis,
    server_binary,
    server_name,
)

from llmedge import CircuitBreaker
from llmedge.testing import FakeClock, MockLLM  # noqa: F401 - FakeClock: the tests import it from here

pytest_plugins = ["pytester"]

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROOT = FIXTURES.parents[1]


def pytest_report_header() -> str:
    """Which server the Redis tests start (CI runs them on several)."""
    if missing_binaries():
        return f"redis: {' and '.join(missing_binaries())} not found"
    return f"redis: {server_name()} ({server_binary()}), cli {cli_binary()}"


def load_script(relative: str, name: str) -> ModuleType:
    """A script of the repository that is not a package module (``loadtest/*.py``)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


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


# Shared by the circuit breaker tests (test_circuit_breaker*.py).


@pytest.fixture
def clock(llmedge_clock) -> FakeClock:
    """The llmedge pytest plugin's fake clock (at 1000.0)."""
    return llmedge_clock


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
        m.configure(finish_reason=None)


@pytest.fixture
def redis_server():
    """A fresh, empty ``redis-server`` on a free port (see redis_support.RedisServer)."""
    require_redis()
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def _redis_cluster_module():
    require_redis()
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture
def redis_cluster(_redis_cluster_module):
    """A Redis Cluster of 3 masters + 3 replicas, started once per test module
    (see redis_support.RedisCluster). After each test, killed nodes are restarted
    and the data flushed, so the next test finds six healthy, empty nodes."""
    cluster = _redis_cluster_module
    yield cluster
    if not all(s.running for s in cluster.servers) or not cluster.state_ok():
        cluster.heal()
    cluster.flushall()

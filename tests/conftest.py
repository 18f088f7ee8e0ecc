from __future__ import annotations

from pathlib import Path

import pytest
from redis_support import RedisCluster, RedisServer, require_redis

FIXTURES = Path(__file__).resolve().parent / "fixtures"


class FakeClock:
    """An injectable monotonic clock: ``clock()`` reads, ``advance`` moves it."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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

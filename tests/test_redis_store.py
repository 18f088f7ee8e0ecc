"""RedisStore against real redis-server processes (tests/redis_support.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from redis_support import RedisServer, require_redis, require_tls
from store_support import answers, wait_for

import llmedge
from llmedge import LlmEdgeError, RateLimiter, RedisStore, StoreError


def test_connects_pings_and_reports_health(redis_server):
    store = RedisStore(redis_server.url, key_prefix="app:", timeout=0.5)
    rtt = store.ping()
    assert 0.0 < rtt < 0.5
    health = store.health()
    assert set(health) == {
        "connected", "cluster", "url", "last_error", "rtt_p50_ms", "rtt_p99_ms",
        "scripts_loaded", "errors", "timeouts", "fallbacks", "reconnects",
    }  # fmt: skip
    assert health["connected"] is True and health["cluster"] is False
    assert health["url"] == redis_server.url
    assert health["rtt_p50_ms"] <= health["rtt_p99_ms"]
    assert health["errors"] == 0 and health["last_error"] is None
    assert set(store.metrics()) == {"calls", "errors", "timeouts", "fallbacks", "reconnects"}
    assert store.metrics()["calls"] >= 1
    assert (store.key_prefix, store.timeout, store.cluster) == ("app:", 0.5, False)
    assert "connected=True" in repr(store) and "app:" in repr(store)
    assert issubclass(StoreError, LlmEdgeError) and issubclass(StoreError, ConnectionError)
    assert "RedisStore" in llmedge.__all__ and "StoreError" in llmedge.__all__


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("localhost:6379", "scheme"),
        ("http://localhost:6379", 'scheme "http"'),
        ("redis://", "no host"),
        ("redis://localhost/zero", "database number"),
        ("redis://localhost:70000", "not a valid URL"),
        ("", "not a valid URL"),
        ([], "non-empty list"),
    ],
)
def test_bad_urls_are_value_errors(url, match):
    with pytest.raises(ValueError, match=match):
        RedisStore(url)


def test_bad_arguments_name_the_value():
    with pytest.raises(TypeError, match="url must be a string or a list"):
        RedisStore(6379)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spaces"):
        RedisStore("redis://localhost", key_prefix="my app:")
    with pytest.raises(ValueError, match="timeout must be"):
        RedisStore("redis://localhost", timeout=0)
    with pytest.raises(ValueError, match="connect_timeout must be"):
        RedisStore("redis://localhost", connect_timeout=float("nan"))
    with pytest.raises(ValueError, match="exactly one URL"):
        RedisStore(["redis://a:1", "redis://b:2"], cluster=False)
    for bad in (0, 0.001, -1.0, float("inf"), 7200):
        with pytest.raises(ValueError, match="health_interval must be a number of seconds"):
            RedisStore("redis://localhost", health_interval=bad)


def test_the_heartbeat_notices_a_lost_server_without_any_call(redis_server):
    store = RedisStore(redis_server.url, timeout=0.2, connect_timeout=0.2, health_interval=0.05)
    assert store.health_interval == 0.05
    assert store.health()["connected"] is True
    calls = store.metrics()["calls"]
    redis_server.kill()
    # health() makes no call: only the heartbeat can see the server go
    wait_for(lambda: not store.health()["connected"], "the heartbeat to notice the loss")
    assert store.health()["last_error"]
    assert "connected=False" in repr(store)
    redis_server.start()
    wait_for(lambda: store.health()["connected"], "the reconnect")
    assert store.metrics()["calls"] == calls, "heartbeats are not counted as calls"
    assert store.metrics()["reconnects"] == 1
    store.close()


def test_wrong_password_fails_at_construction_without_showing_it():
    require_redis()
    with RedisServer(password="s3cret") as server:
        base = f"127.0.0.1:{server.port}/0"
        for url in (f"redis://:wrong-pw@{base}", f"redis://{base}"):
            with pytest.raises(StoreError) as info:
                RedisStore(url)
            assert "wrong-pw" not in str(info.value)
            assert "credentials" in str(info.value)
        store = RedisStore(server.url)
        assert store.ping() > 0
        assert "s3cret" not in repr(store) and "s3cret" not in store.health()["url"]


def test_unix_socket_with_password():
    require_redis()
    # Upper case: temporary directory names (in the socket path) are lower case.
    with RedisServer(password="UNIXPW", unixsocket=True) as server:
        store = RedisStore(server.unix_url)
        assert store.ping() > 0
        assert "UNIXPW" not in store.health()["url"]


def test_unreachable_at_construction_then_connects(redis_server):
    redis_server.kill()
    store = RedisStore(redis_server.url, timeout=0.2, connect_timeout=0.2)
    assert store.health()["connected"] is False
    with pytest.raises(StoreError, match="unavailable"):
        store.ping()
    assert store.health()["last_error"]
    redis_server.start()
    wait_for(lambda: answers(store), "the background connect")
    assert store.health()["connected"] is True
    assert store.metrics()["reconnects"] == 1


def test_closed_store_raises_and_limiters_fall_back(redis_server):
    store = RedisStore(redis_server.url)
    limiter = RateLimiter(1, 3600, burst=2, store=store, on_store_error="allow")
    assert limiter.try_acquire("k", 2)
    store.close()
    store.close()  # idempotent
    assert store.closed
    with pytest.raises(StoreError, match="store is closed"):
        store.ping()
    assert limiter.try_acquire("k")  # allow: fails open
    assert limiter.metrics()["fallbacks"] == 1
    assert store.health()["connected"] is False


def test_closing_while_threads_use_it(redis_server):
    store = RedisStore(redis_server.url, timeout=0.5)
    limiter = RateLimiter(1000, 1, burst=1000, store=store, name="busy")
    errors: list[BaseException] = []
    results: list[bool] = []
    started = threading.Barrier(5)

    def hammer() -> None:
        started.wait()
        try:
            for _ in range(300):
                results.append(limiter.try_acquire("k"))
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait()
    store.close()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 1200
    m = limiter.metrics()
    assert m["decisions"] + m["fallbacks"] + m["deny_cache_hits"] == 1200


def test_aping_does_not_block_the_loop(redis_server):
    store = RedisStore(redis_server.url, timeout=0.5)

    async def main() -> list[float]:
        rtts = await asyncio.gather(*(store.aping() for _ in range(20)))
        store.close()
        with pytest.raises(StoreError, match="closed"):
            await store.aping()
        return rtts

    assert all(rtt > 0 for rtt in asyncio.run(main()))


def test_scripts_reload_after_script_flush(redis_server):
    store = RedisStore(redis_server.url, timeout=0.5)
    limiter = RateLimiter(1, 3600, burst=3, store=store, name="flush")
    assert limiter.try_acquire("k")
    assert store.health()["scripts_loaded"] == 1
    redis_server.cli("SCRIPT", "FLUSH")
    assert limiter.try_acquire("k")
    assert limiter.available("k") == 1
    assert store.health()["scripts_loaded"] == 1
    assert limiter.metrics()["fallbacks"] == 0


def test_tls_with_the_servers_ca(monkeypatch):
    require_tls()
    with RedisServer(tls=True) as server:
        # rustls reads extra trust roots from SSL_CERT_FILE at each connect.
        monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
        store = RedisStore(server.url, timeout=0.5)
        assert server.url.startswith("rediss://")
        assert store.ping() > 0


def test_cluster(redis_cluster):
    store = RedisStore(redis_cluster.urls, timeout=0.5)
    assert store.cluster and store.health()["cluster"]
    assert store.ping() > 0
    limits = {"requests": (2, 3600.0), "tokens": (1000, 3600.0)}
    multi = llmedge.MultiRateLimiter(limits, store=store, name="c")
    for key in ("", "a", "b", "user:42"):
        assert multi.try_acquire(key, requests=1, tokens=600)
        assert not multi.try_acquire(key, requests=1, tokens=600)
        assert multi.available(key) == {"requests": 1, "tokens": 400}


def test_len_and_clear_on_a_cluster_walk_every_master(redis_cluster):
    store = RedisStore(redis_cluster.urls, timeout=0.5)
    limiter = llmedge.RateLimiter(1, 3600.0, burst=2, store=store, name="scan")
    other = llmedge.RateLimiter(1, 3600.0, burst=2, store=store, name="kept")
    keys = [f"user-{i}" for i in range(60)]
    for key in keys:
        assert limiter.try_acquire(key)
    assert other.try_acquire("x")
    owners = {redis_cluster.node_for_key(f"llmedge:rl:scan:{{{k}}}").port for k in keys}
    assert len(owners) == 3, "the keys should live on every master"
    assert len(limiter) == 60
    limiter.clear()
    assert len(limiter) == 0
    assert all(limiter.available(k) == 2 for k in keys[:5])
    assert len(other) == 1, "another limiter's keys are kept"
    store.close()

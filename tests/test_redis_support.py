"""The Redis test harness itself (tests/redis_support.py), checked with redis-py:
the servers and the cluster that the store, limiter and breaker tests rely on
really are what they claim, and their faults really happen."""

from __future__ import annotations

import threading

import pytest
import redis
import redis.cluster
from redis_support import (
    CLI_ENV,
    SERVER_ENV,
    RedisServer,
    RedisUnavailable,
    require_redis,
    require_tls,
    server_version,
)


def _client(server, **kw) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5, **kw)


def test_server_starts_empty_without_persistence(redis_server):
    r = _client(redis_server)
    assert r.ping()
    assert r.dbsize() == 0
    assert r.config_get("save")["save"] == ""
    assert r.config_get("appendonly")["appendonly"] == "no"
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    r.set("k", "v")
    assert redis_server.cli("GET", "k") == "v"
    r.close()


def test_kill_drops_connections_and_restart_comes_back_empty_on_the_same_port(redis_server):
    r = _client(redis_server, retry_on_timeout=False)
    r.set("k", "v")
    sha = r.script_load("return 1")
    port, pid = redis_server.port, redis_server.pid
    redis_server.kill()
    assert not redis_server.running
    with pytest.raises(redis.ConnectionError):
        r.get("k")
    redis_server.restart()
    assert redis_server.port == port and redis_server.pid != pid
    assert r.get("k") is None
    assert r.script_exists(sha) == [False]
    redis_server.kill()
    redis_server.start()
    assert redis_server.port == port and r.ping()
    r.close()


def test_pause_holds_commands_until_it_ends(redis_server):
    fast = _client(redis_server)
    slow = redis.Redis.from_url(redis_server.url, socket_timeout=0.2, retry_on_timeout=False)
    slow.ping()
    fast.ping()
    redis_server.pause(2)
    with pytest.raises(redis.TimeoutError):
        slow.get("k")
    assert fast.get("k") is None  # answered once the pause ends
    fast.close()
    slow.close()


def test_debug_sleep_blocks_the_whole_server(redis_server):
    r = redis.Redis.from_url(redis_server.url, socket_timeout=0.2, retry_on_timeout=False)
    r.ping()
    thread = redis_server.debug_sleep(1.5)
    with pytest.raises(redis.TimeoutError):
        r.ping()
    thread.join()
    r2 = _client(redis_server)
    assert r2.ping()
    r.close()
    r2.close()


def test_suspend_accepts_connections_but_never_answers(redis_server):
    redis_server.suspend()
    try:
        r = redis.Redis.from_url(
            redis_server.url, socket_timeout=0.2, socket_connect_timeout=5, retry_on_timeout=False
        )
        with pytest.raises(redis.TimeoutError):
            r.ping()
    finally:
        redis_server.resume()
    assert _client(redis_server).ping()


def test_cli_raises_on_error_replies(redis_server):
    redis_server.cli("SET", "s", "text")
    with pytest.raises(RuntimeError, match="WRONGTYPE"):
        redis_server.cli("LPUSH", "s", "x")


def test_password_and_unixsocket_server():
    require_redis()
    with RedisServer(password="s3cret", unixsocket=True) as server:
        assert server.url == f"redis://:s3cret@127.0.0.1:{server.port}/0"
        assert redis.Redis.from_url(server.url).ping()
        assert redis.Redis.from_url(server.unix_url).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port, password="wrong").ping()


def test_tls_server():
    require_tls()
    with RedisServer(tls=True) as server:
        assert server.url.startswith("rediss://")
        r = redis.Redis.from_url(server.url, ssl_ca_certs=str(server.ca_file))
        assert r.ping()
        r.close()


def test_context_manager_stops_the_process_and_removes_its_files():
    require_redis()
    with RedisServer() as server:
        proc, directory = server.proc, server.dir
        assert directory.is_dir()
    assert proc.poll() is not None
    assert not directory.exists()
    server.stop()  # twice is fine


def test_cluster_has_three_masters_with_a_replica_each(redis_cluster):
    masters = redis_cluster.masters()
    assert len(masters) == 3
    assert len(redis_cluster.replicas()) == 3
    assert len(redis_cluster.urls) == 6
    rc = redis.cluster.RedisCluster.from_url(redis_cluster.urls[0], socket_timeout=5)
    for i in range(100):
        rc.set(f"key-{i}", i)
    assert sorted(int(rc.get(f"key-{i}")) for i in range(100)) == list(range(100))
    assert {redis_cluster.node_for_key(f"key-{i}").port for i in range(100)} == {
        m.port for m in masters
    }
    rc.close()


def test_cluster_fails_over_when_a_master_is_killed(redis_cluster):
    rc = redis.cluster.RedisCluster.from_url(redis_cluster.urls[0], socket_timeout=5)
    key = "{failover}:k"
    rc.set(key, "kept")
    owner = redis_cluster.node_for_key(key)
    # the replica has the write before the master dies
    assert redis.Redis(port=owner.port).wait(1, 5000) == 1
    index = [m.port for m in redis_cluster.masters()].index(owner.port)
    killed = redis_cluster.kill_master(index)
    assert killed.port == owner.port and not killed.server.running
    redis_cluster.wait_for_failover()
    new_owner = redis_cluster.node_for_key(key)
    assert new_owner.port != owner.port
    assert redis.Redis(port=new_owner.port).get(key) == b"kept"
    rc.close()
    redis_cluster.heal()
    assert all(s.running for s in redis_cluster.servers)
    assert len(redis_cluster.masters()) == 3 and len(redis_cluster.replicas()) == 3


def test_cluster_is_healthy_and_empty_for_the_next_test(redis_cluster):
    # runs after the failover test in the same module: the fixture healed and flushed it
    assert all(s.running for s in redis_cluster.servers)
    assert redis_cluster.state_ok()
    for m in redis_cluster.masters():
        assert m.server.cli("DBSIZE") == "0"


def test_require_redis_skips_without_the_binary_but_fails_under_ci(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    monkeypatch.delenv(SERVER_ENV, raising=False)
    monkeypatch.delenv(CLI_ENV, raising=False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis-server and redis-cli not found"):
        require_redis()
    with pytest.raises(RedisUnavailable, match="not found on PATH"):
        RedisServer()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_redis()


def test_the_environment_names_the_binaries(tmp_path, monkeypatch):
    require_redis()
    # the server in use (the default, or CI's matrix) answers with its own version
    with RedisServer() as server:
        info = redis.Redis(port=server.port).info("server")
        version = info.get("valkey_version") or info["redis_version"]
        assert tuple(map(int, version.split("."))) == server_version()
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv(SERVER_ENV, str(tmp_path / "valkey-server"))
    with pytest.raises(pytest.skip.Exception, match=r"valkey-server not found .*LLMEDGE_TEST"):
        require_redis()
    monkeypatch.setenv(SERVER_ENV, str(tmp_path / "no-server"))
    with pytest.raises(RedisUnavailable, match="no-server"):
        RedisServer()


def test_servers_started_in_threads_get_distinct_ports():
    require_redis()
    servers: list[RedisServer] = []
    lock = threading.Lock()

    def start() -> None:
        s = RedisServer()
        with lock:
            servers.append(s)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len({s.port for s in servers}) == 4
        assert all(redis.Redis(port=s.port).ping() for s in servers)
    finally:
        for s in servers:
            s.stop()

"""Faults under a shared SemanticCache: Redis killed and restarted empty,
the stream trimmed past a reader, a reader paused longer than the stream
retains, garbage written under the namespace by another program. No
exception reaches a lookup, the counters say what happened, and the
processes converge. Real redis-server and Redis Cluster, no mocks."""

from __future__ import annotations

import pytest
import redis
import redis.cluster
from shared_cache_peer import Peer, eventually

from llmedge import RedisStore, SemanticCache

BASE = "llmedge:cache:{chat}:"


@pytest.fixture(params=["server", "cluster"])
def target(request):
    """(url, redis-py client) of a fresh Redis: one server or a cluster."""
    if request.param == "server":
        server = request.getfixturevalue("redis_server")
        client = redis.Redis.from_url(server.url)
        yield server.url, client
    else:
        cluster = request.getfixturevalue("redis_cluster")
        client = redis.cluster.RedisCluster.from_url(cluster.urls[0])
        yield cluster.urls, client
    client.close()


def shared(url, **kwargs) -> SemanticCache:
    kwargs.setdefault("namespace", "chat")
    return SemanticCache(store=RedisStore(url, timeout=0.5), **kwargs)


def test_redis_killed_and_restarted_empty_mid_load(redis_server):
    a = shared(redis_server.url, max_pending_writes=100)
    a.warm([(f"question {i}", f"answer {i}") for i in range(3000)])
    assert a.flush(30)
    b = shared(redis_server.url, background_load=True)
    redis_server.restart()  # mid-load, or just after: empty either way
    for i in range(0, 3000, 97):
        b.get(f"question {i}")  # never raises, whatever the load reached
        a.get(f"question {i}")
    # Redis is back, empty: what is learned now is shared again
    a.set("after the restart", "yes")
    eventually("the new entry reaching b", lambda: b.get("after the restart"))
    assert a.get("question 5") is not None  # a's own copy survived
    assert b.stats()["shared"]["connected"]
    c = shared(redis_server.url)
    assert c.get("after the restart") is not None


def test_writes_queue_while_redis_is_down_then_drop_and_count(redis_server):
    a = shared(redis_server.url, max_pending_writes=3)
    b = shared(redis_server.url)
    redis_server.kill()
    for i in range(5):
        a.set(f"while down {i}", i)  # never raises, never waits for Redis
        assert a.get(f"while down {i}") is not None
    st = a.stats()["shared"]
    assert st["queue_depth"] == 3 and st["dropped"] == 2
    redis_server.start()
    assert a.flush(30)
    for i in (2, 3, 4):
        eventually(f"entry {i} reaching b", lambda i=i: b.get(f"while down {i}"))
    assert a.stats()["shared"]["sent"] == 3
    assert a.stats()["shared"]["errors"] >= 1
    assert a.stats()["shared"]["last_error"]


def test_a_stream_trimmed_past_a_reader_and_a_reader_paused_beyond_retention(target):
    url, client = target
    b = Peer(url, namespace="chat")
    try:
        a = shared(url, stream_max_len=100)
        a.set("known to b", "old", tags=["t"])
        assert b.call("wait_hit", "known to b") is not None
        # paused longer than the stream retains
        b.suspend()
        a.invalidate_tag("t")
        a.warm([(f"q{i}", i) for i in range(300)])
        for i in range(300, 400):
            a.set(f"q{i}", i)
        assert a.flush(30)
        b.resume()
        assert b.call("wait_hit", "q399") is not None
        assert b.call("wait_miss", "known to b") is not None
        assert b.call("get", "q0") == 0
        eventually("b counting the resync", lambda: b.call("stats")["shared"]["resyncs"] >= 1)
        # the stream trimmed under an idle reader
        resyncs = b.call("stats")["shared"]["resyncs"]
        client.xtrim(BASE + "log", maxlen=0)
        a.set("after trim", "x")
        a.set("after trim 2", "y")
        client.xtrim(BASE + "log", maxlen=0)
        a.set("after trim 3", "z")
        assert b.call("wait_hit", "after trim 3") is not None
        assert b.call("get", "after trim") == "x"
        assert b.call("stats")["shared"]["resyncs"] >= resyncs
    finally:
        b.close()


def test_garbage_under_the_namespace_is_skipped_and_counted(target):
    url, client = target
    a = shared(url)
    b = shared(url)
    a.set(PROMPT := "What is the capital of France?", "Paris")
    eventually("the entry reaching b", lambda: b.get(PROMPT))
    assert a.flush()
    good_id = client.zrange(BASE + "idx", 0, 0)[0].decode()
    blob = client.hget(BASE + f"e:{good_id}", "d")
    # another program writes under the namespace
    client.xadd(BASE + "log", {"hello": "world"})
    client.hset(BASE + "e:truncated", mapping={"d": blob[:-7], "s": 99, "p": "x", "t": ""})
    client.hset(BASE + "e:version", mapping={"d": blob[:4] + b"\x09" + blob[5:], "s": 99,
                                               "p": "x", "t": ""})  # fmt: skip
    client.hset(BASE + "e:pickle", mapping={"d": b"\x80\x04\x95junk", "s": 99, "p": "x", "t": ""})
    client.set(BASE + "e:wrongtype", "a string")
    client.zadd(BASE + "idx", {"truncated": 90, "version": 91, "pickle": 92, "wrongtype": 93})
    for _ in range(50):
        assert b.get(PROMPT) is not None  # lookups never see any of it
        b.get("something else")
    c = shared(url)  # loads past the garbage
    assert c.get(PROMPT) is not None
    assert c.stats()["shared"]["invalid"] >= 4
    # a stream and a counter of the wrong type are repaired; state converges
    client.delete(BASE + "seq")
    client.set(BASE + "seq", "not a number")
    a.set("after the garbage", "ok")
    eventually("the new entry reaching b", lambda: b.get("after the garbage"))
    eventually("the new entry reaching c", lambda: c.get("after the garbage"))
    assert b.stats()["shared"]["invalid"] >= 1
    assert c.get(PROMPT) is not None or a.get(PROMPT) is not None

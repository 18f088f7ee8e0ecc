"""Faults under a shared SemanticCache: Redis killed and restarted empty,
the stream trimmed past a reader, a reader paused longer than the stream
retains, garbage written under the namespace by another program. No
exception reaches a lookup, the counters say what happened, and the
processes converge. Real redis-server and Redis Cluster, no mocks."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
import redis
import redis.cluster
from redis_load import hammer_threads, merge
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


def _queued_and_dropped(cache) -> tuple[int, int]:
    st = cache.stats()["shared"]
    return st["queue_depth"], st["dropped"]


def test_writes_queue_while_redis_is_down_then_drop_and_count(redis_server):
    a = shared(redis_server.url, max_pending_writes=3)
    b = shared(redis_server.url)
    redis_server.kill()
    for i in range(5):
        a.set(f"while down {i}", i)  # never raises, never waits for Redis
        assert a.get(f"while down {i}") is not None
    assert a.stats()["shared"]["queue_depth"] <= 3
    eventually("3 queued and 2 dropped", lambda: _queued_and_dropped(a) == (3, 2))
    redis_server.start()
    assert a.flush(30)
    for i in (2, 3, 4):
        eventually(f"entry {i} reaching b", lambda i=i: b.get(f"while down {i}"))
    assert a.stats()["shared"]["sent"] == 3
    assert a.stats()["shared"]["errors"] >= 1
    assert a.stats()["shared"]["last_error"]


def test_the_queue_stays_bounded_when_a_write_hangs(redis_server):
    a = shared(redis_server.url, max_pending_writes=3)
    redis_server.suspend()  # the first write waits for an answer that never comes
    try:
        a.set("first", 0)
        eventually(
            "the sender holding the first write", lambda: a.stats()["shared"]["queue_depth"] == 0
        )
        for i in range(5):
            a.set(f"while hung {i}", i)
        # the held write gives up and goes back to the queue's front, the
        # oldest: it is dropped, so that the queue stays bounded
        eventually("the hung write back and dropped", lambda: a.stats()["shared"]["dropped"] >= 3)
        st = a.stats()["shared"]
        assert st["queue_depth"] == 3 and st["dropped"] == 3, st
        assert st["errors"] >= 1
    finally:
        redis_server.resume()
    assert a.flush(30)
    assert a.stats()["shared"]["sent"] == 3


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


def test_a_failover_that_lost_the_last_writes_is_noticed(target):
    url, client = target
    b = Peer(url, namespace="chat")
    try:
        a = shared(url)
        a.warm([(f"q{i}", i) for i in range(10)])
        assert b.call("wait_hit", "q9") is not None
        # what a promoted replica that missed the last two writes holds: the
        # counter goes back, and the next events take numbers b has applied
        lost = [e[0] for e in client.xrevrange(BASE + "log", count=2)]
        client.xdel(BASE + "log", *lost)
        client.decrby(BASE + "seq", 2)
        b.suspend()
        for i in range(3):
            a.set(f"new {i}", i)
        assert a.flush(30)
        b.resume()
        for i in range(3):
            assert b.call("wait_hit", f"new {i}") is not None, f"b missed new {i}"
        assert b.call("stats")["shared"]["resyncs"] >= 1
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


# ---------------------------------------------------------------------------
# On a Redis Cluster: the namespace's master killed, every master flushed,
# the whole cluster down and restarted empty
# ---------------------------------------------------------------------------

TIMEOUT = 0.25
# scheduling noise a call may add to the store's timeout on a loaded 2-core machine:
# the bound is about hanging, not speed
MARGIN = float(os.environ.get("LLMEDGE_TEST_LATENCY_MARGIN", "1.0"))


def on_cluster(cluster, **kwargs) -> SemanticCache:
    kwargs.setdefault("namespace", "chat")
    store = RedisStore(cluster.urls, timeout=TIMEOUT, connect_timeout=0.5)
    return SemanticCache(store=store, **kwargs)


class Traffic:
    """Threads calling ``fn(thread_index)`` until ``stop()``, which checks that
    no call raised and none waited longer than the store's timeout + MARGIN."""

    def __init__(self, fn, threads: int) -> None:
        self.stop_event = threading.Event()
        self.threads, self.records = hammer_threads(
            fn, threads=threads, stop=self.stop_event, pause=0.002
        )

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a caller thread hangs"
        calls = merge(self.records)
        assert not calls.errors, f"exceptions reached the caller: {calls.errors[:5]}"
        worst = max(calls.durations)
        assert worst <= TIMEOUT + MARGIN, (
            f"a call took {worst:.3f} s (store timeout {TIMEOUT} s + margin {MARGIN} s); "
            f"slowest (duration, start): {calls.slowest()}"
        )
        return calls

    def __enter__(self) -> Traffic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=60)


def accounted(cache: SemanticCache, entries: int) -> None:
    """Every entry given to `cache` was sent, refused or dropped, once."""
    assert cache.flush(30)
    st = cache.stats()["shared"]
    assert st["queue_depth"] == 0
    assert st["sent"] + st["refused"] + st["dropped"] == entries, st


def the_chat_master(cluster) -> int:
    """The index (for kill_master) of the master holding the namespace."""
    owner = cluster.node_for_key(BASE + "meta")
    return [m.port for m in cluster.masters()].index(owner.port)


def test_cluster_master_killed_mid_load_fails_over(redis_cluster):
    # small local copies: lookups also go to Redis for what they evicted
    a = on_cluster(redis_cluster, max_entries=100, max_pending_writes=100)
    a.warm([(f"question {i}", f"answer {i}") for i in range(1000)])
    assert a.flush(30)
    master = redis_cluster.node_for_key(BASE + "meta")
    assert redis.Redis(port=master.port).wait(1, 5000) == 1  # the replica has the warm
    b = on_cluster(redis_cluster, max_entries=100, background_load=True,
                   max_pending_writes=100)  # fmt: skip
    given = {id(a): 1000, id(b): 0}
    lock = threading.Lock()

    def call(i: int):
        cache = (a, b)[i % 2]
        if i >= 2:  # two threads set, two look up
            with lock:
                n = given[id(cache)] = given[id(cache)] + 1
            return cache.set(f"during the failover {i} {n}", n)
        return cache.get(f"question {random.randrange(1000)}")

    with Traffic(call, threads=4) as traffic:
        redis_cluster.kill_master(the_chat_master(redis_cluster))  # while b loads
        waited = redis_cluster.wait_for_failover()
        eventually("b loaded", lambda: b.stats()["shared"]["loaded"])
        traffic.stop()
    accounted(a, given[id(a)])
    accounted(b, given[id(b)])
    for cache in (a, b):
        st = cache.stats()["shared"]
        assert st["errors"] >= 1 and st["last_error"], st
        assert st["dropped"] > 0, f"{waited:.1f} s of failover filled a queue of 100: {st}"
    # b's stream follower resumed (it backs off up to a second while Redis
    # fails, so it may still be catching up here): only an event read from the
    # stream removes b's own local copy; a lookup in Redis never does
    b.set("b's own entry", "stale")
    assert b.flush(30)
    a.invalidate("b's own entry")
    eventually("a's invalidation reaching b", lambda: b.get("b's own entry") is None)
    assert b.stats()["shared"]["received"] >= 1
    # shared again: a set in one is a hit in the other, and in a late joiner
    a.set("after the failover", "yes")
    eventually("a set after the failover reaching b", lambda: b.get("after the failover"))
    c = on_cluster(redis_cluster)
    assert c.get("after the failover").response == "yes"
    assert c.get("question 7").response == "answer 7"


def test_every_cluster_master_flushed_mid_load(redis_cluster):
    a = on_cluster(redis_cluster)
    a.warm([(f"question {i}", f"answer {i}") for i in range(2000)])
    assert a.flush(30)
    b = on_cluster(redis_cluster, background_load=True)

    def call(i: int):
        return (a, b)[i % 2].get(f"question {random.randrange(2000)}")

    with Traffic(call, threads=2) as traffic:
        redis_cluster.flushall()  # FLUSHALL and SCRIPT FLUSH on every master, while b loads
        a.set("after the flush", "yes")
        eventually("a set after the flush reaching b", lambda: b.get("after the flush"))
        traffic.stop()
    assert a.get("question 5") is not None  # a's own copy outlives Redis's
    # invalidations after the flush reach everyone, and what they removed stays removed
    b.invalidate("question 5")
    b.invalidate("after the flush")
    eventually("the invalidation reaching a", lambda: a.get("question 5") is None)
    eventually("the invalidation reaching a", lambda: a.get("after the flush") is None)
    a.set("later", "z")
    eventually("a later set reaching b", lambda: b.get("later"))
    c = on_cluster(redis_cluster)
    assert c.get("later").response == "z"
    for cache in (a, b, c):
        assert cache.get("question 5") is None and cache.get("after the flush") is None
    assert a.stats()["shared"]["connected"] and b.stats()["shared"]["loaded"]


def test_cluster_down_bounds_the_queue_then_comes_back_empty(redis_cluster):
    a = on_cluster(redis_cluster, max_pending_writes=3)
    b = on_cluster(redis_cluster)
    # p has applied many events when the cluster dies, and queues a write of
    # an entry that b invalidates once the cluster is back (empty)
    p = Peer(redis_cluster.urls, namespace="chat")
    try:
        b.warm([(f"question {i}", i) for i in range(50)])
        b.set("known before", "old")
        assert p.call("wait_hit", "known before") is not None
        for s in redis_cluster.servers:
            s.kill()
        took = []
        for i in range(5):
            t = time.monotonic()
            a.set(f"while down {i}", i)  # never raises, never waits for Redis
            assert a.get(f"while down {i}") is not None
            took.append(time.monotonic() - t)
        assert max(took) <= TIMEOUT + MARGIN, took
        # the queue holds 3 entries beside a retry in flight; between retries
        # the oldest has gone back and been dropped
        assert a.stats()["shared"]["queue_depth"] <= 3
        eventually("3 queued and 2 dropped", lambda: _queued_and_dropped(a) == (3, 2))
        p.call("set", "known before", "stale")
        p.suspend()
        redis_cluster.heal()  # every node back, empty
        b.invalidate("known before")
        assert b.flush(30)
        p.resume()
        assert p.call("flush", 30)
        assert a.flush(30)
        for i in (2, 3, 4):
            eventually(f"entry {i} reaching b", lambda i=i: b.get(f"while down {i}"))
        st = a.stats()["shared"]
        assert st["sent"] == 3 and st["dropped"] == 2, st
        assert st["errors"] >= 1 and st["last_error"]
        # the write queued before the invalidation does not bring the entry back
        assert p.call("stats")["shared"]["refused"] == 1
        assert p.call("wait_miss", "known before") is not None
        eventually("the invalidation reaching a", lambda: a.get("known before") is None)
        assert on_cluster(redis_cluster).get("known before") is None
        assert b.get("known before") is None and p.call("get", "known before") is None
    finally:
        p.close()

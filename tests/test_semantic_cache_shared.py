"""A SemanticCache shared through Redis (store=, namespace=) by several
processes: real redis-server and a real 3-master Redis Cluster, no mocks.

Waiting for replication polls with a generous deadline: the assertions are
about what happens, never about how fast (the benchmarks measure that)."""

from __future__ import annotations

import pytest
from shared_cache_peer import Peer, PeerError

import llmedge
from llmedge import CacheNamespaceError, RedisStore, SemanticCache

PROMPT = "What is the capital of France?"


@pytest.fixture(params=["server", "cluster"])
def redis_url(request):
    """The URL(s) of a fresh Redis: one server, or the nodes of a cluster."""
    if request.param == "server":
        return request.getfixturevalue("redis_server").url
    return request.getfixturevalue("redis_cluster").urls


@pytest.fixture
def peers(redis_url):
    started: list[Peer] = []

    def start(**kwargs):
        kwargs.setdefault("namespace", "chat")
        p = Peer(redis_url, **kwargs)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()


def test_a_set_in_one_process_is_a_hit_in_the_others_and_in_late_joiners(peers):
    a, b, c = peers(), peers(), peers()
    a.call("set", PROMPT, "Paris", metadata={"model": "m"}, tags=["geo"])
    for p in (b, c):
        assert p.call("wait_hit", "what is the capital of   france?") is not None
        assert p.call("get", PROMPT) == "Paris"
    # a paraphrase is a semantic hit in another process
    b.call("set", "How do I reverse a list in Python?", "reversed(xs)")
    assert a.call("wait_hit", "how do i reverse a list in python please") is not None
    late = peers()
    assert late.call("get", PROMPT) == "Paris"  # loaded before the constructor returned
    stats = late.call("stats")["shared"]
    assert stats["loaded"] and stats["loaded_entries"] == 2
    assert a.call("stats")["shared"]["sent"] == 1
    assert b.call("stats")["shared"]["received"] >= 1
    assert a.call("stats")["shared"]["lag_p99_ms"] is not None


def test_invalidation_and_clear_reach_every_process_and_stay(peers, redis_url):
    a, b = peers(), peers()
    a.call("warm", [(f"question {i}", f"answer {i}") for i in range(10)], tags=["batch"])
    a.call("set", "partitioned question", "x", partition={"model": "m1"})
    a.call("set", "single question", "y")
    assert b.call("wait_hit", "question 9") is not None
    assert b.call("wait_hit", "single question") is not None
    b.call("invalidate", "single question")
    b.call("invalidate_tag", "batch")
    b.call("invalidate_partition", {"model": "m1"})
    assert a.call("wait_miss", "single question") is not None
    assert a.call("wait_miss", "question 3") is not None
    assert a.call("wait_miss", "partitioned question", partition={"model": "m1"}) is not None
    assert b.call("flush")
    # a process joining now does not load what was invalidated
    late = peers()
    assert late.call("len") == 0
    # a set after the invalidation is shared again
    b.call("set", "single question", "z")
    assert a.call("wait_hit", "single question") is not None
    a.call("clear")
    assert b.call("wait_miss", "single question") is not None
    assert a.call("flush")
    assert peers().call("len") == 0


def test_ttl_is_respected_everywhere(peers):
    a, b = peers(), peers()
    a.call("set", PROMPT, "Paris", ttl=1.0)
    a.call("set", "long lived", "yes", ttl=600)
    assert b.call("wait_hit", PROMPT) is not None
    assert b.call("wait_miss", PROMPT) is not None
    assert a.call("wait_miss", PROMPT) is not None
    late = peers()
    assert late.call("get", PROMPT) is None
    assert late.call("get", "long lived") == "yes"


def test_another_embedder_is_refused(peers, redis_url):
    peers()  # creates the namespace with the default embedder
    with pytest.raises(PeerError) as e:
        peers(hashing_dim=8)
    assert e.value.kind == "CacheNamespaceError"
    with pytest.raises(CacheNamespaceError, match="dimension 384"):
        SemanticCache(
            store=RedisStore(redis_url), namespace="chat", embedder=llmedge.HashingEmbedder(dim=8)
        )
    # another namespace is fine
    SemanticCache(
        store=RedisStore(redis_url), namespace="chat8", embedder=llmedge.HashingEmbedder(dim=8)
    )


def test_local_memory_stays_bounded_while_redis_holds_more(peers):
    a = peers(max_entries=50)
    b = peers(max_entries=50)
    a.call("warm", [(f"question number {i}", f"answer {i}") for i in range(300)])
    assert b.call("wait_hit", "question number 299") is not None
    assert a.call("len") <= 50 and b.call("len") <= 50
    late = peers(max_entries=50)
    assert late.call("len") <= 50
    # an exact entry the local copy evicted comes back from Redis in one trip
    before = b.call("stats")["shared"]["remote_hits"]  # waiting above may have fetched too
    assert b.call("get", "question number 3") == "answer 3"
    assert b.call("stats")["shared"]["remote_hits"] == before + 1
    assert b.call("stats")["exact_hits"] >= 1
    assert peers(max_entries=1000, namespace="chat").call("len") == 300


def test_max_shared_entries_bounds_redis(peers):
    a = peers(max_shared_entries=20)
    a.call("warm", [(f"q{i}", f"a{i}") for i in range(100)])
    assert a.call("flush")
    assert peers().call("len") == 20


def test_bad_arguments():
    with pytest.raises(ValueError, match="namespace= needs store="):
        SemanticCache(namespace="chat")
    with pytest.raises(TypeError, match="store must be a llmedge.RedisStore"):
        SemanticCache(store="redis://localhost")


def test_bad_namespace(redis_server):
    store = RedisStore(redis_server.url)
    for bad in ["", "a b", "x{y}"]:
        with pytest.raises(ValueError, match="namespace"):
            SemanticCache(store=store, namespace=bad)
    with pytest.raises(ValueError, match="stream_max_len"):
        SemanticCache(store=store, namespace="ok", stream_max_len=5)
    c = SemanticCache(store=store, namespace="ok")
    assert c.namespace == "ok" and 'namespace="ok"' in repr(c)
    with pytest.raises(ValueError, match="timeout"):
        c.flush(-1)


def test_docs_example_runs(redis_server, capsys):
    import re

    from docs_text import docs_text

    section = docs_text().split("### One cache for every worker and host (Redis)", 1)[1]
    source = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    source = source.replace("redis://localhost:6379/0", redis_server.url)
    exec(compile(source, "docs/cache.md", "exec"), {"__name__": "docs_shared_cache"})
    assert capsys.readouterr().out.strip() == "Paris"

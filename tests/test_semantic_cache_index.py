"""SemanticCache's vector index through the public API: the switch of an
`index="auto"` partition to a graph built off the lock while other threads
insert and look up, `warm()` returning with the graph built, compaction of a
mostly removed graph, and the memory an index holds counted in
`memory_bytes`."""

from __future__ import annotations

import threading
import time

import numpy as np

from llmedge import SemanticCache

DIM = 16


def vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM))
    return (v / np.linalg.norm(v, axis=1)[:, None]).astype(np.float32)


def wait_for_builds(c: SemanticCache) -> None:
    # the pytest timeout bounds this; no duration is asserted
    while c.stats()["index_builds"]:
        time.sleep(0.001)


def response_of(c: SemanticCache, v: np.ndarray, partition: str | None = None):
    hit = c.get("a prompt no entry has", embedding=v, partition=partition)
    return None if hit is None else hit.response


def test_auto_switch_under_concurrent_sets_gets_and_invalidations():
    n = 3000
    data = vectors(n)
    c = SemanticCache(dim=DIM, threshold=0.999, ttl=None, max_entries=n, guard=False)
    errors: list[BaseException] = []
    done = threading.Event()

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not done.is_set():
                i = int(rng.integers(0, n))
                got = response_of(c, data[i])
                # a live entry is found by its own vector; an absent one
                # (not yet inserted, or removed) is never returned for it
                assert got in (None, i)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    readers = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in readers:
        t.start()
    for i in range(n):
        c.set(f"p{i}", i, embedding=data[i])
        if i % 4 == 3:
            assert c.invalidate(f"p{i - 2}")
    done.set()
    for t in readers:
        t.join()
    assert errors == []
    wait_for_builds(c)
    assert c.stats()["indexes"] == {"flat": 0, "hnsw": 1}
    removed = {i - 2 for i in range(n) if i % 4 == 3}
    assert len(c) == n - len(removed)
    for i in range(n):
        assert response_of(c, data[i]) == (None if i in removed else i), i


def test_warm_returns_with_the_graph_built_and_exact_nearest_neighbours():
    rng = np.random.default_rng(4)
    n = 6000
    centers = rng.normal(size=(n // 20, DIM))
    data = centers[rng.integers(0, len(centers), size=n)] + rng.normal(scale=0.6, size=(n, DIM))
    data = (data / np.linalg.norm(data, axis=1)[:, None]).astype(np.float32)
    c = SemanticCache(dim=DIM, threshold=-1.0, ttl=None, max_entries=n, guard=False)
    assert c.warm([(f"p{i}", i) for i in range(n)], embeddings=data) == n
    s = c.stats()
    assert s["indexes"] == {"flat": 0, "hnsw": 1} and s["index_builds"] == 0
    queries = data[rng.choice(n, size=200, replace=False)] + rng.normal(scale=0.02, size=(200, DIM))
    agree = sum(response_of(c, q) == int(np.argmax(data @ q)) for q in queries)
    assert agree >= 198


def test_small_auto_partitions_stay_exact():
    # Below the switch the flat index is exact: the best entry, every time.
    data = vectors(1000, seed=2)
    c = SemanticCache(dim=DIM, threshold=-1.0, ttl=None, guard=False)
    c.warm([(f"p{i}", i) for i in range(1000)], embeddings=data)
    assert c.stats()["indexes"] == {"flat": 1, "hnsw": 0}
    for q in vectors(100, seed=3):
        assert response_of(c, q) == int(np.argmax(data @ q))


def test_a_mostly_removed_graph_is_compacted():
    n = 4000
    data = vectors(n, seed=5)
    c = SemanticCache(dim=DIM, index="hnsw", threshold=0.999, ttl=None, max_entries=n, guard=False)
    c.warm([(f"p{i}", i) for i in range(n)], embeddings=data)
    full = c.stats()
    for i in range(n):
        if i % 10:
            assert c.invalidate(f"p{i}")
    wait_for_builds(c)
    s = c.stats()
    assert s["entries"] == n // 10
    assert s["index_slack_bytes"] < full["memory_bytes"] / 20
    assert s["memory_bytes"] < full["memory_bytes"] / 5
    for i in range(0, n, 7):
        assert response_of(c, data[i]) == (i if i % 10 == 0 else None)


def test_memory_bytes_counts_what_an_index_holds_and_stays_bounded():
    # Forced graphs in many partitions with churn: the memory an index keeps
    # beyond its entries (slots awaiting reuse, its walks' visited sets) is
    # counted, and the bound holds after every insert.
    c = SemanticCache(
        dim=DIM, index="hnsw", threshold=0.999, ttl=None, guard=False, max_memory_mb=1
    )
    limit = c.stats()["max_memory_bytes"]
    data = vectors(6000, seed=6)
    for i, v in enumerate(data):
        c.set(f"p{i}", i, embedding=v, partition=f"part{i % 7}")
        if i % 500 == 0:
            response_of(c, v, partition=f"part{i % 7}")
        s = c.stats()
        assert s["memory_bytes"] <= limit
        assert s["memory_bytes"] >= s["index_slack_bytes"]
    assert 0 < len(c) < 6000
    assert c.stats()["evictions"] == 6000 - len(c)

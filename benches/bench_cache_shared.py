"""The semantic cache shared through Redis (``store=``, ``namespace=``), on a
local ``redis-server`` started by the suite (no persistence).

Cases:

* ``test_local_hit_latency``: 300 semantic-hit lookups (embedding passed in)
  at 100,000 entries, a cache with a store against the same cache without
  one, interleaved round by round (the ratio is the cost of sharing on the
  lookup path; goal: none).
* ``test_set_to_hit``: process A sets a new prompt, process B polls ``get``
  every 0.5 ms; the time from A's ``set`` returning to B's first hit (wall
  clock of one machine), p50/p99 over 200 prompts (goal p99 <= 50 ms).
* ``test_replication_lag``: 4 processes each setting 125 prompts/s (500/s in
  all) for a few seconds; every process's replication lag (from the writer
  queueing a change to the reader having inserted it), p50/p99 as each
  process's ``stats()["shared"]`` reports it.
* ``test_cold_start``: a process joining the 100,000-entry namespace: seconds
  until the constructor returns with every entry loaded and answerable (the
  exact scan answers while the graph builds in the background), then the
  time until the graph is in place, and a join with ``index="flat"`` (what
  fetching and decoding cost without the index).
* ``test_memory_per_entry``: Redis ``used_memory`` growth per entry (entry
  hash, index member, and the stream's share) beside the local copy's bytes
  per entry (``stats()["memory_bytes"] / entries``).

Run: ``pytest benches/bench_cache_shared.py --benchmark-enable``
(``LLMEDGE_BENCH_QUICK=0`` for more rounds and samples).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from bench_cache import make_data
from conftest import QUICK, interleaved, record

import llmedge

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from shared_cache_peer import Peer  # noqa: E402

redis = pytest.importorskip("redis")

N = 100_000
DIM = 384
ROUNDS = 5 if QUICK else 15
SAMPLES = 200 if QUICK else 1000
LAG_SECONDS = 4 if QUICK else 15
# as in bench_cache: the synthetic prompts are not real paraphrases, so the
# guard (which would reject them) is off and every query is a semantic hit
BIG = {
    "max_entries": 200_000,
    "max_memory_mb": 4000.0,
    "threshold": 0.8,
    "ttl": None,
    "guard": False,
}


class Embed384:
    """A stand-in embedder of the right identity for precomputed vectors."""

    dim = DIM
    identity = "bench-precomputed-384"

    def __call__(self, prompts):
        raise AssertionError("the benchmark passes every embedding")


@pytest.fixture(scope="module")
def populated(redis_server):
    """A namespace of N entries written by one cache; Redis memory before/after."""
    client = redis.Redis.from_url(redis_server.url)
    before = client.info("memory")["used_memory"]
    prompts, stored, qprompts, queries, truth, truth_ok = make_data(N)
    store = llmedge.RedisStore(redis_server.url, timeout=1.0)
    writer = llmedge.SemanticCache(
        embedder=Embed384(), store=store, namespace="bench", stream_max_len=10_000, **BIG
    )
    local = llmedge.SemanticCache(embedder=Embed384(), **BIG)
    for lo in range(0, N, 10_000):
        pairs = [(p, f"answer {i}") for i, p in enumerate(prompts[lo : lo + 10_000], lo)]
        writer.warm(pairs, embeddings=stored[lo : lo + 10_000])
        local.warm(pairs, embeddings=stored[lo : lo + 10_000])
    assert writer.flush(300)
    after = client.info("memory")["used_memory"]
    yield {
        "url": redis_server.url,
        "writer": writer,
        "local": local,
        "queries": list(zip(qprompts, queries, strict=True)),
        "truth": truth,
        # the exact answer of each query: its nearest stored entry's, or a miss
        # when that is below the threshold
        "exact": [f"answer {i}" if ok else None for i, ok in zip(truth, truth_ok, strict=True)],
        "redis_bytes": after - before,
        "client": client,
    }
    client.close()


def _lookups(cache, queries):
    return sum(cache.get(p, embedding=v) is not None for p, v in queries)


def _answers(cache, queries):
    return [None if (h := cache.get(p, embedding=v)) is None else h.response for p, v in queries]


def test_local_hit_latency(benchmark, populated):
    shared, local, queries = populated["writer"], populated["local"], populated["queries"]
    hits = interleaved(
        benchmark,
        lambda: _lookups(shared, queries),
        {"no store": lambda: _lookups(local, queries)},
        rounds=ROUNDS,
    )
    local_hits = _lookups(local, queries)
    benchmark.extra_info.update(
        lookups_per_round=len(queries), entries=len(shared), hits=hits, hits_no_store=local_hits
    )
    # a query whose nearest stored vector is below the threshold misses in both
    record(benchmark, "llmedge+store", hits == local_hits >= 0.99 * len(queries))


def test_set_to_hit(benchmark, redis_server):
    a = Peer(redis_server.url, namespace="lag")
    b = Peer(redis_server.url, namespace="lag")
    try:
        lags = []

        def run():
            for i in range(SAMPLES):
                prompt = f"fresh question number {i} {time.time()}"
                b.send("wait_until_hit_wall", prompt, timeout=5.0)
                set_at = a.call("wait_set", prompt, f"answer {i}")
                hit_at = b.result()
                lags.append(None if hit_at is None else (hit_at - set_at) * 1000)

        benchmark.pedantic(run, rounds=1, iterations=1)
        seen = [x for x in lags if x is not None]
        qs = statistics.quantiles(seen, n=100)
        benchmark.extra_info.update(
            samples=len(lags), p50_ms=statistics.median(seen), p99_ms=qs[98], max_ms=max(seen)
        )
        record(benchmark, "llmedge", len(seen) == len(lags))
    finally:
        a.close()
        b.close()


def test_replication_lag(benchmark, redis_server):
    peers = [Peer(redis_server.url, namespace="rate") for _ in range(4)]
    try:

        def run():
            for i, p in enumerate(peers):
                p.send("pace_sets", 125, LAG_SECONDS, f"writer {i}")
            return sum(p.result(LAG_SECONDS + 120) for p in peers)

        total = benchmark.pedantic(run, rounds=1, iterations=1)
        time.sleep(0.5)
        stats = [p.call("stats")["shared"] for p in peers]
        benchmark.extra_info.update(
            sets=total,
            sets_per_second=total / LAG_SECONDS,
            lag_p50_ms=[s["lag_p50_ms"] for s in stats],
            lag_p99_ms=[s["lag_p99_ms"] for s in stats],
            received=[s["received"] for s in stats],
        )
        lengths = [p.call("len") for p in peers]
        benchmark.extra_info["entries"] = lengths
        record(
            benchmark,
            "llmedge",
            all(n == total for n in lengths) and all(s["dropped"] == 0 for s in stats),
        )
    finally:
        for p in peers:
            p.close()


def _join(url, **options):
    return llmedge.SemanticCache(
        embedder=Embed384(),
        store=llmedge.RedisStore(url, timeout=1.0),
        namespace="bench",
        **{**BIG, **options},
    )


def test_cold_start(benchmark, populated):
    """Timed: the constructor, until it returns with every entry loaded and
    answerable (the exact scan answers until the graph is built). Untimed,
    after each round: the answers right then (they must be the exact ones)
    and their mean latency, then the time until the graph is in place. At
    the end: the recall of the exact answers with the graph, and a join with
    index="flat" (Redis fetch and decode with O(1) local inserts: the part
    of the time that is not the index)."""
    queries, exact = populated["queries"], populated["exact"]
    made, ready_s, at_ready, ready_lookup_ms, graph_s = [], [], [], [], []

    def join():
        t0 = time.perf_counter()
        made.append(_join(populated["url"]))
        ready_s.append(time.perf_counter() - t0)

    def after_join():
        cache = made[-1]
        t0 = time.perf_counter()
        at_ready.append(_answers(cache, queries[:50]) == exact[:50])
        ready_lookup_ms.append((time.perf_counter() - t0) * 1000 / 50)
        while cache.stats()["index_builds"]:
            time.sleep(0.005)
        graph_s.append(time.perf_counter() - t0)

    benchmark.pedantic(join, teardown=after_join, rounds=1 if QUICK else 3, iterations=1)
    t0 = time.perf_counter()
    flat = _join(populated["url"], index="flat")
    flat_s = time.perf_counter() - t0
    flat_exact = _answers(flat, queries) == exact
    cache = made[-1]
    answers = _answers(cache, queries)
    recall = sum(a == e for a, e in zip(answers, exact, strict=True)) / len(queries)
    benchmark.extra_info.update(
        entries_loaded=len(cache),
        ready_s=[round(s, 2) for s in ready_s],
        graph_built_after_ready_s=[round(g, 2) for g in graph_s],
        exact_answers_at_ready=at_ready,
        lookup_ms_at_ready=[round(ms, 1) for ms in ready_lookup_ms],
        recall_after_graph=recall,
        flat_join_s=round(flat_s, 2),
        flat_exact=flat_exact,
    )
    record(
        benchmark,
        "llmedge",
        len(cache) == N == len(flat) and all(at_ready) and recall >= 0.99 and flat_exact,
    )


def test_memory_per_entry(benchmark, populated):
    writer, client = populated["writer"], populated["client"]
    st = writer.stats()

    def measure():
        keys = client.zrange("llmedge:cache:{bench}:idx", 0, 99)
        entry = [client.memory_usage(b"llmedge:cache:{bench}:e:" + k) for k in keys]
        return float(np.mean(entry))

    entry_key = benchmark.pedantic(measure, rounds=1, iterations=1)
    stream = client.memory_usage("llmedge:cache:{bench}:log")
    stream_len = client.xlen("llmedge:cache:{bench}:log")
    benchmark.extra_info.update(
        redis_bytes_per_entry=populated["redis_bytes"] / N,
        redis_entry_key_bytes=entry_key,
        redis_stream_bytes_per_event=stream / max(stream_len, 1),
        stream_events=stream_len,
        local_bytes_per_entry=st["memory_bytes"] / st["entries"],
    )
    record(benchmark, "llmedge", st["entries"] == N)

"""The error-bounded mode of SemanticCache (max_error_rate=): a young cache
refuses semantic candidates, learns from feedback, verified hits and the
candidates its misses refused, and serves once what it learned bounds the
rate of wrong answers; the state survives snapshots and travels through
Redis; bad input leaves it unchanged."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import numpy as np
import pytest

from llmedge import SemanticCache, embedding_answers_match, exact_answers_match

# the least count of all-correct observations within a bound of 20%
NEED_20 = 15


def unit(*v: float) -> np.ndarray:
    a = np.array(v + (0.0,) * (4 - len(v)), dtype=np.float32)
    return a / np.linalg.norm(a)


NEAR = unit(1.0, 0.3)
ORIGIN = unit(1.0)


def bounded(**kw) -> SemanticCache:
    kw.setdefault("max_error_rate", 0.2)
    kw.setdefault("seed", 7)
    return SemanticCache(dim=4, threshold=0.5, guard=False, **kw)


def learned(cache: SemanticCache) -> dict:
    return cache.stats()["error_bound"]


def teach(cache: SemanticCache, n: int, differ: bool = False) -> list[int]:
    """``n`` get_or_set calls of new prompts near the cached one, whose
    fresh answer is "A" (or, ``differ``, one of their own); the number of
    LLM calls each made."""
    calls = []
    for i in range(n):
        made = []
        cache.get_or_set(
            f"question {i}",
            lambda made=made, i=i: made.append(1) or (f"B{i}" if differ else "A"),
            embedding=unit(1.0, 0.3 + i * 1e-3),
        )
        calls.append(len(made))
    return calls


@pytest.mark.parametrize(
    ("value", "error"),
    [(0.0, ValueError), (1.0, ValueError), (-0.5, ValueError), (math.nan, ValueError)],
)
def test_a_bound_outside_the_open_unit_interval_is_refused(value, error):
    with pytest.raises(error, match="max_error_rate must be a rate strictly between 0 and 1"):
        bounded(max_error_rate=value)
    with pytest.raises(TypeError):
        bounded(max_error_rate="2%")
    with pytest.raises(TypeError, match="answers_match must be a callable"):
        bounded(answers_match="exact")


def test_a_young_cache_misses_then_learns_and_serves():
    c = bounded()
    assert c.max_error_rate == 0.2 and "max_error_rate=0.2" in repr(c)
    c.set("seed question", "A", embedding=ORIGIN)
    assert c.get("near", embedding=NEAR) is None
    assert learned(c)["thresholds"]["learned"] == 0
    calls = teach(c, 60)
    st = learned(c)
    # every early call computes (a miss, its refused candidate compared);
    # once learned, hits are served and some still verified
    assert calls[:NEED_20] == [1] * NEED_20
    assert 0 in calls
    assert st["probed"] >= NEED_20 and st["probed_wrong"] == 0
    assert st["thresholds"]["learned"] == 1 and st["thresholds"]["min"] < 1.0
    # every call computed on a miss (an insert) or on a verified hit
    assert st["verified"] == sum(calls) - (c.stats()["inserts"] - 1) > 0
    lo, hi = st["observed_error_ci"]
    assert lo == 0.0 and 0.0 < hi < 1.0
    assert 0.0 < st["verification_rate"] <= 1.0
    hit = c.get("near again", embedding=NEAR)
    assert hit is not None and hit.kind == "semantic"


def test_wrong_answers_keep_it_from_serving():
    c = bounded()
    c.set("seed question", "A", embedding=ORIGIN)
    teach(c, 60, differ=True)  # every fresh answer differs from the cached ones
    st = learned(c)
    assert st["thresholds"]["learned"] == 0
    assert st["probed_wrong"] > 0
    assert c.stats()["semantic_hits"] == 0


def test_the_same_seed_gives_the_same_decisions():
    runs = []
    for _ in range(2):
        c = bounded(seed=11)
        c.set("seed question", "A", embedding=ORIGIN)
        runs.append((teach(c, 80), learned(c)))
    assert runs[0] == runs[1]


def test_feedback_teaches_and_refuses_bad_hits_without_change():
    c = bounded(max_error_rate=0.5)
    c.set("seed question", "A", embedding=ORIGIN)
    other = bounded()
    other.set("seed question", "A", embedding=ORIGIN)
    exact = c.get("seed question")
    assert exact is not None and exact.kind == "exact"
    c.feedback(exact, True)
    before = learned(c)
    with pytest.raises(ValueError, match="already given"):
        c.feedback(exact, False)
    with pytest.raises(ValueError, match="another cache"):
        c.feedback(other.get("seed question"), True)
    with pytest.raises(TypeError, match="correct must be a bool"):
        c.feedback(c.get("seed question"), 1)
    with pytest.raises(TypeError, match="hit must be a llmedge.CacheHit"):
        c.feedback("seed question", True)
    stale = c.get("seed question")
    c.set("seed question", "A2", embedding=ORIGIN)  # replaced: the hit names nothing
    with pytest.raises(ValueError, match="no longer cached"):
        c.feedback(stale, True)
    assert learned(c) == before
    assert before["feedback"] == 1 and before["observations"] == 1


def test_answers_match_decides_and_its_errors_record_nothing():
    seen = []

    def match(cached, fresh):
        seen.append((cached, fresh))
        return cached.lower() == fresh.lower()

    c = bounded(answers_match=match)
    assert c.answers_match is match
    c.set("seed question", "Paris", embedding=ORIGIN)
    c.get_or_set("near", lambda: "PARIS", embedding=NEAR)
    assert seen == [("Paris", "PARIS")]
    assert learned(c)["probed"] == 1 and learned(c)["probed_wrong"] == 0

    def broken(cached, fresh):
        raise KeyError("no")

    d = bounded(answers_match=broken)
    d.set("seed question", "Paris", embedding=ORIGIN)
    with pytest.raises(RuntimeError, match="answers_match raised KeyError"):
        d.get_or_set("near", lambda: "Paris", embedding=NEAR)
    assert learned(d)["observations"] == 0
    assert d.get("near").response == "Paris"  # the fresh answer was stored
    e = bounded(answers_match=lambda a, b: "yes")
    e.set("seed question", "Paris", embedding=ORIGIN)
    with pytest.raises(TypeError, match="must return a bool"):
        e.get_or_set("near", lambda: "Paris", embedding=NEAR)
    assert learned(e)["observations"] == 0


def test_default_and_embedding_matchers():
    assert exact_answers_match("  Paris\n", "paris")
    assert not exact_answers_match("Paris", "Lyon")
    assert exact_answers_match({"a": 1}, {"a": 1})
    calls = []

    def embed(texts):
        calls.append(texts)
        return [[1.0, 0.0] if t.startswith("P") else [0.6, 0.8] for t in texts]

    m = embedding_answers_match(embed, min_similarity=0.9)
    assert m("Paris", "paris") and not calls
    assert m("Paris.", "Paris!") and not m("Paris", "Lyon")
    with pytest.raises(ValueError, match="min_similarity"):
        embedding_answers_match(embed, min_similarity=2.0)


def test_state_survives_a_snapshot(tmp_path):
    c = bounded()
    c.set("seed question", "A", embedding=ORIGIN)
    teach(c, 40)
    st = learned(c)
    path = tmp_path / "cache.snap"
    c.save(path)
    d = SemanticCache.load(path, dim=4, threshold=0.5, guard=False, max_error_rate=0.2)
    got = learned(d)
    assert got["observations"] == st["observations"]
    assert got["thresholds"] == st["thresholds"]
    assert d.get("near", embedding=NEAR) is not None


def test_feedback_from_many_threads_counts_each_hit_once():
    c = bounded(max_error_rate=0.5)
    c.set("seed question", "A", embedding=ORIGIN)
    hits = [c.get("seed question") for _ in range(8)]
    ok = []
    lock = threading.Lock()

    def judge(h):
        for _ in range(4):  # the same hit four times: one wins
            try:
                c.feedback(h, True)
            except ValueError:
                continue
            with lock:
                ok.append(h)

    threads = [threading.Thread(target=judge, args=(h,)) for h in hits for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == 8
    assert learned(c)["feedback"] == 8


def test_async_and_decorated_calls_verify_too():
    c = bounded()
    c.set("seed question", "A", embedding=ORIGIN)

    async def main():
        async def answer():
            await asyncio.sleep(0)
            return "A"

        for i in range(40):
            await c.aget_or_set(f"question {i}", answer, embedding=unit(1.0, 0.3 + i * 1e-3))

    asyncio.run(main())
    st = learned(c)
    assert st["probed"] >= NEED_20 and st["thresholds"]["learned"] == 1
    assert c.stats()["semantic_hits"] > 0

    d = bounded(embedder=lambda texts: [NEAR if t != "seed" else ORIGIN for t in texts])
    d.set("seed", "A")
    made = []

    @d.cached()
    def ask(prompt: str) -> str:
        made.append(prompt)
        return "A"

    for i in range(30):
        assert ask(f"prompt {i}") == "A"
    assert learned(d)["probed"] >= 1
    assert len(made) < 30


def test_async_verification_runs_a_users_answers_match_off_the_event_loop():
    loop_thread = []
    ran_in = []

    def match(cached, fresh):  # an embedder call, say: blocking work
        ran_in.append(threading.get_ident())
        return cached == fresh

    c = bounded(answers_match=match)
    c.set("seed question", "A", embedding=ORIGIN)

    async def main():
        loop_thread.append(threading.get_ident())

        async def answer():
            return "A"

        for i in range(20):
            await c.aget_or_set(f"question {i}", answer, embedding=unit(1.0, 0.3 + i * 1e-3))

    asyncio.run(main())
    assert ran_in and loop_thread[0] not in ran_in
    st = learned(c)
    assert st["probed"] + st["verified"] == len(ran_in)


def test_what_an_entry_learned_reaches_the_other_processes(redis_server):
    from llmedge import RedisStore

    def shared():
        return bounded(store=RedisStore(redis_server.url), namespace="eb")

    a, b = shared(), shared()
    a.set("seed question", "A", embedding=ORIGIN)
    a.flush()
    deadline = time.monotonic() + 10
    while b.get("seed question") is None and time.monotonic() < deadline:
        time.sleep(0.01)
    hit = a.get("seed question")
    a.feedback(hit, True)
    assert a.flush()
    while learned(b)["observations"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert learned(b)["observations"] == 1
    assert learned(b)["feedback"] == 0  # learned from a, not given here

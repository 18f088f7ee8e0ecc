"""Differential test: the exact tier, LRU bound and TTL of SemanticCache
against a small pure-Python model, over random operation sequences."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from llmedge import SemanticCache

PROMPTS = ["alpha", "Alpha ", "beta", "gamma delta", "GAMMA   delta", "epsilon", "zeta"]
PARTS = [None, "t1", {"model": "m", "temperature": 0}]

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("set"),
            st.sampled_from(PROMPTS),
            st.integers(0, 2),
            st.sampled_from([None, 1.0, 2.5]),
        ),
        st.tuples(st.just("get"), st.sampled_from(PROMPTS), st.integers(0, 2)),
        st.tuples(st.just("invalidate"), st.sampled_from(PROMPTS), st.integers(0, 2)),
        st.tuples(st.just("advance"), st.sampled_from([0.5, 1.0, 2.0])),
        st.tuples(st.just("drop_partition"), st.integers(0, 2)),
    ),
    max_size=60,
)


def norm(p: str) -> str:
    return " ".join(p.split()).lower()


def pkey(i: int) -> str:
    return str(i)


@settings(max_examples=150, deadline=None)
@given(ops=ops, max_entries=st.integers(1, 4))
def test_exact_tier_matches_model(ops, max_entries):
    now = [0.0]
    c = SemanticCache(dim=16, threshold=1.0, ttl=3.0, max_entries=max_entries, clock=lambda: now[0])
    model: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()
    hits = misses = 0

    def purge():
        for k in [k for k, (_, d) in model.items() if d <= now[0]]:
            del model[k]

    for step, op in enumerate(ops):
        kind = op[0]
        if kind == "set":
            _, prompt, part, ttl = op
            c.set(prompt, step, partition=PARTS[part], ttl=ttl)
            purge()
            key = (pkey(part), norm(prompt))
            model.pop(key, None)
            model[key] = (step, now[0] + (ttl if ttl is not None else 3.0))
            while len(model) > max_entries:
                model.popitem(last=False)
        elif kind == "get":
            _, prompt, part = op
            hit = c.get(prompt, partition=PARTS[part])
            purge()
            key = (pkey(part), norm(prompt))
            if key in model:
                model.move_to_end(key)
                assert hit is not None and hit.response == model[key][0]
                hits += 1
            else:
                assert hit is None
                misses += 1
        elif kind == "invalidate":
            _, prompt, part = op
            key = (pkey(part), norm(prompt))
            assert c.invalidate(prompt, partition=PARTS[part]) == (key in model)
            model.pop(key, None)
        elif kind == "advance":
            now[0] += op[1]
        else:
            part = op[1]
            n = c.invalidate_partition(PARTS[part] if PARTS[part] is not None else "")
            gone = [k for k in model if k[0] == pkey(part)]
            assert n == len(gone)
            for k in gone:
                del model[k]
        assert len(c) == len(model) <= max_entries
    s = c.stats()
    assert (s["hits"], s["misses"]) == (hits, misses)

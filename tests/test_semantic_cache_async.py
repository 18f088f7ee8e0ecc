"""SemanticCache with asyncio: aget/aset, micro-batching, single flight and
the cached decorator; and a stress test of threads and tasks together."""

from __future__ import annotations

import asyncio
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import llmedge
from llmedge import SemanticCache


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.t

    def advance(self, dt: float) -> None:
        with self.lock:
            self.t += dt


class CountingEmbedder:
    dim = 8
    identity = "counting/8"

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, texts: list[str]) -> np.ndarray:
        with self.lock:
            self.batches.append(len(texts))
        out = np.zeros((len(texts), 8), dtype=np.float32)
        for i, t in enumerate(texts):
            rng = np.random.default_rng(abs(hash(t.lower().strip())) % (2**32))
            out[i] = rng.normal(size=8)
        return out


@pytest.mark.asyncio
async def test_aget_aset_round_trip():
    c = SemanticCache(dim=4)
    await c.aset("hello", {"a": 1}, embedding=[1.0, 0, 0, 0], tags=["t"])
    hit = await c.aget("hello")
    assert hit.response == {"a": 1} and hit.kind == "exact"
    assert await c.aget("unrelated", embedding=[0, 1.0, 0, 0]) is None
    with pytest.raises(ValueError, match="non-empty"):
        await c.aget("  ")
    with pytest.raises(ValueError, match="dimension"):
        await c.aget("x", embedding=[1.0, 0])
    with pytest.raises(TypeError):
        await c.aset("x", object(), embedding=[1.0, 0, 0, 0])
    assert len(c) == 1


@pytest.mark.asyncio
async def test_concurrent_agets_are_batched_into_one_embedder_call():
    emb = CountingEmbedder()
    c = SemanticCache(embedder=emb)
    results = await asyncio.gather(*(c.aget(f"question {i}") for i in range(8)))
    assert results == [None] * 8
    assert emb.batches == [8]
    assert c.stats()["misses"] == 8


@pytest.mark.asyncio
async def test_bad_request_in_a_batch_fails_only_itself():
    c = SemanticCache(dim=4)
    await c.aset("a", 1, embedding=[1.0, 0, 0, 0])
    good = c.aget("a")
    bad = c.aget("b", embedding=[1.0, 0])
    res = await asyncio.gather(good, bad, return_exceptions=True)
    assert res[0].response == 1
    assert isinstance(res[1], ValueError)
    assert c.stats()["lookups"] == 1


@pytest.mark.asyncio
async def test_embedder_failure_fails_the_misses_only():
    calls = []

    def flaky(texts):
        calls.append(list(texts))
        raise RuntimeError("down")

    c = SemanticCache(embedder=flaky, dim=4)
    c.set("cached", 1, embedding=[1.0, 0, 0, 0])
    res = await asyncio.gather(c.aget("cached"), c.aget("new"), return_exceptions=True)
    assert res[0].response == 1
    assert isinstance(res[1], RuntimeError)
    assert calls == [["new"]]


@pytest.mark.asyncio
async def test_aget_or_set_single_flight_across_tasks():
    c = SemanticCache(dim=4, embedder=lambda t: np.tile([1.0, 0, 0, 0], (len(t), 1)))
    calls = 0
    gate = asyncio.Event()

    async def compute():
        nonlocal calls
        calls += 1
        await gate.wait()
        return "answer"

    tasks = [asyncio.create_task(c.aget_or_set("Same prompt", compute)) for _ in range(20)]
    for _ in range(5):
        await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*tasks) == ["answer"] * 20
    assert calls == 1
    assert (await c.aget("same PROMPT")).response == "answer"


@pytest.mark.asyncio
async def test_aget_or_set_exception_reaches_every_waiter_and_nothing_cached():
    c = SemanticCache(dim=4, embedder=lambda t: np.tile([1.0, 0, 0, 0], (len(t), 1)))
    gate = asyncio.Event()

    async def boom():
        await gate.wait()
        raise KeyError("llm failed")

    tasks = [asyncio.create_task(c.aget_or_set("p", boom)) for _ in range(5)]
    for _ in range(5):
        await asyncio.sleep(0)
    gate.set()
    res = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, KeyError) for r in res)
    assert len(c) == 0
    assert await c.aget_or_set("p", lambda: asyncio.sleep(0, "ok")) == "ok"


def test_get_or_set_single_flight_across_threads():
    c = SemanticCache(dim=4, embedder=lambda t: np.tile([1.0, 0, 0, 0], (len(t), 1)))
    calls = 0
    lock = threading.Lock()
    started = threading.Event()
    release = threading.Event()

    def compute():
        nonlocal calls
        with lock:
            calls += 1
        started.set()
        release.wait(30)
        return {"v": 1}

    with ThreadPoolExecutor(8) as pool:
        futs = [pool.submit(c.get_or_set, "Q", compute, partition="p") for _ in range(16)]
        started.wait(30)
        release.set()
        results = [f.result() for f in futs]
    assert results == [{"v": 1}] * 16
    assert calls == 1
    assert c.get_or_set("q", lambda: 1 / 0, partition="p") == {"v": 1}
    # different partitions are different flights
    assert c.get_or_set("Q", lambda: "other", partition="p2") == "other"


def test_cached_decorator_sync():
    c = SemanticCache(dim=4, embedder=lambda t: np.tile([1.0, 0, 0, 0], (len(t), 1)), threshold=1.0)
    calls = []

    @c.cached(partition=lambda prompt, model: {"model": model})
    def ask(prompt: str, model: str) -> str:
        calls.append((prompt, model))
        return f"{model}:{prompt}"

    assert ask("Hi", "a") == "a:Hi"
    assert ask("hi ", "a") == "a:Hi"
    assert ask("Hi", "b") == "b:Hi"
    assert calls == [("Hi", "a"), ("Hi", "b")]
    assert ask.__name__ == "ask"

    @c.cached()
    def nostr(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="prompt"):
        nostr(3)


@pytest.mark.asyncio
async def test_cached_decorator_async():
    c = SemanticCache(dim=4, embedder=lambda t: np.tile([1.0, 0, 0, 0], (len(t), 1)), threshold=1.0)
    calls = 0

    @c.cached(prompt=lambda q, **kw: q["text"], ttl=5.0, tags=["faq"])
    async def answer(q: dict) -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return q["text"].upper()

    outs = await asyncio.gather(*(answer({"text": "why"}) for _ in range(10)))
    assert outs == ["WHY"] * 10 and calls == 1
    assert c.invalidate_tag("faq") == 1
    assert await answer({"text": "why"}) == "WHY" and calls == 2


def test_aget_from_several_event_loops_in_threads():
    c = SemanticCache(dim=4)
    c.set("x", 1, embedding=[1.0, 0, 0, 0])
    out = []

    def run():
        async def main():
            return [h.response for h in await asyncio.gather(*(c.aget("x") for _ in range(10)))]

        out.append(asyncio.run(main()))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [[1] * 10] * 4
    assert c.stats()["exact_hits"] == 40


def test_stress_threads_and_tasks_keep_invariants():
    """Threads and asyncio tasks mix get/set/invalidate while a fake clock
    advances: bounds hold, no expired or cross-partition hit, stats add up."""
    clock = Clock(100.0)
    dim = 8
    c = SemanticCache(
        dim=dim,
        threshold=0.95,
        ttl=5.0,
        max_entries=150,
        max_memory_mb=0.25,
        clock=clock,
        guard=False,  # synthetic vectors for unrelated prompt strings
    )
    limit = c.stats()["max_memory_bytes"]
    partitions = [{"tenant": i} for i in range(4)]
    rng0 = np.random.default_rng(7)
    base = rng0.normal(size=(60, dim)).astype(np.float32)
    lookups = 0
    lookups_lock = threading.Lock()
    errors: list[BaseException] = []

    def check_hit(hit, p: int) -> None:
        # The response records its partition and its ttl; the hit's age is
        # measured by the cache between the entry's set and this lookup, so an
        # expired hit would show age >= ttl.
        assert hit.response["p"] == p, "cross-partition hit"
        assert hit.age < hit.response["ttl"], "expired hit"

    def op(rng: random.Random) -> None:
        nonlocal lookups
        p = rng.randrange(4)
        k = rng.randrange(60)
        vec = base[k] + np.float32(0.01) * rng.random()
        r = rng.random()
        if r < 0.45:
            ttl = rng.choice([None, 1.0, 3.0])
            c.set(
                f"prompt {k}",
                {"p": p, "k": k, "ttl": ttl or 5.0, "pad": "x" * rng.randrange(500)},
                partition=partitions[p],
                embedding=vec,
                ttl=ttl,
            )
        elif r < 0.9:
            hit = c.get(f"query {k} {rng.random()}", partition=partitions[p], embedding=vec)
            with lookups_lock:
                lookups += 1
            if hit is not None:
                check_hit(hit, p)
        elif r < 0.95:
            c.invalidate(f"prompt {k}", partition=partitions[p])
        else:
            clock.advance(0.25)
        s = c.stats()
        assert s["entries"] <= 150
        assert s["memory_bytes"] <= limit

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(400):
                op(rng)
        except BaseException as e:  # surfaced below
            errors.append(e)

    async def async_side() -> int:
        rng = random.Random(99)
        n = 0

        async def one(i: int) -> None:
            nonlocal n
            p = rng.randrange(4)
            k = rng.randrange(60)
            hit = await c.aget(f"async {i}", partition=partitions[p], embedding=base[k])
            n += 1
            if hit is not None:
                check_hit(hit, p)
            if i % 3 == 0:
                await c.aset(
                    f"prompt {k}",
                    {"p": p, "k": k, "ttl": 5.0},
                    partition=partitions[p],
                    embedding=base[k],
                )

        for _ in range(10):
            await asyncio.gather(*(one(i) for i in range(30)))
        return n

    c.reset_stats()
    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    async_lookups = asyncio.run(async_side())
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    s = c.stats()
    assert s["lookups"] == lookups + async_lookups
    assert s["hits"] + s["misses"] == s["lookups"]
    assert s["entries"] == len(c) <= 150
    assert s["memory_bytes"] <= limit
    assert s["hits"] > 0 and s["misses"] > 0
    clock.advance(10.0)
    assert all(
        c.get("any", partition=partitions[p], embedding=base[k]) is None
        for p in range(4)
        for k in range(60)
    )
    assert len(c) == 0


@pytest.mark.asyncio
async def test_a_text_the_embeddings_endpoint_refuses_fails_only_its_own_lookup():
    # one text over an embedding model's limit makes the endpoint refuse the
    # whole batch (4xx): the other lookups of the batch are asked again alone
    calls = []
    inner = llmedge.HashingEmbedder(4)

    def strict(texts):
        calls.append(len(texts))
        if any(len(t) > 20 for t in texts):
            raise llmedge.UpstreamClientError("input too long")
        return inner(texts)

    c = SemanticCache(embedder=strict, dim=4)
    res = await asyncio.gather(
        c.aget("short one"), c.aget("short two"), c.aget("x" * 30), return_exceptions=True
    )
    assert res[:2] == [None, None] and isinstance(res[2], llmedge.UpstreamClientError)
    assert calls == [3, 1, 1, 1]

    # an endpoint that is down (UpstreamError) is not asked again per lookup
    def down(texts):
        calls.append(len(texts))
        raise llmedge.UpstreamError("unreachable")

    calls.clear()
    c = SemanticCache(embedder=down, dim=4)
    res = await asyncio.gather(c.aget("a"), c.aget("b"), return_exceptions=True)
    assert all(isinstance(r, llmedge.UpstreamError) for r in res) and calls == [2]

"""The guard on hostile input: ``guard_check`` on pairs of 1 MB prompts, and
cache lookups from other threads while one thread looks up a 1 MB prompt.

Cases of ``guard_check`` (each a pair of 1,000,000-character prompts):

* one word of a million letters and the same word with one letter changed
  (the typo check compares them);
* English-like text and the same text with one word changed;
* ``"nine hundred "`` repeated (one run of number words);
* ``"1,"`` repeated against ``"2,"`` repeated (half a million numbers);
* random characters from the first 12,288 code points (1 MB of UTF-8).

Each is timed by the wall clock and by the process's CPU time (the machine
is shared: the CPU time is what the guard costs, without the waits for a
core).

The expected reason of each case is checked beside the time ("agree").

Lookups beside a long one: a cache with the guard on holds 1,000 short
prompts and one 1 MB prompt; two threads look up short prompts (each finds a
semantic candidate the guard checks) while a third looks up another 1 MB
prompt near the long entry, again and again. The short lookups' median and
99th percentile are compared with the same lookups with no long lookup
running (``extra_info["latency"]``: p50/p99 beside, and "ping" alone).

Run: ``python -m llmedge bench guard``.
"""

from __future__ import annotations

import random
import statistics
import threading
import time

import pytest
from conftest import record

import llmedge
from llmedge import SemanticCache

MB = 1_000_000
WORDS = (
    "the quick brown fox jumps over a lazy dog while five engineers discuss whether "
    "Paris is safe in June"
).split()


def _english(seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(MB // 5))[:MB]


def _cases() -> dict[str, tuple[str, str, str | None]]:
    word = "a" * MB
    text = _english(1)
    words = text.split(" ")
    mid = len(words) // 2
    changed = " ".join(
        words[:mid] + ["zebra" if words[mid] != "zebra" else "yak"] + words[mid + 1 :]
    )
    rng = random.Random(2)
    # characters of one to three bytes: cut to 1 MB of UTF-8
    noise = "".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(MB // 2))
    noise = noise.encode()[:MB].decode(errors="ignore")
    nines = "nine hundred " * (MB // 13)
    return {
        "one 1 MB word, one letter changed": (
            word,
            word[: MB // 2] + "b" + word[MB // 2 + 1 :],
            None,
        ),
        "1 MB of text, one word changed": (text, changed, "substitution"),
        "'nine hundred ' x 76,923": (nines, nines + "one", None),
        "'1,' x 500,000 vs '2,' x 500,000": ("1," * (MB // 2), "2," * (MB // 2), "numbers"),
        "1 MB of random characters, twice": (noise, noise, None),
    }


CASES = _cases()


@pytest.mark.parametrize("timer", ["wall", "cpu"])
@pytest.mark.parametrize("case", list(CASES))
def test_guard_check_1mb(benchmark, case, timer, quick):
    a, b, expected = CASES[case]
    benchmark.group = f"guard: guard_check on two 1 MB prompts, {case}, {timer} time"
    if timer == "cpu":
        # pytest-benchmark 5 reads the fixture's timer when a measurement starts
        benchmark._timer = time.process_time
    result = benchmark.pedantic(
        llmedge.guard_check, args=(a, b), rounds=3 if quick else 10, iterations=1
    )
    record(benchmark, "llmedge", result == expected)


def _unit(rng: random.Random, dim: int) -> list[float]:
    v = [rng.gauss(0, 1) for _ in range(dim)]
    n = sum(x * x for x in v) ** 0.5
    return [x / n for x in v]


def _near(v: list[float], rng: random.Random) -> list[float]:
    w = [x + rng.gauss(0, 0.01) for x in v]
    n = sum(x * x for x in w) ** 0.5
    return [x / n for x in w]


def _percentiles(times: list[float]) -> tuple[float, float, float]:
    times = sorted(times)
    return (
        statistics.median(times),
        times[min(len(times) - 1, int(0.99 * len(times)))],
        times[-1],
    )


def test_lookups_beside_a_1mb_lookup(benchmark, quick):
    dim = 32
    rng = random.Random(3)
    cache = SemanticCache(dim=dim, threshold=0.9, guard=True, max_entries=10_000)
    short = [
        (f"how do I configure service number {i} for the team", _unit(rng, dim))
        for i in range(1000)
    ]
    for prompt, v in short:
        cache.set(prompt, "answer", embedding=v)
    long_v = _unit(rng, dim)
    cache.set(_english(4), "long answer", embedding=long_v)
    long_query = _english(5)
    long_rounds = 5 if quick else 20

    def lookups(out: list[float], seed: int, more) -> None:
        r = random.Random(seed)
        while more(len(out)):
            prompt, v = short[r.randrange(len(short))]
            q = prompt.replace("configure", "set up")  # semantic: the guard runs
            t = time.perf_counter()
            cache.get(q, embedding=_near(v, r))
            out.append(time.perf_counter() - t)

    def run(per_thread: int | None) -> tuple[list[float], int, float]:
        """Short lookups from two threads: while a third looks up the long
        prompt `long_rounds` times (per_thread None), or `per_thread` each."""
        long_done = [0]

        def more(n: int) -> bool:
            return long_done[0] < long_rounds if per_thread is None else n < per_thread

        def long_lookups() -> None:
            while long_done[0] < long_rounds:
                cache.get(long_query, embedding=long_v)
                long_done[0] += 1

        results: list[list[float]] = [[], []]
        threads = [threading.Thread(target=lookups, args=(results[i], i, more)) for i in range(2)]
        hog = threading.Thread(target=long_lookups)
        start = time.perf_counter()
        if per_thread is None:
            hog.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if per_thread is None:
            hog.join()
        return results[0] + results[1], long_done[0], time.perf_counter() - start

    benchmark.group = "guard: short lookups while another thread looks up 1 MB prompts"
    beside, long_count, beside_s = benchmark.pedantic(lambda: run(None), rounds=1, iterations=1)
    alone, _, alone_s = run(len(beside) // 2)
    p50, p99, worst = _percentiles(beside)
    a50, a99, aworst = _percentiles(alone)
    benchmark.extra_info["latency"] = {"p50": p50, "p99": p99, "ping_p50": a50, "ping_p99": a99}
    benchmark.extra_info["max"] = {"beside": worst, "alone": aworst}
    benchmark.extra_info["long_lookups"] = long_count
    benchmark.extra_info["short_lookups"] = len(beside)
    # short lookups per second: a lock held by the long lookups shows here
    benchmark.extra_info["rate"] = {"beside": len(beside) / beside_s, "alone": len(alone) / alone_s}
    benchmark.extra_info["over_5ms"] = {
        "beside": sum(t > 0.005 for t in beside) / len(beside),
        "alone": sum(t > 0.005 for t in alone) / len(alone),
    }
    record(benchmark, "llmedge", long_count == long_rounds and len(beside) > 0)

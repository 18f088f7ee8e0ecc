"""Simulation of the error-bounded cache mode against static thresholds.

Run: ``python benches/eval_error_bound.py [data set ...]`` (reads ``$LLMEDGE_DATA``, default
``../shared/data``, and ``benches/data`` beside this script; exits with a
message when the data is absent;
``$LLMEDGE_EVAL_SEED`` shuffles the stream and seeds the cache, default 20).
Prints a markdown table per data set.

A stream of prompts from labelled pairs with real all-MiniLM-L6-v2 vectors:
every pair's first prompt is cached with its answer, then the second prompts
are asked in a shuffled order through ``get_or_set`` (a miss computes the
answer and caches it, as an application would). Answers are ids: the second
prompt of a pair labelled the same has its first prompt's answer, any other
prompt an answer of its own, so a hit is wrong exactly when the entry it
came from has another answer. ``answers_match`` compares the ids.

Data sets: ``mqp`` (mqp.csv: 1,524 paraphrases and 1,524 hard negatives that
share the seed question's keywords), ``adversarial`` (adversarial_pairs.json:
1,200 questions with one number changed or a negation flipped, every one a
different answer), ``mixed`` (both streams in one cache), and ``open-dev`` and
``open-heldout`` (benches/data/open_pairs_*.csv: 64 seed prompts each, every
one with two paraphrases and two hard negatives; see benches/data/README.md).

Reported per configuration: the answered fraction (prompts served from the
cache), the realised error rate among them with the upper end of its 95%
Wilson interval, and the LLM calls: one per miss, plus, in the error-bounded
mode, one per hit drawn for verification (counted apart).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

from llmedge import SemanticCache

STATIC = [round(0.80 + 0.01 * k, 2) for k in range(20)]  # 0.80 .. 0.99
BOUNDS = (0.01, 0.02, 0.05, 0.10, 0.20)
FLOOR = 0.75  # the error-bounded mode's threshold: no candidate below it
OPEN = Path(__file__).parent / "data"  # the open-domain pairs
SEED = int(os.environ.get("LLMEDGE_EVAL_SEED", "20"))  # stream order and draws


def wilson_upper(errors: int, n: int, z: float = 1.959964) -> float:
    if n == 0:
        return 0.0
    p = errors / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return min(1.0, centre + half)


class Stream:
    """Prompts to cache first and prompts to ask, with vectors and answers."""

    def __init__(self) -> None:
        self.cached: list[tuple[str, np.ndarray]] = []
        self.asked: list[tuple[str, np.ndarray]] = []
        self.answer: dict[str, int] = {}

    def answer_of(self, text: str) -> int:
        return self.answer.setdefault(text, len(self.answer))

    def pair(self, first: str, v1: np.ndarray, second: str, v2: np.ndarray, same: bool) -> None:
        a = self.answer_of(first)
        if second not in self.answer:
            self.answer[second] = a if same else len(self.answer)
        self.cached.append((first, v1))
        self.asked.append((second, v2))


def load(data: Path) -> dict[str, Stream]:
    questions = json.loads((data / "mqp_questions.json").read_text())
    vectors = np.load(data / "mqp_minilm.npy").astype(np.float32)
    row = {q: i for i, q in enumerate(questions)}
    mqp_rows = []
    with open(data / "mqp.csv", newline="") as f:
        for r in csv.reader(f):
            mqp_rows.append((r[1], r[2], r[3] == "1"))
    adv = json.loads((data / "adversarial_pairs.json").read_text())
    adv_vec = np.load(data / "adversarial_pairs_minilm.npy").astype(np.float32)

    def add_mqp(s: Stream) -> None:
        for a, b, same in mqp_rows:
            s.pair(a, vectors[row[a]], b, vectors[row[b]], same)

    def add_adv(s: Stream) -> None:
        for i, item in enumerate(adv):
            s.pair(item["original"], adv_vec[i, 0], item["perturbed"], adv_vec[i, 1], False)

    streams = {"mqp": Stream(), "adversarial": Stream(), "mixed": Stream()}
    add_mqp(streams["mqp"])
    add_adv(streams["adversarial"])
    add_mqp(streams["mixed"])
    add_adv(streams["mixed"])
    open_texts = json.loads((OPEN / "open_pairs_texts.json").read_text())
    open_vec = np.load(OPEN / "open_pairs_minilm.npy").astype(np.float32)
    open_row = {t: i for i, t in enumerate(open_texts)}
    for half in ("dev", "heldout"):
        s = streams[f"open-{half}"] = Stream()
        with open(OPEN / f"open_pairs_{half}.csv", newline="") as f:
            for r in csv.DictReader(f):
                a, b = r["prompt_a"], r["prompt_b"]
                s.pair(a, open_vec[open_row[a]], b, open_vec[open_row[b]], r["same_answer"] == "1")
    for s in streams.values():
        random.Random(SEED).shuffle(s.asked)
    return streams


def run(stream: Stream, **config) -> dict:
    cache = SemanticCache(
        dim=384,
        max_entries=100_000,
        max_memory_mb=1024,
        ttl=None,
        answers_match=lambda a, b: a == b,
        seed=SEED,
        **config,
    )
    for text, v in stream.cached:
        cache.set(text, stream.answer[text], embedding=v)
    served = wrong = computed = 0
    for text, v in stream.asked:
        made = []
        truth = stream.answer[text]
        got = cache.get_or_set(
            text, lambda made=made, truth=truth: made.append(1) or truth, embedding=v
        )
        if made:
            computed += 1
        else:
            served += 1
            wrong += got != truth
    n = len(stream.asked)
    st = cache.stats()
    eb = st["error_bound"] or {}
    return {
        "served": served,
        "answered": served / n,
        "error": wrong / served if served else 0.0,
        "upper": wilson_upper(wrong, served),
        "wrong": wrong,
        "llm_calls": computed,
        "verified": eb.get("verified", 0),
        "probed": (eb.get("probed", 0), eb.get("probed_wrong", 0)),
        "threshold": (eb.get("thresholds") or {}).get("p50"),
        "n": n,
    }


def row(name: str, r: dict) -> str:
    t = f"{r['threshold']:.3f}" if r.get("threshold") is not None else ""
    return (
        f"| {name} | {100 * r['answered']:.1f}% | {r['served']} | {r['wrong']} | "
        f"{100 * r['error']:.2f}% | {100 * r['upper']:.2f}% | {r['llm_calls']} | "
        f"{r['verified']} | {r['probed'][0]} ({r['probed'][1]}) | {t} |"
    )


def main() -> int:
    data = Path(os.environ.get("LLMEDGE_DATA", "../shared/data"))
    if not (data / "mqp.csv").exists():
        print(f"evaluation data not found in {data} (set LLMEDGE_DATA): nothing measured")
        return 0
    started = time.perf_counter()
    only = set(sys.argv[1:])  # data set names to run, default all
    for name, stream in load(data).items():
        if only and name not in only:
            continue
        distinct = len({t for t, _ in stream.cached})
        print(f"\n### {name}: {distinct} prompts cached, {len(stream.asked)} asked\n")
        print(
            "| configuration | answered | served | wrong | error | error, 95% upper | "
            "LLM calls | of which verifications | refused candidates compared (wrong) "
            "| learned threshold (p50) |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        static = {}
        for guard in (False, True):
            for t in STATIC:
                r = run(stream, threshold=t, guard=guard)
                static[(t, guard)] = r
                if round(t * 100) % 5 == 0 or os.environ.get("LLMEDGE_EVAL_ALL"):
                    print(row(f"static {t:.2f}{' + guard' if guard else ''}", r))
        for eps in BOUNDS:
            r = run(stream, threshold=FLOOR, guard=True, max_error_rate=eps)
            print(row(f"error-bounded {100 * eps:g}% (floor {FLOOR}, guard)", r))
            # the best static threshold picked after the fact: the most
            # answered among those whose realised error is within the
            # error-bounded mode's (0.80..0.99 by 0.01, with and without guard)
            fit = [
                (s["answered"], t, g)
                for (t, g), s in static.items()
                if s["error"] <= max(r["error"], 0.0)
            ]
            if fit:
                answered, t, g = max(fit)
                print(
                    f"| &nbsp;&nbsp;best static at most that error: {t:.2f}"
                    f"{' + guard' if g else ''} | {100 * answered:.1f}% | | | | | | | | |"
                )
            else:
                print("| &nbsp;&nbsp;best static at most that error: none | | | | | | | | | |")
            within = [(s["answered"], t, g) for (t, g), s in static.items() if s["error"] <= eps]
            if within:
                answered, t, g = max(within)
                print(
                    f"| &nbsp;&nbsp;best static within the bound: {t:.2f}"
                    f"{' + guard' if g else ''} | {100 * answered:.1f}% | | | | | | | | |"
                )
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

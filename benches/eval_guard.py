"""Evaluation of the cache's guard and of HashingEmbedder on real data.

Run: ``python -m pytest benches/eval_guard.py -s`` (needs the evaluation data,
see shared/data/SOURCES.md; skips without it). Prints the tables, writes them
as markdown to ``bench-results/eval_guard.md`` (or ``$LLMEDGE_EVAL_OUT``) and
asserts the goals:

1. with real all-MiniLM-L6-v2 embeddings, the guard rejects at least 95% of
   the 1,200 adversarial pairs (one number changed, or a negation added or
   removed; every pair scores >= 0.85, so a plain threshold cache answers all
   of them wrongly), per kind;
2. on the real paraphrase pairs of mqp.csv it costs at most 2 points of recall
   at threshold 0.85 against the plain threshold.

"Precision" and "recall" treat a pair as a cache hit when its cosine reaches
the threshold (and, with the guard, the guard accepts it); label 1 pairs are
paraphrases that should hit, label 0 pairs are hard negatives that should not.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from llmedge import HashingEmbedder, guard_check

THRESHOLDS = (0.80, 0.85, 0.90)
HASHING_THRESHOLDS = (0.50, 0.60, 0.70, 0.80, 0.85)
REPORT: dict[str, list[str]] = {}


def out_path() -> Path:
    env = os.environ.get("LLMEDGE_EVAL_OUT")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "bench-results" / "eval_guard.md"


def emit(section: str, lines: list[str]) -> None:
    REPORT[section] = lines
    print("\n" + "\n".join(lines))
    path = out_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join("\n".join(v) for v in REPORT.values()) + "\n")


# ---- data -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def adversarial(data_dir):
    items = json.loads((data_dir / "adversarial_pairs.json").read_text())
    emb = np.load(data_dir / "adversarial_pairs_minilm.npy").astype(np.float32)
    assert emb.shape == (len(items), 2, 384)
    return items, emb


@pytest.fixture(scope="module")
def mqp(data_dir):
    with open(data_dir / "mqp.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r]
    questions = json.loads((data_dir / "mqp_questions.json").read_text())
    emb = np.load(data_dir / "mqp_minilm.npy").astype(np.float32)
    assert emb.shape == (len(questions), 384)
    index = {q: i for i, q in enumerate(questions)}
    a = [r[1] for r in rows]
    b = [r[2] for r in rows]
    labels = np.array([int(r[3]) for r in rows])
    ia = np.array([index[q] for q in a])
    ib = np.array([index[q] for q in b])
    cos = np.einsum("ij,ij->i", emb[ia], emb[ib])
    return a, b, labels, cos


def precision_recall(hit: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    tp = int((hit & (labels == 1)).sum())
    predicted = int(hit.sum())
    return (tp / predicted if predicted else 1.0), tp / int((labels == 1).sum())


# ---- MiniLM: adversarial pairs ------------------------------------------------------


def test_guard_rejects_adversarial_pairs(adversarial):
    items, emb = adversarial
    cos = np.einsum("ij,ij->i", emb[:, 0], emb[:, 1])
    reasons = [guard_check(x["original"], x["perturbed"]) for x in items]
    lines = [
        "#### Adversarial pairs (all-MiniLM-L6-v2, threshold 0.85)",
        "",
        "| kind | pairs | plain threshold: wrong hits | with guard: wrong hits | rejected |",
        "|---|---:|---:|---:|---:|",
    ]
    rates = {}
    for kind in ("number", "negation", "all"):
        sel = [i for i, x in enumerate(items) if kind == "all" or x["kind"] == kind]
        plain = sum(1 for i in sel if cos[i] >= 0.85)
        guarded = sum(1 for i in sel if cos[i] >= 0.85 and reasons[i] is None)
        rates[kind] = 1 - guarded / plain
        lines.append(
            f"| {kind} | {len(sel)} | {plain} ({plain / len(sel):.1%}) | "
            f"{guarded} ({guarded / len(sel):.1%}) | {rates[kind]:.1%} |"
        )
    emit("adversarial", lines)
    assert (cos >= 0.85).all(), "the data says every pair scores at least 0.85"
    for kind, rate in rates.items():
        assert rate >= 0.95, f"guard rejects only {rate:.1%} of {kind} pairs"


# ---- MiniLM: real paraphrases ---------------------------------------------------------


def test_plain_threshold_reproduces_the_reference(mqp):
    _, _, labels, cos = mqp
    p, r = precision_recall(cos >= 0.85, labels)
    assert (round(p, 3), round(r, 3)) == (0.961, 0.387)
    p, r = precision_recall(cos >= 0.80, labels)
    assert (round(p, 3), round(r, 3)) == (0.918, 0.567)


def test_guard_costs_little_recall_on_paraphrases(mqp):
    a, b, labels, cos = mqp
    accepted = np.array([guard_check(x, y) is None for x, y in zip(a, b, strict=True)])
    lines = [
        "#### Real paraphrases (mqp.csv, all-MiniLM-L6-v2)",
        "",
        "| threshold | precision | recall | precision + guard | recall + guard | recall cost |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    cost = {}
    for t in THRESHOLDS:
        p0, r0 = precision_recall(cos >= t, labels)
        p1, r1 = precision_recall((cos >= t) & accepted, labels)
        cost[t] = (r0 - r1) * 100
        lines.append(f"| {t:.2f} | {p0:.3f} | {r0:.3f} | {p1:.3f} | {r1:.3f} | {cost[t]:.1f} pts |")
    emit("mqp", lines)
    assert cost[0.85] <= 2.0


# ---- HashingEmbedder on the same data ------------------------------------------------


def test_hashing_embedder_on_paraphrases(mqp, adversarial):
    a, b, labels, _ = mqp
    e = HashingEmbedder(384)
    va = np.asarray(e(a), dtype=np.float32)
    vb = np.asarray(e(b), dtype=np.float32)
    cos = np.einsum("ij,ij->i", va, vb)
    accepted = np.array([guard_check(x, y) is None for x, y in zip(a, b, strict=True)])
    items, _ = adversarial
    orig = np.asarray(e([x["original"] for x in items]), dtype=np.float32)
    pert = np.asarray(e([x["perturbed"] for x in items]), dtype=np.float32)
    adv_cos = np.einsum("ij,ij->i", orig, pert)
    adv_ok = np.array([guard_check(x["original"], x["perturbed"]) is None for x in items])
    lines = [
        "#### HashingEmbedder(384) on the same pairs",
        "",
        "| threshold | precision | recall | precision + guard | recall + guard "
        "| adversarial wrong hits, plain | + guard |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in HASHING_THRESHOLDS:
        p0, r0 = precision_recall(cos >= t, labels)
        p1, r1 = precision_recall((cos >= t) & accepted, labels)
        w0 = int((adv_cos >= t).sum())
        w1 = int(((adv_cos >= t) & adv_ok).sum())
        lines.append(
            f"| {t:.2f} | {p0:.3f} | {r0:.3f} | {p1:.3f} | {r1:.3f} | {w0} / 1200 | {w1} / 1200 |"
        )
    emit("hashing", lines)
    # near-duplicates: every adversarial pair is almost the same text
    assert (adv_cos >= 0.8).mean() > 0.9


# ---- cost of a check -------------------------------------------------------------------


def test_guard_cost_per_check(mqp, adversarial):
    a, b, _, _ = mqp
    items, _ = adversarial
    pairs = list(zip(a, b, strict=True)) + [(x["original"], x["perturbed"]) for x in items]
    best = float("inf")
    for _ in range(5):
        # CPU time of this process: the shared machine's load inflates wall time
        start = time.process_time()
        for x, y in pairs:
            guard_check(x, y)
        best = min(best, time.process_time() - start)
    per = best / len(pairs) * 1e6
    mean_chars = sum(len(x) + len(y) for x, y in pairs) / (2 * len(pairs))
    lines = [
        "#### Guard cost",
        "",
        f"{per:.1f} us of CPU per `guard_check` call from Python (best of 5 runs over "
        f"{len(pairs)} real pairs, {mean_chars:.0f} characters per prompt on average).",
    ]
    emit("cost", lines)

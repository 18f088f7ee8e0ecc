"""HashingEmbedder throughput: one text at a time and batches.

Implementations: llmedge.HashingEmbedder, the pure-Python baseline of the same
algorithm (benches/baselines/embed.py), and scikit-learn's HashingVectorizer
(word 1-2 grams plus char_wb 3-5 grams, the closest configuration) when it is
installed. "correct" means the vectors agree with llmedge's to 1e-5 (the
baseline); sklearn computes a different (sparse, unsigned-bucket) embedding
and is timed for reference only (correct is None).

Texts: the questions of mqp.csv when the evaluation data is present, else
generated prompts.
"""

from __future__ import annotations

import csv
import math
import random

import pytest
from baselines.embed import PyHashingEmbedder
from conftest import data_path, record

import llmedge

DIM = 384


def _texts(n: int) -> list[str]:
    path = data_path() / "mqp.csv"
    out: list[str] = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.reader(f):
                if row:
                    out.extend((row[1], row[2]))
    if not out:
        rng = random.Random(7)
        vocab = (
            "how do i reset my password is it safe to take ibuprofen with coffee "
            "what are the side effects of 20 mg daily for three weeks can you help"
        ).split()
        out = [" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 30))) for _ in range(n)]
    return (out * (n // len(out) + 1))[:n]


def _sklearn():
    try:
        from sklearn.feature_extraction.text import HashingVectorizer
    except ImportError:
        return None
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion(
        [
            ("words", HashingVectorizer(n_features=DIM, ngram_range=(1, 2))),
            ("chars", HashingVectorizer(n_features=DIM, analyzer="char_wb", ngram_range=(3, 5))),
        ]
    )


IMPLS = ["llmedge", "python", "sklearn"]


def _close(a, b) -> bool:
    if len(a) != len(b) or any(len(u) != len(v) for u, v in zip(a, b, strict=True)):
        return False
    return all(
        math.isclose(x, y, abs_tol=1e-5)
        for u, v in zip(a, b, strict=True)
        for x, y in zip(u, v, strict=True)
    )


def _make(impl: str):
    if impl == "llmedge":
        e = llmedge.HashingEmbedder(DIM)
        return e, e
    if impl == "python":
        e = PyHashingEmbedder(DIM)
        return e, e
    vec = _sklearn()
    if vec is None:
        pytest.skip("scikit-learn is not installed (pip install scikit-learn)")
    return (lambda text: vec.transform([text])), vec.transform


@pytest.mark.parametrize("impl", IMPLS)
def test_embed_one(benchmark, impl):
    text = _texts(1)[0]
    single, _ = _make(impl)
    embed = single.embed if impl != "sklearn" else single
    benchmark.group = "embed: one text"
    result = benchmark(embed, text)
    correct = None
    if impl != "sklearn":
        correct = _close([list(result)], [llmedge.HashingEmbedder(DIM).embed(text)])
    record(benchmark, impl, correct)


@pytest.mark.parametrize("impl", IMPLS)
def test_embed_batch(benchmark, impl, quick):
    n = 200 if quick else 2000
    texts = _texts(n)
    _, batch = _make(impl)
    benchmark.group = f"embed: batch of {n}"
    if impl == "python":
        result = benchmark.pedantic(batch, args=(texts,), rounds=3, iterations=1)
    else:
        result = benchmark(batch, texts)
    correct = None
    if impl != "sklearn":
        reference = llmedge.HashingEmbedder(DIM)(texts)
        correct = _close([list(r) for r in result[:50]], reference[:50]) and len(result) == n
    record(benchmark, impl, correct)

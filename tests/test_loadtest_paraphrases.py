"""loadtest/paraphrases.py end to end on a small table of vectors: the gateway's
openai: embedder finds the paraphrase the vectors say is one, and not the
hard negative."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location(
        "paraphrases", ROOT / "loadtest" / "paraphrases.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_real_embedder_finds_the_paraphrase_and_not_the_negative(tmp_path, capsys):
    pairs = [
        (
            "How should I store fresh basil at home?",
            "What is the best way to keep fresh basil?",
            "1",
        ),
        (
            "Which paint works best on old wooden fences?",
            "Which paint suits a new metal gate?",
            "0",
        ),
    ]
    with (tmp_path / "mqp.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([(i, a, b, label) for i, (a, b, label) in enumerate(pairs)])
    texts = [t for a, b, _ in pairs for t in (a, b)]
    rng = np.random.default_rng(0)
    base = rng.standard_normal((4, 16))
    base[1] = base[0] + 0.1 * rng.standard_normal(16)  # the paraphrase: cosine ~0.99
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    (tmp_path / "mqp_questions.json").write_text(json.dumps(texts), encoding="utf-8")
    np.save(tmp_path / "mqp_minilm.npy", base.astype(np.float16))
    out = tmp_path / "result.json"
    assert _load().main(["--pairs", "5", "--data", str(tmp_path), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    real = result["openai:all-MiniLM-L6-v2"]
    assert real["paraphrases (label 1)"] == {
        "pairs": 1,
        "semantic_hits": 1,
        "with_a_answer": 1,
        "other_answer": 0,
        "errors": 0,
    }
    assert real["hard negatives (label 0)"]["semantic_hits"] == 0
    assert result["hashing"]["hard negatives (label 0)"]["errors"] == 0
    assert "semantic hits" in capsys.readouterr().out


def test_missing_data_is_named(tmp_path, capsys):
    assert _load().main(["--data", str(tmp_path)]) == 2
    assert "mqp_minilm.npy" in capsys.readouterr().err

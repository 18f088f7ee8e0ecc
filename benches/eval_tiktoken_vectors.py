"""Evaluation: llmedge's ids against the tiktoken test vectors in shared data.

The vectors (``tiktoken_vectors/``, from Systemcluster/kitoken, BSD-2-Clause)
are read by the rules in shared/data/SOURCES.md: split input files on ``\\n``
only, skip empty lines, in each line replace the two characters ``\\n`` with a
newline and ``\\s`` with a space and delete the two characters ``\\x``; encode
with special tokens allowed. ``utf8_input.txt`` is one whole-file text.

Run: ``python -m pytest benches/eval_tiktoken_vectors.py`` (skips without the
data; set LLMEDGE_DATA) or ``python benches/eval_tiktoken_vectors.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import llmedge

ENCODINGS = ["cl100k_base", "o200k_base"]
KINDS = ["small", "mixed", "utf8"]


def unescape(line: str) -> str:
    return line.replace("\\n", "\n").replace("\\s", " ").replace("\\x", "")


def read_case(vectors: Path, kind: str, encoding: str) -> list[tuple[str, list[int]]]:
    raw = (vectors / f"{kind}_input.txt").read_text(encoding="utf-8")
    expected_lines = [
        line
        for line in (vectors / f"{kind}_tokens_{encoding}.txt")
        .read_text(encoding="utf-8")
        .split("\n")
        if line.strip()
    ]
    ids = [[int(x) for x in line.split(",") if x.strip()] for line in expected_lines]
    if kind == "utf8":
        return [(raw, [i for line in ids for i in line])]
    texts = [unescape(line) for line in raw.split("\n") if line]
    assert len(texts) == len(ids), f"{kind}/{encoding}: {len(texts)} lines vs {len(ids)} id rows"
    return list(zip(texts, ids, strict=True))


def has_special(tok: llmedge.Tokenizer, text: str) -> bool:
    return any(s in text for s in tok.special_tokens)


def evaluate(vectors: Path) -> list[tuple[str, str, int, int]]:
    """(encoding, kind, cases, mismatches) for every vector file."""
    rows = []
    for encoding in ENCODINGS:
        tok = llmedge.Tokenizer(encoding)
        for kind in KINDS:
            cases = read_case(vectors, kind, encoding)
            bad = 0
            for text, expected in cases:
                ids = tok.encode(text, allowed_special="all")
                count_ok = has_special(tok, text) or tok.count(text) == len(expected)
                if ids != expected or not count_ok or tok.decode(ids) != text:
                    bad += 1
            rows.append((encoding, kind, len(cases), bad))
    return rows


@pytest.fixture(scope="module")
def vectors(data_dir) -> Path:
    path = data_dir / "tiktoken_vectors"
    if not path.is_dir():
        pytest.skip(f"{path} not found (see shared/data/SOURCES.md)")
    return path


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("kind", KINDS)
def test_ids_match_vectors(vectors, encoding, kind):
    tok = llmedge.Tokenizer(encoding)
    for text, expected in read_case(vectors, kind, encoding):
        assert tok.encode(text, allowed_special="all") == expected, text[:80]
        assert tok.decode(expected) == text
        if not has_special(tok, text):  # count() reads special tokens as text
            assert tok.count(text) == len(expected)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import data_path

    path = data_path() / "tiktoken_vectors"
    if not path.is_dir():
        print(f"skipped: {path} not found; set LLMEDGE_DATA")
        sys.exit(0)
    failed = 0
    for encoding, kind, n, bad in evaluate(path):
        print(f"{encoding:<12} {kind:<6} {n:>4} cases  {n - bad:>4} identical  {bad} different")
        failed += bad
    sys.exit(1 if failed else 0)

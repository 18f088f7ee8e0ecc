"""The README's "Guard and embedders" examples hold as written."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from docs_text import docs_text

import llmedge

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    if not README.is_file():
        pytest.skip("README.md not found beside the tests")
    text = docs_text()
    start = text.index("## Guard and embedders")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start : end if end != -1 else None], re.S)


def test_guard_examples_return_the_commented_reason():
    lines = [ln for ln in _blocks()[0].splitlines() if ln.startswith("llmedge.guard_check(")]
    assert len(lines) >= 8
    for line in lines:
        call, expected = line.split("#", 1)
        got = eval(call, {"llmedge": llmedge})
        assert got == ast.literal_eval(expected.strip()), line


def test_hashing_embedder_example_runs():
    namespace: dict = {}
    exec(_blocks()[1], namespace)
    emb = namespace["emb"]
    assert (emb.dim, emb.identity) == (
        384,
        "llmedge.HashingEmbedder/v3/dim=384/words=1-2/chars=3-5",
    )
    assert len(namespace["vectors"]) == 2 and len(namespace["one"]) == 384

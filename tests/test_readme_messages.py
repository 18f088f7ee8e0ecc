"""The README's "Models, messages and cost" examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from docs_text import docs_text

README = Path(__file__).resolve().parents[1] / "README.md"


def _section() -> str:
    text = docs_text()
    start = text.index("## Models, messages and cost")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_readme_examples_run(capsys):
    if not README.is_file():
        pytest.skip("README.md not found beside the tests")
    blocks = re.findall(r"```python\n(.*?)```", _section(), re.S)
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "17 10" in out
    assert "gpt-4o-mini" in out

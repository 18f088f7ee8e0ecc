"""The README's mock LLM example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from docs_text import docs_text

README = Path(__file__).resolve().parents[1] / "README.md"


def test_mock_example_runs(capsys):
    pytest.importorskip("uvicorn")
    if not README.is_file():
        pytest.skip("README.md not found beside the tests")
    text = docs_text()
    start = text.index("## The mock LLM")
    section = text[start : text.index("\n## ", start + 1)]
    block = re.findall(r"```python\n(.*?)```", section, re.S)[0]  # the mock's example
    exec(block, {})
    assert capsys.readouterr().out.strip() == "{'200': 3, '503': 2}"

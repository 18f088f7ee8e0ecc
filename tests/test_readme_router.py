"""The README's Retry and Router examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from docs_text import docs_text

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(title: str) -> list[str]:
    text = docs_text()
    start = text.index(title)
    section = text[start : text.index("\n### ", start + len(title))]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_retry_example_runs(capsys):
    (block,) = _blocks("### Retry\n")
    exec(block, {})
    assert capsys.readouterr().out.strip() == "[0.1, 0.2, 0.4]"


def test_router_example_runs(capsys):
    pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    (block,) = _blocks("### Router\n")
    exec(block, {})
    assert capsys.readouterr().out.strip() == "fast ['ok']"

"""The README and the docs pages as one text, for the tests that run their
examples: a section is found by its heading wherever it lives, and ends at
the next heading of its level (the text ends with a closing one)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def docs_text() -> str:
    pages = [README, *sorted(DOCS.glob("*.md"))]
    return "\n".join(p.read_text(encoding="utf-8") for p in pages) + "\n## (end)\n### (end)\n"

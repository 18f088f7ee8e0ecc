"""Every Python block of the README and of the docs pages runs as written.

A page's blocks share one namespace, in order (a later block may use what an
earlier one defined), so each block is a test that first replays the blocks
before it. The Redis examples run against a real server started for the
test (their `redis://localhost:6379/0` is replaced by its URL). Blocks whose
optional dependency is not installed are skipped, naming it."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from docs_text import DOCS, README

FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")
LOCAL_REDIS = "redis://localhost:6379/0"
# an import in a block -> the distribution it needs
OPTIONAL = {"SentenceTransformerEmbedder": "sentence_transformers"}


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a Markdown text (fences of 3+ backticks or
    tildes; a longer fence may hold a shorter one)."""
    blocks: list[str] = []
    fence, lang, body = "", "", []
    for line in text.split("\n"):
        m = FENCE.match(line.strip())
        if not fence:
            if m:
                fence, lang, body = m.group(1), m.group(2), []
        elif m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not m.group(2):
            if lang == "python":
                blocks.append("\n".join(body))
            fence = ""
        else:
            body.append(line)
    return blocks


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


CASES = [
    pytest.param(page, i, id=f"{page.name}-{i + 1}")
    for page in pages()
    for i in range(len(python_blocks(page.read_text(encoding="utf-8"))))
]


def test_the_block_finder():
    text = (
        "a\n````python\nx = 1\n```python\ninner\n```\n````\n```bash\nls\n```\n~~~python\ny\n~~~\n"
    )
    assert python_blocks(text) == ["x = 1\n```python\ninner\n```", "y"]


def test_every_page_with_python_blocks_is_covered():
    assert {p.values[0].name for p in CASES} >= {"README.md", "tokens.md", "cache.md"}


def missing(block: str) -> str | None:
    """The optional module `block` needs and this environment lacks."""
    for name, module in OPTIONAL.items():
        if name in block and importlib.util.find_spec(module) is None:
            return module
    return None


@pytest.mark.parametrize(("page", "index"), CASES)
def test_block_runs(page: Path, index: int, request):
    blocks = python_blocks(page.read_text(encoding="utf-8"))[: index + 1]
    if module := missing(blocks[-1]):
        pytest.skip(f"{page.name} block {index + 1} needs {module}, not installed")
    # the blocks before it that need what is missing are skipped tests of their own
    blocks = [b for b in blocks if not missing(b)]
    if any(LOCAL_REDIS in b for b in blocks):
        url = request.getfixturevalue("redis_server").url
        blocks = [b.replace(LOCAL_REDIS, url) for b in blocks]
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{page.name} (python block {i + 1})", "exec"), namespace)

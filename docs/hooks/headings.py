"""mkdocs hook: each page is written one heading level down (its title is
``## Title``) so that the README and the pages read as one text in the tests
that run their examples (tests/docs_text.py); the site shows it one level up,
the title as the page's ``<h1>``."""

from __future__ import annotations

import re

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def on_page_markdown(markdown: str, **_: object) -> str:
    out = []
    fence = ""
    for line in markdown.split("\n"):
        m = _FENCE.match(line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                if not line[m.end() :].strip():
                    fence = ""
        elif m:
            fence = m.group(1)
        elif line.startswith("##"):
            line = line[1:]
        out.append(line)
    return "\n".join(out)

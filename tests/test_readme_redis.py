"""The README's deployment example runs as written, against a real Redis."""

from __future__ import annotations

import re
from pathlib import Path

from docs_text import docs_text

import llmedge

README = Path(__file__).resolve().parents[1] / "README.md"


def _deployment_source() -> str:
    section = docs_text().split("## Deployment: many workers, many hosts", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the deployment section"
    return match.group(1)


def test_deployment_example_runs(redis_server, capsys):
    source = _deployment_source()
    assert "redis://localhost:6379/0" in source
    source = source.replace("redis://localhost:6379/0", redis_server.url)
    ns: dict = {"__name__": "readme_deployment"}
    try:
        exec(compile(source, str(README), "exec"), ns)
        assert capsys.readouterr().out.strip().endswith("True True True")
        # the limiter's state is in Redis, under its name and the user's key
        assert redis_server.cli("EXISTS", "llmedge:rl:chat:{api-key-1}") == "1"
    finally:
        if "store" in ns:
            ns["store"].close()
        llmedge.breakers().pop("openai", None)

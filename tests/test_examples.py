"""examples/chat_app.py runs as a user would run it: uvicorn in front of the mock LLM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from llmedge.testing import mock_answer  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def chat_app(mock_llm, tmp_path):
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "app.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(EXAMPLES), "chat_app:app",
         "--port", str(port), "--log-level", "warning"],
        env={**os.environ, "LLM_BASE_URL": mock_llm.base_url},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            assert proc.poll() is None, (tmp_path / "app.log").read_text()
            try:
                httpx.get(url + "/health", trust_env=False)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def test_the_example_answers_caches_limits_and_reports(chat_app, mock_llm):
    def ask(question: str, key: str = "alice") -> httpx.Response:
        return httpx.post(chat_app + "/chat", json={"question": question},
                          headers={"Authorization": f"Bearer {key}"}, trust_env=False)  # fmt: skip

    q = "How do I reset my password?"
    first, second = ask(q), ask(q)
    assert first.json() == {
        "answer": mock_answer("gpt-4o-mini", [{"role": "user", "content": q}], 24),
        "cached": None,
    }
    assert second.json()["cached"] == "exact"
    assert mock_llm.stats()["requests"] - mock_llm.stats()["embedding_requests"] == 1
    assert ask("").status_code == 422
    # 10 a minute in bursts of 10: the 11th and 12th wait (a refill takes 6 s)
    codes = [ask(f"question {i}", key="greedy").status_code for i in range(12)]
    assert codes == [200] * 10 + [429] * 2
    # a 4xx is the request's fault: passed back, and the breaker stays closed
    # (the embeddings endpoint refusing too only turns the cache off)
    mock_llm.set_faults(fail_all=True, status=400)
    assert [ask(f"rejected {i}", key=f"k{i}").status_code for i in range(6)] == [400] * 6
    health = httpx.get(chat_app + "/health", trust_env=False).json()
    assert health["breakers"]["provider"]["state"] == "closed"
    mock_llm.set_faults(fail_all=True, status=503)
    assert ask("a question the cache has not seen").status_code == 502
    health = httpx.get(chat_app + "/health", trust_env=False).json()
    assert health["caches"]["answers"]["entries"] >= 1
    assert "llmedge_" in httpx.get(chat_app + "/metrics", trust_env=False).text

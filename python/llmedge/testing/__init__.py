"""Test helpers: an OpenAI-compatible mock LLM upstream.

``MockLLM`` serves it in this process, ``spawn_mock`` in a subprocess, and
``python -m llmedge.testing --port PORT`` from the command line. Serving needs
uvicorn (``pip install 'llmedge[fastapi]'``); the ASGI app itself needs nothing.
"""

from llmedge.testing._answers import mock_answer
from llmedge.testing._server import MockLLM, MockProcess, spawn_mock

__all__ = ["MockLLM", "MockProcess", "mock_answer", "spawn_mock"]

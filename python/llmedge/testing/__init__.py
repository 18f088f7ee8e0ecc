"""Test helpers: an OpenAI-compatible mock LLM upstream, the gateway served for
tests, and a fake clock.

``MockLLM`` serves the mock in this process, ``spawn_mock`` in a subprocess, and
``python -m llmedge.testing --port PORT`` from the command line; ``GatewayServer``
runs ``llmedge.gateway`` in front of upstreams, in this process or as ``llmedge
serve``; ``FakeClock`` is a ``clock=`` for breakers, limiters and caches.
Serving needs uvicorn (``pip install 'llmedge[service]'``); the mock's ASGI app
itself needs nothing. The pytest plugin (``llmedge.testing.pytest_plugin``,
active once installed) offers them as the fixtures ``mock_llm``,
``llmedge_gateway`` and ``llmedge_clock``.
"""

from llmedge.testing._answers import mock_answer, mock_embeddings
from llmedge.testing._clock import FakeClock
from llmedge.testing._gateway import GatewayServer
from llmedge.testing._server import MockLLM, MockProcess, spawn_mock

__all__ = [
    "FakeClock",
    "GatewayServer",
    "MockLLM",
    "MockProcess",
    "mock_answer",
    "mock_embeddings",
    "spawn_mock",
]

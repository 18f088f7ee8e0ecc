"""llmedge: fast, correct LLM plumbing for Python web backends.

Exact token counting, prompt fitting, a semantic response cache and
resilience primitives, implemented in Rust.
"""

from __future__ import annotations

from llmedge import _core
from llmedge._core import (
    Tokenizer,
    count_tokens,
    count_tokens_batch,
)
from llmedge.errors import (
    ContextOverflowError,
    LlmEdgeError,
    UnknownEncodingError,
    UnknownModelError,
    UnknownTokenError,
)

__version__: str = _core.__version__

__all__ = [
    "__version__",
    # errors
    "LlmEdgeError",
    "UnknownModelError",
    "UnknownEncodingError",
    "UnknownTokenError",
    "ContextOverflowError",
    # tokens
    "Tokenizer",
    "count_tokens",
    "count_tokens_batch",
]

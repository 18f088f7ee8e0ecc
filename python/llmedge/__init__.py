"""llmedge: fast, correct LLM plumbing for Python web backends.

Exact token counting, prompt fitting, a semantic response cache and
resilience primitives, implemented in Rust.
"""

from __future__ import annotations

from llmedge import _core
from llmedge._core import (
    CompressionResult,
    PromptOptimizer,
    Tokenizer,
    count_tokens,
)
from llmedge.errors import (
    ContextOverflowError,
    LlmEdgeError,
    UnknownEncodingError,
    UnknownModelError,
)

__version__: str = _core.__version__

__all__ = [
    "__version__",
    # errors
    "LlmEdgeError",
    "UnknownModelError",
    "UnknownEncodingError",
    "ContextOverflowError",
    # tokens
    "Tokenizer",
    "count_tokens",
    # prompt
    "PromptOptimizer",
    "CompressionResult",
]

"""llmedge: fast, correct LLM plumbing for Python web backends.

Exact token counting, prompt fitting, a semantic response cache and
resilience primitives, implemented in Rust.
"""

from __future__ import annotations

from llmedge import _core
from llmedge._core import (
    Tokenizer,
    count_tokens,
)
from llmedge.cache import CacheHit, SemanticCache, partition_key
from llmedge.errors import (
    CacheSnapshotError,
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
    # semantic cache
    "SemanticCache",
    "CacheHit",
    "partition_key",
    "CacheSnapshotError",
]

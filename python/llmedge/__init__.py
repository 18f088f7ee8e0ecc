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
from llmedge.errors import (
    CircuitOpenError,
    ContextOverflowError,
    LlmEdgeError,
    RateLimitExceeded,
    UnknownEncodingError,
    UnknownModelError,
)
from llmedge.resilience import (
    CircuitBreaker,
    MultiRateLimiter,
    RateLimiter,
    breakers,
    get_breaker,
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
    # resilience
    "CircuitBreaker",
    "RateLimiter",
    "MultiRateLimiter",
    "breakers",
    "get_breaker",
    "CircuitOpenError",
    "RateLimitExceeded",
]

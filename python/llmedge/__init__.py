"""llmedge: fast, correct LLM plumbing for Python web backends.

Exact token counting, prompt fitting, a semantic response cache and
resilience primitives, implemented in Rust.
"""

from __future__ import annotations

from llmedge import _core
from llmedge._core import (
    TOKEN_TABLE_MAX_BYTES,
    CompressionResult,
    CostTracker,
    HashingEmbedder,
    PromptOptimizer,
    Tokenizer,
    count_messages,
    count_tokens,
    count_tokens_batch,
    estimate_cost,
    fit_messages,
    guard_check,
    list_models,
    model_info,
    register_model,
    token_table_bytes,
)
from llmedge.cache import (
    CacheHit,
    SemanticCache,
    embedding_answers_match,
    exact_answers_match,
    partition_key,
)
from llmedge.errors import (
    AllUpstreamsFailedError,
    CacheNamespaceError,
    CacheSnapshotError,
    CircuitOpenError,
    ContextOverflowError,
    LlmEdgeError,
    RateLimitExceeded,
    StoreError,
    UnknownEncodingError,
    UnknownModelError,
    UnknownTokenError,
    UpstreamClientError,
    UpstreamError,
)
from llmedge.resilience import (
    CircuitBreaker,
    MultiRateLimiter,
    RateLimiter,
    breakers,
    get_breaker,
)
from llmedge.retry import Retry
from llmedge.routing import Attempt, Router, RouterResponse, RouterStream, Upstream
from llmedge.store import RedisStore

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
    "token_table_bytes",
    "TOKEN_TABLE_MAX_BYTES",
    # models, messages and cost
    "register_model",
    "model_info",
    "list_models",
    "count_messages",
    "fit_messages",
    "estimate_cost",
    "CostTracker",
    # resilience
    "CircuitBreaker",
    "RateLimiter",
    "MultiRateLimiter",
    "breakers",
    "get_breaker",
    "CircuitOpenError",
    "RateLimitExceeded",
    # shared state
    "RedisStore",
    "StoreError",
    # retries and routing
    "Retry",
    "Router",
    "Upstream",
    "Attempt",
    "RouterResponse",
    "RouterStream",
    "UpstreamError",
    "UpstreamClientError",
    "AllUpstreamsFailedError",
    # cache: guard and built-in embedder
    "HashingEmbedder",
    "guard_check",
    # prompt
    "PromptOptimizer",
    "CompressionResult",
    # semantic cache
    "SemanticCache",
    "CacheHit",
    "partition_key",
    "exact_answers_match",
    "embedding_answers_match",
    "CacheNamespaceError",
    "CacheSnapshotError",
]

"""The llmedge exception hierarchy.

Every error llmedge raises on purpose derives from :class:`LlmEdgeError` and
from the standard exception whose meaning fits, so existing ``except KeyError``
or ``except ValueError`` clauses keep working. The classes live in Python
because several need two bases, which extension types cannot declare; the Rust
extension raises these very classes.
"""

from __future__ import annotations

__all__ = [
    "LlmEdgeError",
    "UnknownModelError",
    "UnknownEncodingError",
    "UnknownTokenError",
    "ContextOverflowError",
    "CircuitOpenError",
    "RateLimitExceeded",
    "CacheSnapshotError",
    "StoreError",
    "UpstreamError",
    "UpstreamClientError",
    "AllUpstreamsFailedError",
    "IncompleteStreamError",
]


class LlmEdgeError(Exception):
    """Base class of every error raised by llmedge."""


class UnknownModelError(LlmEdgeError, KeyError):
    """A model name that is neither in the model table nor registered.

    ``suggestions`` holds the closest known names.
    """

    def __init__(self, message: str, model: str = "", suggestions: list[str] | None = None):
        super().__init__(message)
        self.model = model
        self.suggestions = list(suggestions or [])

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnknownEncodingError(LlmEdgeError, ValueError):
    """An encoding name that llmedge does not ship."""


class UnknownTokenError(LlmEdgeError, KeyError, ValueError):
    """A token id that the encoding does not define (raised by ``Tokenizer.decode``).

    A ``KeyError`` as tiktoken raises for unknown ids, and a ``ValueError``.
    ``token`` holds the offending id.
    """

    def __init__(self, message: str, token: int = -1):
        super().__init__(message)
        self.token = token

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ContextOverflowError(LlmEdgeError, ValueError):
    """The messages that must be kept do not fit the token budget.

    ``required`` is the token count of what must be kept, ``available`` the budget.
    """

    def __init__(self, message: str, required: int = 0, available: int = 0):
        super().__init__(message)
        self.required = required
        self.available = available


class CircuitOpenError(LlmEdgeError):
    """A circuit breaker rejected the call without running it.

    ``name`` is the breaker's name, ``state`` its state (``"open"``,
    ``"half_open"`` when every probe slot is taken, or ``"forced_open"``) and
    ``retry_after`` the seconds until it admits a call again (a hint: 0.0 while
    half-open probes run, the recovery timeout when forced open).
    """

    def __init__(self, message: str, name: str = "", state: str = "open", retry_after: float = 0.0):
        super().__init__(message)
        self.name = name
        self.state = state
        self.retry_after = retry_after


class RateLimitExceeded(LlmEdgeError):
    """A rate limiter could not grant the request (now, or within the timeout).

    ``retry_after`` is the seconds until the same request would be granted,
    ``key`` the limiter key it was charged to.
    """

    def __init__(self, message: str, retry_after: float = 0.0, key: str = ""):
        super().__init__(message)
        self.retry_after = retry_after
        self.key = key


class CacheSnapshotError(LlmEdgeError, ValueError):
    """A semantic cache snapshot that cannot be loaded: made with another
    embedder or dimension, truncated, corrupted, or not a snapshot at all.
    The cache it was loaded into is left unchanged."""


class StoreError(LlmEdgeError, ConnectionError):
    """A :class:`~llmedge.RedisStore` could not do what was asked: Redis is
    unreachable or did not answer within the store's ``timeout``, refused the
    credentials, the store was closed, or a key holds a value of the wrong
    type (written by another program).

    Limiters and breakers with ``store=`` apply their fallback policy instead
    of raising it when Redis is merely unusable; it reaches the caller from
    ``RedisStore`` construction and ``ping()``, and from limiter calls when a
    key holds data the limiter cannot read.
    """


class UpstreamError(LlmEdgeError, ConnectionError):
    """One upstream failed a call: HTTP 5xx or 429, a timeout, a connection
    error, a malformed answer or a stream cut before its end.

    ``upstream`` names it, ``status`` is the HTTP status (None when there was
    no response), ``timeout`` tells a timeout, ``retry_after`` the seconds
    the upstream asked to wait (its ``Retry-After``), or None.
    """

    def __init__(
        self,
        message: str,
        upstream: str = "",
        status: int | None = None,
        timeout: bool = False,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.upstream = upstream
        self.status = status
        self.timeout = timeout
        self.retry_after = retry_after


class UpstreamClientError(LlmEdgeError):
    """An upstream rejected the request itself (HTTP 4xx other than 408 and
    429): the caller's fault, so no other upstream is tried and no breaker
    counts it. ``status`` and ``body`` (the upstream's JSON error, or its
    text) are passed back as they came; ``upstream`` names it."""

    def __init__(self, message: str, upstream: str = "", status: int = 400, body: object = None):
        super().__init__(message)
        self.upstream = upstream
        self.status = status
        self.body = body


class AllUpstreamsFailedError(LlmEdgeError):
    """No upstream answered: each failed, was unavailable (breaker open, rate
    limit spent, cooling down after a 429) or the deadline passed.

    ``attempts`` lists what was tried (:class:`llmedge.routing.Attempt`),
    ``errors`` the :class:`UpstreamError` of each failed call (empty when
    none was made), ``timeout`` whether the last failure was a timeout or the
    deadline, and ``retry_after`` the seconds until the first unavailable
    upstream admits calls again (None when every upstream was called and
    failed).
    """

    def __init__(
        self,
        message: str,
        attempts: list | None = None,
        errors: list | None = None,
        timeout: bool = False,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.attempts = list(attempts or [])
        self.errors = list(errors or [])
        self.timeout = timeout
        self.retry_after = retry_after


class IncompleteStreamError(LlmEdgeError, ConnectionError):
    """An SSE stream that did not finish: it ended without ``data: [DONE]``
    (cut mid-way), or sent an error event or a malformed one."""

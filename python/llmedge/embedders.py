"""Embedders for :class:`llmedge.SemanticCache` backed by optional libraries or
services: :class:`SentenceTransformerEmbedder` (a local model) and
:class:`OpenAIEmbedder` (an OpenAI-compatible ``/v1/embeddings`` endpoint).

Import this module explicitly (``from llmedge.embedders import
SentenceTransformerEmbedder``); ``import llmedge`` never imports it, so the
optional libraries are loaded only by users who ask for them. The built-in,
dependency-free embedder is :class:`llmedge.HashingEmbedder`.

An embedder is any callable taking a list of str and returning a 2-D float
array (one row per text) and, optionally, ``dim`` and ``identity``
attributes: ``identity`` names the embedding function and its configuration,
so that a cache never mixes vectors of two different embedders.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from llmedge.errors import UpstreamClientError, UpstreamError
from llmedge.resilience import CircuitBreaker

__all__ = ["OpenAIEmbedder", "SentenceTransformerEmbedder"]

_INSTALL_HINT = (
    "SentenceTransformerEmbedder needs the optional dependency sentence-transformers; "
    "install it with: pip install 'llmedge[sentence-transformers]'"
)


def _import_sentence_transformers() -> Any:
    try:
        import sentence_transformers
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return sentence_transformers


class SentenceTransformerEmbedder:
    """A sentence-transformers model as a cache embedder.

    ``model_name_or_path`` is passed to ``sentence_transformers.SentenceTransformer``
    (a local directory works offline). The model is loaded when the embedder
    is created; ``sentence_transformers`` itself is imported only then.

    Calling the embedder with a list of str returns a float32 numpy array of
    shape ``(len(texts), dim)``, L2-normalised when ``normalize`` is true (the
    default, so that cosine similarity is a dot product).
    """

    def __init__(
        self,
        model_name_or_path: str,
        *,
        device: str | None = None,
        normalize: bool = True,
        batch_size: int = 32,
    ) -> None:
        if not isinstance(model_name_or_path, str) or not model_name_or_path:
            raise ValueError(
                f"model_name_or_path must be a non-empty str, got {model_name_or_path!r}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool, got {normalize!r}")
        st = _import_sentence_transformers()
        import numpy as np  # a dependency of sentence-transformers

        self._np = np
        self.model_name = model_name_or_path
        self.device = device
        self.normalize = normalize
        self.batch_size = batch_size
        self._model = st.SentenceTransformer(model_name_or_path, device=device)
        # torch modules are not documented as safe to call from several
        # threads at once; the cache may embed from many.
        self._lock = threading.Lock()
        # newer sentence-transformers renamed the method (the old name warns)
        probe = getattr(self._model, "get_embedding_dimension", None)
        if probe is None:
            probe = self._model.get_sentence_embedding_dimension
        dim = probe()
        if dim is None:
            dim = int(self._encode(["dimension probe"]).shape[1])
        self._dim = int(dim)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def identity(self) -> str:
        norm = "normalized" if self.normalize else "raw"
        return f"sentence-transformers/{self.model_name}/dim={self._dim}/{norm}"

    def _encode(self, texts: list[str]) -> Any:
        with self._lock:
            out = self._model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=self.normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return self._np.asarray(out, dtype=self._np.float32)

    def __call__(self, texts: Sequence[str]) -> Any:
        items = _texts(texts)
        if not items:
            return self._np.zeros((0, self._dim), dtype=self._np.float32)
        out = self._encode(items)
        if out.ndim != 2 or out.shape[0] != len(items):
            raise RuntimeError(
                f"the model returned an array of shape {out.shape} for {len(items)} texts"
            )
        return out

    def __repr__(self) -> str:
        return (
            f"SentenceTransformerEmbedder({self.model_name!r}, device={self.device!r}, "
            f"normalize={self.normalize}, batch_size={self.batch_size}, dim={self._dim})"
        )


def _texts(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list, checked: a list of str, not one str."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of str, got a single str; wrap it in a list")
    items = list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be str, got {type(t).__name__}")
    return items


class OpenAIEmbedder:
    """An OpenAI-compatible embeddings endpoint (``POST {base_url}/embeddings``) as a
    cache embedder: OpenAI itself, Azure-style gateways, vLLM, TEI, Ollama, LiteLLM...

    ``base_url`` is the API's base (``https://api.openai.com/v1``), ``model`` the
    embedding model. ``api_key`` is sent as a bearer token. ``dimensions`` asks
    the endpoint for vectors of that size (models that support it); without it,
    the first use of ``dim`` asks the endpoint once for a vector and measures it.

    Texts are sent ``batch_size`` at a time, one request after the other; each
    request waits at most ``timeout`` seconds to connect and for each read. Each
    request goes through ``breaker``: by default a
    :class:`llmedge.CircuitBreaker` of its own (5 consecutive failures open it
    for 30 s), or the breaker given, or none with ``breaker=False``. A timeout,
    a connection error, HTTP 5xx or 429 or a malformed answer raises
    :class:`llmedge.UpstreamError` and counts as a failure; another 4xx (a bad
    request: a text over the model's limit, an unknown model) raises
    :class:`llmedge.UpstreamClientError` and does not; an open breaker raises
    :class:`llmedge.CircuitOpenError` without a request. An empty text raises
    ``ValueError`` before any request (endpoints reject them).

    Calling it with a list of str returns a list of float lists, one per text;
    ``aembed`` does the same off the event loop. ``SemanticCache`` calls it from
    a worker thread in ``aget``/``aset``.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        dimensions: int | None = None,
        timeout: float = 10.0,
        batch_size: int = 256,
        breaker: CircuitBreaker | bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"base_url must be an http(s) URL such as https://api.openai.com/v1, "
                f"got {base_url!r}"
            )
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty str, got {model!r}")
        if api_key is not None and (not isinstance(api_key, str) or not api_key):
            raise ValueError("api_key must be a non-empty str or None")
        if dimensions is not None and (
            isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
        ):
            raise ValueError(f"dimensions must be a positive int or None, got {dimensions!r}")
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not (math.isfinite(timeout) and timeout > 0)
        ):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if breaker is True:
            breaker = CircuitBreaker(
                f"embeddings {model} at {base_url}",
                failure_threshold=5,
                recovery_timeout=30.0,
                success_threshold=1,
                exclude=(UpstreamClientError,),
            )
        elif breaker is not False and not isinstance(breaker, CircuitBreaker):
            raise TypeError(
                f"breaker must be an llmedge.CircuitBreaker, True (one of its own) or False "
                f"(none), got {type(breaker).__name__}"
            )
        try:
            import httpx
        except ImportError as exc:
            raise ImportError(
                "OpenAIEmbedder needs the optional dependency httpx; install it with: "
                "pip install 'llmedge[service]' (or pip install httpx)"
            ) from exc
        self._httpx = httpx
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.dimensions = dimensions
        self.timeout = float(timeout)
        self.batch_size = batch_size
        self.breaker: CircuitBreaker | None = breaker or None
        request_headers = {"Content-Type": "application/json", **(headers or {})}
        if api_key is not None:
            request_headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(
            headers=request_headers, timeout=httpx.Timeout(self.timeout), trust_env=False
        )
        self._dim = dimensions
        self._dim_lock = threading.Lock()

    # ---- what SemanticCache reads -------------------------------------------

    @property
    def dim(self) -> int:
        """The vectors' size: ``dimensions``, else measured on one request (once)."""
        if self._dim is None:
            with self._dim_lock:
                if self._dim is None:
                    self._dim = len(self._request(["dimension probe"])[0])
        return self._dim

    @property
    def identity(self) -> str:
        return f"openai-compatible/{self.model}@{self.base_url}/dim={self.dim}"

    # ---- embedding -----------------------------------------------------------

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        items = _texts(texts)
        for i, t in enumerate(items):
            if not t:
                raise ValueError(f"texts[{i}] is empty; embeddings endpoints reject empty strings")
        out: list[list[float]] = []
        for start in range(0, len(items), self.batch_size):
            out.extend(self._request(items[start : start + self.batch_size]))
        return out

    embed = __call__

    async def aembed(self, texts: Sequence[str]) -> list[list[float]]:
        """``embed`` for asyncio: the requests run in a worker thread."""
        return await asyncio.to_thread(self, texts)

    def _request(self, batch: list[str]) -> list[list[float]]:
        breaker = self.breaker
        if breaker is None:
            return self._post(batch)
        permit = breaker._acquire()  # raises CircuitOpenError while open
        try:
            vectors = self._post(batch)
        except UpstreamClientError:
            breaker._release(permit)  # the caller's fault: neither failure nor success
            raise
        except BaseException as exc:
            breaker._on_error(permit, exc)
            raise
        breaker._on_success(permit)
        return vectors

    def _post(self, batch: list[str]) -> list[list[float]]:
        httpx = self._httpx
        url = self.base_url + "/embeddings"
        payload: dict[str, Any] = {"model": self.model, "input": batch, "encoding_format": "float"}
        if self.dimensions is not None:
            payload["dimensions"] = self.dimensions
        try:
            r = self._client.post(url, json=payload)
        except httpx.TimeoutException as exc:
            raise UpstreamError(
                f"{url}: no answer within {self.timeout:g} s ({type(exc).__name__})",
                upstream=self.base_url,
                timeout=True,
            ) from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"{url}: {type(exc).__name__}: {exc}", upstream=self.base_url
            ) from exc
        if r.status_code != 200:
            try:
                body: Any = r.json()
            except ValueError:
                body = r.text[:500]
            message = f"{url} answered HTTP {r.status_code}: {_error_message(body)}"
            if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
                raise UpstreamClientError(
                    message, upstream=self.base_url, status=r.status_code, body=body
                )
            raise UpstreamError(
                message,
                upstream=self.base_url,
                status=r.status_code,
                retry_after=_retry_after(r.headers.get("retry-after")),
            )
        try:
            return _vectors(r.json(), len(batch), self._dim)
        except ValueError as exc:
            raise UpstreamError(f"{url}: malformed answer: {exc}", upstream=self.base_url) from None

    # ---- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP connections; the embedder cannot embed afterwards."""
        self._client.close()

    def __del__(self) -> None:
        # an embedder dropped without close() (the cache owns it) frees its sockets
        client = getattr(self, "_client", None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def __enter__(self) -> OpenAIEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        dim = self._dim if self._dim is not None else "unknown"
        breaker = self.breaker.name if self.breaker is not None else None
        return (
            f"OpenAIEmbedder({self.base_url!r}, {self.model!r}, dim={dim}, "
            f"timeout={self.timeout:g}, batch_size={self.batch_size}, breaker={breaker!r})"
        )


def _error_message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", body["error"]))
    return str(body)[:500]


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def _vectors(body: Any, n: int, dim: int | None) -> list[list[float]]:
    """The vectors of an embeddings answer in input order, checked."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or len(data) != n:
        got = len(data) if isinstance(data, list) else type(data).__name__
        raise ValueError(f"expected 'data' with {n} embeddings, got {got}")
    out: list[list[float] | None] = [None] * n
    for item in data:
        index = item.get("index") if isinstance(item, dict) else None
        vector = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
            raise ValueError(f"an embedding's index is {index!r}, expected 0..{n - 1}")
        if out[index] is not None:
            raise ValueError(f"index {index} appears twice")
        if not isinstance(vector, list) or not vector:
            raise ValueError(f"embedding {index} is not a list of floats")
        if dim is not None and len(vector) != dim:
            raise ValueError(f"embedding {index} has {len(vector)} floats, expected {dim}")
        try:
            out[index] = [float(x) for x in vector]
        except (TypeError, ValueError):
            raise ValueError(f"embedding {index} holds a value that is not a number") from None
    return out  # type: ignore[return-value]

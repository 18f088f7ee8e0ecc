"""Embedders for :class:`llmedge.SemanticCache` backed by optional libraries.

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

import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["SentenceTransformerEmbedder"]

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
        dim = self._model.get_sentence_embedding_dimension()
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
        if isinstance(texts, str):
            raise TypeError("texts must be a list of str, got a single str; wrap it in a list")
        items = list(texts)
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be str, got {type(t).__name__}")
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

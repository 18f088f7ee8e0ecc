"""A pure-Python semantic cache: what a careful user writes without llmedge.

A dict for exact prompts, an ``OrderedDict`` for LRU order, TTL deadlines,
and numpy brute-force cosine similarity over a preallocated matrix of
normalised vectors.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import numpy as np


def _normalize(prompt: str) -> str:
    return " ".join(prompt.split()).casefold()


class PyCache:
    def __init__(
        self, dim: int, threshold: float = 0.85, ttl: float = 3600.0, max_entries: int = 10_000
    ) -> None:
        self.dim = dim
        self.threshold = threshold
        self.ttl = ttl
        self.max_entries = max_entries
        self.exact: dict[str, int] = {}
        self.lru: OrderedDict[int, tuple[str, Any, float]] = OrderedDict()
        self.vectors = np.zeros((16, dim), dtype=np.float32)
        self.row_key = np.full(16, -1, dtype=np.int64)
        self.free: list[int] = list(range(15, -1, -1))
        self.key_row: dict[int, int] = {}
        self.next_key = 0

    def _grow(self) -> None:
        n = len(self.vectors)
        self.vectors = np.concatenate([self.vectors, np.zeros((n, self.dim), np.float32)])
        self.row_key = np.concatenate([self.row_key, np.full(n, -1, np.int64)])
        self.free.extend(range(2 * n - 1, n - 1, -1))

    def _remove(self, key: int) -> None:
        prompt, _, _ = self.lru.pop(key)
        self.exact.pop(_normalize(prompt), None)
        row = self.key_row.pop(key)
        self.row_key[row] = -1
        self.vectors[row] = 0.0
        self.free.append(row)

    def set(self, prompt: str, response: Any, embedding: np.ndarray) -> None:
        norm = _normalize(prompt)
        if norm in self.exact:
            self._remove(self.exact[norm])
        while len(self.lru) >= self.max_entries:
            self._remove(next(iter(self.lru)))
        if not self.free:
            self._grow()
        row = self.free.pop()
        key = self.next_key
        self.next_key += 1
        v = np.asarray(embedding, dtype=np.float32)
        self.vectors[row] = v / np.linalg.norm(v)
        self.row_key[row] = key
        self.key_row[key] = row
        self.exact[norm] = key
        self.lru[key] = (prompt, response, time.monotonic() + self.ttl)

    def get(self, prompt: str, embedding: np.ndarray) -> tuple[str, Any] | None:
        now = time.monotonic()
        key = self.exact.get(_normalize(prompt))
        if key is None:
            q = np.asarray(embedding, dtype=np.float32)
            scores = self.vectors @ (q / np.linalg.norm(q))
            row = int(np.argmax(scores))
            if scores[row] < self.threshold or self.row_key[row] < 0:
                return None
            key = int(self.row_key[row])
        prompt_, response, deadline = self.lru[key]
        if deadline <= now:
            self._remove(key)
            return None
        self.lru.move_to_end(key)
        return prompt_, response

    def __len__(self) -> int:
        return len(self.lru)

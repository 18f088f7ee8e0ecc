"""Pure-Python baseline of llmedge.HashingEmbedder: the same algorithm.

Word 1-2 grams and character 3-5 grams of each lowercased word padded with
"<" and ">", 64-bit FNV-1a hashed with a splitmix64 finaliser, signed feature
hashing into ``dim`` buckets, sublinear term frequency, each group scaled to
unit norm, the sum L2-normalised. Agrees with the Rust embedder to float32
rounding on text whose characters Python and Rust classify alike.
"""

from __future__ import annotations

import math
from collections import Counter

_MASK = (1 << 64) - 1
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def _fnv(data: bytes) -> int:
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _MASK
    return h


def _mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def words(text: str) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    n = len(text)
    for i, c in enumerate(text):
        if c.isalnum():
            cur.append(c.lower())
        elif c in "'\u2019" and cur and i + 1 < n and text[i + 1].isalnum():
            continue
        elif cur:
            out.append("".join(cur))
            cur = []
    if cur:
        out.append("".join(cur))
    return out


class PyHashingEmbedder:
    def __init__(self, dim: int = 384, word_ngrams=(1, 2), char_ngrams=(3, 5)) -> None:
        self.dim = dim
        self.word_ngrams = word_ngrams
        self.char_ngrams = char_ngrams

    def _accumulate(self, feats: list[int], v: list[float]) -> None:
        if not feats:
            return
        counts = Counter(feats)
        weighted = [(h, 1.0 + math.log(c)) for h, c in counts.items()]
        norm = math.sqrt(sum(w * w for _, w in weighted))
        dim = self.dim
        for h, w in weighted:
            m = _mix(h)
            idx = (m * dim) >> 64
            v[idx] += (w if m & 1 == 0 else -w) / norm

    def embed(self, text: str) -> list[float]:
        ws = words(text)
        v = [0.0] * self.dim
        if self.word_ngrams:
            lo, hi = self.word_ngrams
            feats = []
            for n in range(lo, hi + 1):
                for i in range(len(ws) - n + 1):
                    gram = b"\x1f".join(w.encode() for w in ws[i : i + n])
                    feats.append(_fnv(bytes([1, n]) + gram))
            self._accumulate(feats, v)
        if self.char_ngrams:
            lo, hi = self.char_ngrams
            feats = []
            for w in ws:
                padded = "<" + w + ">"
                for n in range(lo, hi + 1):
                    for i in range(len(padded) - n + 1):
                        feats.append(_fnv(b"\x02" + padded[i : i + n].encode()))
            self._accumulate(feats, v)
        norm = math.sqrt(sum(x * x for x in v))
        if norm > 0:
            v = [x / norm for x in v]
        return v

    def __call__(self, texts: list[str]) -> list[list[float]]:
        return [self.embed(t) for t in texts]

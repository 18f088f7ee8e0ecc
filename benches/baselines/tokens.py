"""Pure-Python token counting: the same ranks and pre-split regex as tiktoken.

A straightforward byte-pair encoder (tiktoken's merge rule: repeatedly merge
the adjacent pair whose concatenation has the lowest rank), slow but exact.
The ranks are read from the ``.tiktoken`` files shipped inside the tiktoken-rs
crate (found under ~/.cargo/registry), so nothing is downloaded.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import regex

O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

PATTERNS = {
    "o200k_base": O200K_PATTERN,
    "cl100k_base": CL100K_PATTERN,
    "p50k_base": GPT2_PATTERN,
    "r50k_base": GPT2_PATTERN,
}
BLOB = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"


def tiktoken_assets() -> Path | None:
    """The tiktoken-rs crate's asset directory, or None when it is not on this machine."""
    home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    dirs = sorted(glob.glob(os.path.join(home, "registry", "src", "*", "tiktoken-rs-*", "assets")))
    return Path(dirs[-1]) if dirs else None


def offline_tiktoken_cache(assets: Path) -> str:
    """A TIKTOKEN_CACHE_DIR holding the vocabularies under the names tiktoken looks for.

    tiktoken/load.py ``read_file_cached`` looks up ``sha1(url).hexdigest()`` in
    the cache directory before it would download the URL.
    """
    cache = tempfile.mkdtemp(prefix="llmedge-tiktoken-")
    for name in ("o200k_base", "cl100k_base", "p50k_base", "r50k_base"):
        key = hashlib.sha1(BLOB.format(name).encode()).hexdigest()
        shutil.copyfile(assets / f"{name}.tiktoken", Path(cache) / key)
    return cache


def load_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


class PythonBPE:
    def __init__(self, name: str, assets: Path):
        self.name = name
        self.ranks = load_ranks(assets / f"{name}.tiktoken")
        self.pattern = regex.compile(PATTERNS[name])

    def _merge(self, piece: bytes) -> list[int]:
        ranks = self.ranks
        parts = [piece[i : i + 1] for i in range(len(piece))]
        while len(parts) > 1:
            best = None
            best_rank = None
            for i in range(len(parts) - 1):
                rank = ranks.get(parts[i] + parts[i + 1])
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = i, rank
            if best is None:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        return [ranks[p] for p in parts]

    def encode_ordinary(self, text: str) -> list[int]:
        out: list[int] = []
        ranks = self.ranks
        for m in self.pattern.finditer(text):
            piece = m.group().encode("utf-8")
            rank = ranks.get(piece)
            if rank is not None:
                out.append(rank)
            else:
                out.extend(self._merge(piece))
        return out

    def count(self, text: str) -> int:
        return len(self.encode_ordinary(text))

"""Does the gateway's semantic tier find real paraphrases? Labelled question pairs of
``mqp.csv`` through the gateway, with each embedder side by side.

    LLMEDGE_DATA=../shared/data python loadtest/paraphrases.py [--pairs 300] [--json FILE]

For every pair (a, b) the gateway is asked a, then b (``POST /chat``, no
history, one API key per pair), in front of the mock LLM, whose answer is a
function of the question. A semantic hit on b that returns a's answer is
right for a paraphrase (label 1); for a hard negative (label 0) every
semantic hit is a wrong answer, as is a hit on b that returns the answer of
another earlier question.

Embedders: ``hashing`` (the default, no model) and ``openai:all-MiniLM-L6-v2``
through ``llmedge.embedders.OpenAIEmbedder`` against a local OpenAI-compatible
``/v1/embeddings`` endpoint that serves the real all-MiniLM-L6-v2 vectors of
every mqp question (``mqp_questions.json`` and ``mqp_minilm.npy``), so no
model runs here (the pairs only hold its questions).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from llmedge.testing import GatewayServer, MockLLM
from llmedge.testing._server import _ThreadServer

REPO = Path(__file__).resolve().parent.parent


def data_dir(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get("LLMEDGE_DATA") or REPO.parent / "shared" / "data")


class PrecomputedEmbeddings:
    """An OpenAI-compatible ``POST /v1/embeddings`` ASGI app over a table of vectors."""

    def __init__(self, texts: list[str], vectors: np.ndarray) -> None:
        self.rows = {t.strip(): i for i, t in enumerate(texts)}
        self.vectors = vectors.astype(np.float32)

    def vector(self, text: str) -> list[float]:
        """The table's vector, or for a text outside it (the gateway's start-up
        probe) a pseudo-random unit vector, near no other."""
        row = self.rows.get(text.strip())
        if row is not None:
            return self.vectors[row].tolist()
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        rng = np.random.default_rng(seed)
        v = rng.standard_normal(self.vectors.shape[1])
        return (v / np.linalg.norm(v)).tolist()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        body = json.loads(raw or b"{}")
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        data = [
            {"object": "embedding", "index": i, "embedding": self.vector(t)}
            for i, t in enumerate(texts)
        ]
        status, payload = 200, {"object": "list", "data": data, "model": body.get("model")}
        out = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": out})


Pairs = list[tuple[str, str]]


def load_pairs(root: Path, n: int, seed: int) -> tuple[Pairs, Pairs]:
    positive: Pairs = []
    negative: Pairs = []
    with (root / "mqp.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            if len(row) == 4 and row[1].strip() and row[2].strip():
                pair = (row[1].strip(), row[2].strip())
                (positive if row[3].strip() == "1" else negative).append(pair)
    rng = random.Random(seed)
    rng.shuffle(positive)
    rng.shuffle(negative)
    return positive[:n], negative[:n]


def run_pairs(url: str, pairs: list[tuple[str, str]], label: str) -> dict[str, Any]:
    hits = right = wrong = errors = 0
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as client:
        for i, (a, b) in enumerate(pairs):
            headers = {"Authorization": f"Bearer {label}-{i}"}
            first = client.post("/chat", json={"question": a}, headers=headers)
            second = client.post("/chat", json={"question": b}, headers=headers)
            if first.status_code != 200 or second.status_code != 200:
                errors += 1
                continue
            if second.json()["cached"] == "semantic":
                hits += 1
                if second.json()["answer"] == first.json()["answer"]:
                    right += 1
                else:
                    wrong += 1
    return {"pairs": len(pairs), "semantic_hits": hits, "with_a_answer": right,
            "other_answer": wrong, "errors": errors}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python loadtest/paraphrases.py", description=__doc__)
    parser.add_argument("--pairs", type=int, default=300, help="pairs of each label (300)")
    parser.add_argument("--threshold", type=float, default=0.85, help="cache threshold (0.85)")
    parser.add_argument("--data", metavar="DIR", help="default: $LLMEDGE_DATA or ../shared/data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    root = data_dir(args.data)
    needed = ["mqp.csv", "mqp_questions.json", "mqp_minilm.npy"]
    if not all((root / name).is_file() for name in needed):
        print(f"paraphrases.py: {root} lacks one of {needed}", file=sys.stderr)
        return 2
    positive, negative = load_pairs(root, args.pairs, args.seed)
    table = PrecomputedEmbeddings(
        json.loads((root / "mqp_questions.json").read_text(encoding="utf-8")),
        np.load(root / "mqp_minilm.npy"),
    )
    embeddings = _ThreadServer(table, "127.0.0.1", 0, "embeddings", lifespan="off")
    embeddings.start()
    results: dict[str, Any] = {"threshold": args.threshold}
    try:
        with MockLLM() as mock:
            for embedder in ("hashing", "openai:all-MiniLM-L6-v2"):
                settings: dict[str, Any] = {
                    "embedder": embedder, "cache_threshold": args.threshold,
                    "rate_limit": None, "embedder_timeout": 10.0,
                }  # fmt: skip
                if embedder.startswith("openai:"):
                    settings["embedder_url"] = f"http://127.0.0.1:{embeddings.port}/v1"
                with GatewayServer([mock.base_url], **settings) as gateway:
                    results[embedder] = {
                        "paraphrases (label 1)": run_pairs(gateway.url, positive, "p"),
                        "hard negatives (label 0)": run_pairs(gateway.url, negative, "n"),
                    }
    finally:
        embeddings.stop()
    print(f"mqp.csv pairs through the gateway, threshold {args.threshold}:")
    print(f"{'embedder':<26}{'pairs':<26}{'n':>5}{'semantic hits':>15}"
          f"{'with a answer':>15}{'other answer':>14}")  # fmt: skip
    for embedder in ("hashing", "openai:all-MiniLM-L6-v2"):
        for kind, r in results[embedder].items():
            print(f"{embedder:<26}{kind:<26}{r['pairs']:>5}{r['semantic_hits']:>15}"
                  f"{r['with_a_answer']:>15}{r['other_answer']:>14}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

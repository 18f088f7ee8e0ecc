"""How well the semantic cache would answer on your own labelled prompt pairs.

``python -m llmedge cache-eval --pairs pairs.csv`` reads pairs of prompts
labelled by whether one answer serves both (``prompt_a,prompt_b,same_answer``),
embeds them, and prints, per similarity threshold, the precision and recall
of a plain threshold cache and of the same cache with the guard
(``llmedge.guard_check``, given each pair's cosine as the cache gives it);
the guard's cost and gain at one threshold (``--at``, 0.85): the recall it
loses, and its precision against a plain threshold's at the same recall; the
guard's rejections by reason with examples; and the lowest threshold that
reaches a target precision. ``--plot FILE.png``
draws the precision-recall curves (matplotlib, ``pip install 'llmedge[plot]'``).

A pair counts as a hit when the cosine similarity of its two embeddings
reaches the threshold (and, with the guard, the guard accepts it). Precision
is the share of hits labelled ``same_answer``; recall the share of pairs
labelled ``same_answer`` that hit. The same functions are importable::

    from llmedge.cache_eval import Pair, evaluate

    report = evaluate([Pair("What is 2+2?", "what is 2 + 2", True)], thresholds=[0.5])
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from llmedge._core import HashingEmbedder, guard_check

__all__ = ["Pair", "Report", "embedder_from_spec", "evaluate", "read_pairs"]

Embed = Callable[[Sequence[str]], Sequence[Sequence[float]]]

DEFAULT_THRESHOLDS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
TRUE_WORDS = {"1", "true", "yes", "same"}
FALSE_WORDS = {"0", "false", "no", "different"}


@dataclasses.dataclass(frozen=True)
class Pair:
    """Two prompts and whether one answer serves both."""

    prompt_a: str
    prompt_b: str
    same_answer: bool


@dataclasses.dataclass(frozen=True)
class Row:
    threshold: float
    hits: int
    precision: float | None
    recall: float
    guard_hits: int
    guard_precision: float | None
    guard_recall: float
    # precision of the plain threshold that reaches the guard's recall (or
    # more) at the highest threshold: the fair comparison at equal recall
    plain_precision_at_guard_recall: float | None


@dataclasses.dataclass(frozen=True)
class GuardEffect:
    """The guard at one threshold: what it costs and what it buys."""

    threshold: float
    recall: float
    guard_recall: float
    # recall - guard_recall, in points (0-100)
    recall_cost: float
    guard_precision: float | None
    # the highest plain threshold whose recall reaches guard_recall, and its
    # precision; gain = guard_precision - plain_precision, in points
    plain_threshold: float | None
    plain_precision: float | None
    precision_gain: float | None


@dataclasses.dataclass(frozen=True)
class Report:
    pairs: int
    positives: int
    rows: list[Row]
    rejections: dict[str, dict[str, Any]]
    rejections_at: float
    effect: GuardEffect
    target_precision: float
    target: dict[str, dict[str, float] | None]
    curve: dict[str, list[tuple[float, float, float | None]]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format(self) -> str:
        """The report as the command line prints it (markdown tables)."""
        pct = _pct
        lines = [
            f"{self.pairs} pairs, {self.positives} labelled same answer",
            "",
            "| threshold | hits | precision | recall | hits + guard | precision + guard "
            "| recall + guard | plain precision at that recall |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.threshold:.2f} | {r.hits} | {pct(r.precision)} | {pct(r.recall)} "
                f"| {r.guard_hits} | {pct(r.guard_precision)} | {pct(r.guard_recall)} "
                f"| {pct(r.plain_precision_at_guard_recall)} |"
            )
        e = self.effect
        lines += [
            "",
            f"The guard at threshold {e.threshold:.2f}: recall {pct(e.recall)} -> "
            f"{pct(e.guard_recall)}, a cost of {e.recall_cost:.1f} points.",
        ]
        if e.precision_gain is None or e.plain_threshold is None:
            lines.append("At equal recall: no plain threshold to compare with.")
        else:
            lines.append(
                f"At equal recall: precision {pct(e.guard_precision)} with the guard against "
                f"{pct(e.plain_precision)} for a plain threshold of {e.plain_threshold:.4f} "
                f"({e.precision_gain:+.1f} points)."
            )
        lines += ["", f"Target precision {self.target_precision:.1%}:"]
        for name, label in (("plain", "plain threshold"), ("guard", "threshold + guard")):
            t = self.target[name]
            if t is None:
                lines.append(f"- {label}: no threshold reaches it")
            else:
                lines.append(
                    f"- {label}: {t['threshold']:.2f} (precision {t['precision']:.1%}, "
                    f"recall {t['recall']:.1%})"
                )
        lines += [
            "",
            f"Guard rejections at threshold {self.rejections_at:.2f} "
            "(pairs the plain threshold would answer):",
        ]
        if not self.rejections:
            lines.append("- none")
        for reason, info in sorted(self.rejections.items(), key=lambda kv: -kv[1]["count"]):
            lines.append(
                f"- {reason}: {info['count']} ({info['wrong']} of them labelled same answer, "
                "rejected wrongly)"
            )
            for ex in info["examples"]:
                mark = "same" if ex["same_answer"] else "different"
                lines.append(f"    - [{mark}] {ex['prompt_a']!r} / {ex['prompt_b']!r}")
        return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


# ---- input -----------------------------------------------------------------------


def _label(raw: str, where: str) -> bool:
    value = raw.strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ValueError(
        f"{where}: same_answer must be one of {sorted(TRUE_WORDS | FALSE_WORDS)}, got {raw!r}"
    )


def read_pairs(path: str | Path) -> list[Pair]:
    """Pairs from a CSV file.

    With a header row, the columns ``prompt_a``, ``prompt_b`` and
    ``same_answer`` are used wherever they are; without one, each row is
    ``prompt_a,prompt_b,same_answer`` or ``id,prompt_a,prompt_b,same_answer``
    (quote prompts that hold commas). Labels are 1/0, true/false, yes/no or
    same/different; prompts must not be empty.
    """
    p = Path(path)
    try:
        # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte order mark
        with p.open(newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except OSError as exc:
        raise ValueError(f"cannot read the pairs file {str(p)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"the pairs file {str(p)!r} is not UTF-8 text: {exc}") from None
    if not rows:
        raise ValueError(f"the pairs file {str(p)!r} holds no pairs")
    header = [c.strip().lower() for c in rows[0]]
    named = {"prompt_a", "prompt_b", "same_answer"} <= set(header)
    if named:
        ia, ib, il = (header.index(n) for n in ("prompt_a", "prompt_b", "same_answer"))
        rows = rows[1:]
    pairs = []
    for n, row in enumerate(rows, start=2 if named else 1):
        where = f"{p.name} line {n}"
        if not named:
            if len(row) not in (3, 4):
                raise ValueError(
                    f"{where}: expected prompt_a,prompt_b,same_answer (or id first), got "
                    f"{len(row)} columns; quote prompts that hold commas"
                )
            ia, ib, il = len(row) - 3, len(row) - 2, len(row) - 1
        elif len(row) <= max(ia, ib, il):
            raise ValueError(f"{where}: expected {len(header)} columns, got {len(row)}")
        if not row[ia].strip() or not row[ib].strip():
            raise ValueError(f"{where}: a prompt is empty")
        pairs.append(Pair(row[ia], row[ib], _label(row[il], where)))
    if not pairs:
        raise ValueError(f"the pairs file {str(p)!r} holds a header and no pairs")
    return pairs


def embedder_from_spec(spec: str, url: str | None = None) -> Embed:
    """``hashing`` or ``hashing:DIM`` (built in), ``sentence-transformers:MODEL``,
    or ``openai:MODEL`` at the OpenAI-compatible base ``url`` (the gateway's)."""
    name, _, arg = spec.partition(":")
    if name == "openai" and arg:
        if not url:
            raise ValueError("--embedder openai:MODEL needs --embedder-url (an http(s) base URL)")
        from llmedge.embedders import OpenAIEmbedder

        return OpenAIEmbedder(url, arg, api_key=os.environ.get("OPENAI_API_KEY"))
    if name == "hashing":
        try:
            dim = int(arg) if arg else 384
        except ValueError:
            raise ValueError(f"hashing:DIM needs an integer dimension, got {arg!r}") from None
        return HashingEmbedder(dim)
    if name == "sentence-transformers" and arg:
        from llmedge.embedders import SentenceTransformerEmbedder

        try:
            model = SentenceTransformerEmbedder(arg)
        except ImportError as exc:
            raise ValueError(f"--embedder {spec}: {exc}") from None
        return lambda texts: model(list(texts)).tolist()
    raise ValueError(
        "--embedder must be hashing, hashing:DIM, sentence-transformers:MODEL or "
        f"openai:MODEL, got {spec!r}"
    )


def precomputed_embedder(vectors: str | Path, texts: str | Path) -> Embed:
    """Vectors computed elsewhere: a ``.npy`` matrix with one row per text of a JSON list."""
    try:
        import numpy as np
    except ImportError:
        raise ValueError("--vectors needs numpy: pip install 'llmedge[numpy]'") from None
    try:
        names = json.loads(Path(texts).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read --texts {str(texts)!r}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--texts {str(texts)!r} is not JSON: {exc}") from None
    if not isinstance(names, list) or not all(isinstance(t, str) for t in names):
        raise ValueError(f"{texts}: expected a JSON list of strings")
    try:
        matrix = np.load(vectors, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read --vectors {str(vectors)!r} as a matrix: {exc}") from None
    if matrix.ndim != 2 or matrix.shape[0] != len(names):
        raise ValueError(
            f"{vectors}: expected a matrix with one row per text ({len(names)} rows), "
            f"got shape {matrix.shape}"
        )
    index = {t: i for i, t in enumerate(names)}

    def embed(batch: Sequence[str]) -> list[list[float]]:
        missing = [t for t in batch if t not in index]
        if missing:
            raise ValueError(f"{texts} has no vector for {missing[0]!r}")
        return [matrix[index[t]].tolist() for t in batch]

    return embed


# ---- evaluation ------------------------------------------------------------------


def _cosine(x: Sequence[float], y: Sequence[float]) -> float:
    dot = math.fsum(a * b for a, b in zip(x, y, strict=True))
    nx = math.sqrt(math.fsum(a * a for a in x))
    ny = math.sqrt(math.fsum(b * b for b in y))
    return dot / (nx * ny) if nx and ny else 0.0


def cosines(pairs: Sequence[Pair], embed: Embed, *, batch: int = 256) -> list[float]:
    """The cosine similarity of each pair's two prompts."""
    texts = sorted({t for p in pairs for t in (p.prompt_a, p.prompt_b)})
    vectors: dict[str, Sequence[float]] = {}
    for i in range(0, len(texts), batch):
        chunk = texts[i : i + batch]
        out = embed(chunk)
        if len(out) != len(chunk):
            raise ValueError(f"the embedder returned {len(out)} vectors for {len(chunk)} texts")
        vectors.update(zip(chunk, out, strict=True))
    return [_cosine(vectors[p.prompt_a], vectors[p.prompt_b]) for p in pairs]


def _precision_recall(
    hit: Iterable[bool], labels: Sequence[bool], positives: int
) -> tuple[int, float | None, float]:
    tp = predicted = 0
    for h, same in zip(hit, labels, strict=True):
        if h:
            predicted += 1
            tp += same
    precision = tp / predicted if predicted else None
    return predicted, precision, (tp / positives if positives else 0.0)


def evaluate(
    pairs: Sequence[Pair],
    *,
    embed: Embed | None = None,
    similarities: Sequence[float] | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    target_precision: float = 0.95,
    rejections_at: float = 0.85,
    examples: int = 3,
) -> Report:
    """Precision and recall per threshold, plain and with the guard.

    ``similarities`` (one cosine per pair) skips the embedding; otherwise
    ``embed`` (default: ``HashingEmbedder(384)``) embeds every distinct prompt.
    """
    if not pairs:
        raise ValueError("evaluate needs at least one pair")
    for name, value in (("target_precision", target_precision), ("rejections_at", rejections_at)):
        if not (isinstance(value, (int, float)) and 0.0 < value <= 1.0):
            raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    bad = [t for t in thresholds if not (isinstance(t, (int, float)) and -1.0 <= t <= 1.0)]
    if not thresholds or bad:
        raise ValueError(f"thresholds must be numbers in [-1, 1], got {list(thresholds)!r}")
    if similarities is None:
        sims = cosines(pairs, embed or HashingEmbedder(384))
    else:
        sims = [float(s) for s in similarities]
        if len(sims) != len(pairs):
            raise ValueError(f"{len(sims)} similarities for {len(pairs)} pairs")
    labels = [p.same_answer for p in pairs]
    positives = sum(labels)
    # the cache hands the guard its lookup's cosine: so does the evaluation
    reasons = [
        guard_check(p.prompt_a, p.prompt_b, max(-1.0, min(1.0, s)))
        for p, s in zip(pairs, sims, strict=True)
    ]

    # a fine grid for the target and the curves; the printed rows use `thresholds`
    grid = sorted({round(0.3 + i / 100, 2) for i in range(70)} | {float(t) for t in thresholds})
    curve: dict[str, list[tuple[float, float, float | None]]] = {"plain": [], "guard": []}
    for t in grid:
        _, p0, r0 = _precision_recall((s >= t for s in sims), labels, positives)
        hits = (s >= t and r is None for s, r in zip(sims, reasons, strict=True))
        _, p1, r1 = _precision_recall(hits, labels, positives)
        curve["plain"].append((t, r0, p0))
        curve["guard"].append((t, r1, p1))

    rows = []
    for t in sorted(float(x) for x in thresholds):
        h0, p0, r0 = _precision_recall((s >= t for s in sims), labels, positives)
        hits = (s >= t and r is None for s, r in zip(sims, reasons, strict=True))
        h1, p1, r1 = _precision_recall(hits, labels, positives)
        rows.append(Row(t, h0, p0, r0, h1, p1, r1, _plain_at_recall(sims, labels, r1)[1]))

    target: dict[str, dict[str, float] | None] = {}
    for name in ("plain", "guard"):
        target[name] = next(
            (
                {"threshold": t, "precision": p, "recall": r}
                for t, r, p in curve[name]
                if p is not None and p >= target_precision
            ),
            None,
        )

    rejections: dict[str, dict[str, Any]] = {}
    for pair, s, reason in zip(pairs, sims, reasons, strict=True):
        if reason is None or s < rejections_at:
            continue
        info = rejections.setdefault(reason, {"count": 0, "wrong": 0, "examples": []})
        info["count"] += 1
        info["wrong"] += pair.same_answer
        if len(info["examples"]) < examples:
            info["examples"].append(dataclasses.asdict(pair) | {"similarity": round(s, 4)})
    return Report(
        pairs=len(pairs),
        positives=positives,
        rows=rows,
        rejections=rejections,
        rejections_at=rejections_at,
        effect=_effect(sims, labels, reasons, rejections_at),
        target_precision=target_precision,
        target=target,
        curve=curve,
    )


def _plain_at_recall(
    sims: Sequence[float], labels: Sequence[bool], recall: float
) -> tuple[float | None, float | None]:
    """The highest plain threshold whose recall reaches `recall`, and its precision.

    Exact, not on a grid: the threshold is the similarity of the k-th most
    similar pair labelled same answer, k the fewest such pairs that reach `recall`.
    """
    positives = sorted((s for s, same in zip(sims, labels, strict=True) if same), reverse=True)
    if not positives:
        return None, None
    k = max(1, math.ceil(recall * len(positives) - 1e-9))
    if k > len(positives):
        return None, None
    t = positives[k - 1]
    _, precision, _ = _precision_recall((s >= t for s in sims), labels, len(positives))
    return t, precision


def _effect(
    sims: Sequence[float], labels: Sequence[bool], reasons: Sequence[str | None], at: float
) -> GuardEffect:
    positives = sum(labels)
    _, _, r0 = _precision_recall((s >= at for s in sims), labels, positives)
    hits = (s >= at and r is None for s, r in zip(sims, reasons, strict=True))
    _, p1, r1 = _precision_recall(hits, labels, positives)
    t, p0 = _plain_at_recall(sims, labels, r1)
    gain = None if p1 is None or p0 is None else 100 * (p1 - p0)
    return GuardEffect(at, r0, r1, 100 * (r0 - r1), p1, t, p0, gain)


def plot(report: Report, path: str | Path) -> None:
    """The precision-recall curves, plain and with the guard, as an image file."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'llmedge[plot]'") from None
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, label in (("plain", "threshold"), ("guard", "threshold + guard")):
        pts = [(r, p) for _, r, p in report.curve[name] if p is not None]
        ax.plot([r for r, _ in pts], [p for _, p in pts], label=label)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"{report.pairs} pairs")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---- command line -----------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", required=True, metavar="CSV", help="prompt_a,prompt_b,same_answer")
    p.add_argument(
        "--embedder",
        default="hashing",
        help="hashing (default), hashing:DIM, sentence-transformers:MODEL or openai:MODEL",
    )
    p.add_argument("--embedder-url", metavar="URL", help="base URL of openai:MODEL (/v1)")
    p.add_argument("--vectors", metavar="NPY", help="precomputed vectors, one row per text")
    p.add_argument("--texts", metavar="JSON", help="the texts of --vectors' rows (a JSON list)")
    p.add_argument(
        "--thresholds",
        default=",".join(f"{t:g}" for t in DEFAULT_THRESHOLDS),
        help="comma-separated similarity thresholds to print",
    )
    p.add_argument("--target-precision", type=float, default=0.95, help="(0.95)")
    p.add_argument("--at", type=float, default=0.85, help="threshold of the rejection list")
    p.add_argument("--examples", type=int, default=3, help="examples per rejection reason (3)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--plot", metavar="PNG", help="draw the precision-recall curves")


def _error(message: str) -> int:
    print(f"llmedge cache-eval: {message}", file=sys.stderr)
    return 2


def main(args: argparse.Namespace) -> int:
    try:
        thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
    except ValueError:
        return _error(f"--thresholds must be comma-separated numbers, got {args.thresholds!r}")
    try:
        pairs = read_pairs(args.pairs)
        if bool(args.vectors) != bool(args.texts):
            raise ValueError("--vectors and --texts go together")
        embed = (
            precomputed_embedder(args.vectors, args.texts)
            if args.vectors
            else embedder_from_spec(args.embedder, args.embedder_url)
        )
        report = evaluate(
            pairs,
            embed=embed,
            thresholds=thresholds,
            target_precision=args.target_precision,
            rejections_at=args.at,
            examples=args.examples,
        )
    except ValueError as exc:
        return _error(str(exc))
    except Exception as exc:  # the embedder's own failure (a network error, ...)
        return _error(f"the embedder failed: {type(exc).__name__}: {exc}")
    print(report.format())
    try:
        if args.json:
            Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        if args.plot:
            plot(report, args.plot)
    except (OSError, ValueError) as exc:
        return _error(str(exc))
    return 0

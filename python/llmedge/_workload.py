"""The demo's workload, shared with the load tests (``loadtest/traffic.py``).

* the request mix: questions drawn as new questions, exact repeats and
  paraphrases in configurable proportions, deterministic for a seed, from a
  small built-in prompt set or from evaluation data (``prompts.csv`` and the
  positive paraphrase pairs of ``mqp.csv``) in a directory given explicitly;
* latency summaries (percentiles, rates, cache hits by kind);
* a ``/health`` poller that records the breakers' transitions.

Pure Python and standard library only (httpx is imported where it is used).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("new", "exact", "paraphrase")

#: The built-in prompt set (the demo uses it unless given a data directory):
#: questions a chat backend sees, and paraphrase pairs (same question, other words).
BUILTIN_QUESTIONS: tuple[str, ...] = (
    "How do I reset my password?",
    "What is the difference between a list and a tuple in Python?",
    "Explain what a circuit breaker does in a microservice.",
    "How many tokens does a typical English word use?",
    "What is the capital of Australia?",
    "Write a haiku about autumn leaves.",
    "How do I undo the last git commit but keep my changes?",
    "What are the symptoms of dehydration?",
    "Summarise the plot of Hamlet in three sentences.",
    "How do I convert a string to an integer in JavaScript?",
    "What is a good stretching routine for lower back pain?",
    "Why is the sky blue?",
    "How does HTTPS keep my data private?",
    "Give me three ideas for a vegetarian dinner.",
    "What does the Retry-After header mean?",
    "How long should I boil an egg for a soft yolk?",
    "What is the time complexity of binary search?",
    "Translate 'good morning' into Spanish, French and German.",
    "How can I improve my sleep quality?",
    "What is the difference between TCP and UDP?",
    "Explain recursion to a ten-year-old.",
    "What should I pack for a weekend hiking trip?",
    "How do vaccines train the immune system?",
    "What is a semantic cache for language models?",
)

BUILTIN_PAIRS: tuple[tuple[str, str], ...] = (
    (
        "How much water should I drink every day?",
        "What is the recommended daily amount of water to drink?",
    ),
    (
        "Can I take ibuprofen together with paracetamol?",
        "Is it safe to combine paracetamol and ibuprofen?",
    ),
    ("How do I make a cup of green tea?", "What is the right way to brew green tea?"),
    (
        "What is the best way to learn a new language?",
        "How should I go about learning a new language?",
    ),
    ("How do I center a div in CSS?", "What is the CSS to center a div?"),
    (
        "Why does my laptop battery drain so fast?",
        "What makes my laptop battery run out so quickly?",
    ),
    (
        "How do I sort a dictionary by value in Python?",
        "In Python, how can I sort a dict by its values?",
    ),
    ("What causes headaches after waking up?", "Why do I wake up with a headache?"),
    (
        "How often should I change my car's oil?",
        "How frequently does a car need an oil change?",
    ),
    (
        "What is the difference between weather and climate?",
        "How do weather and climate differ?",
    ),
    (
        "How can I lower my blood pressure naturally?",
        "What are natural ways to reduce blood pressure?",
    ),
    ("Is coffee bad for my heart?", "Does drinking coffee harm the heart?"),
)

#: Realistic defaults: most questions are new, a quarter repeat a question asked
#: before word for word (FAQ-like traffic), some ask it again in other words.
DEFAULT_MIX: dict[str, float] = {"new": 0.6, "exact": 0.25, "paraphrase": 0.15}


@dataclass(frozen=True)
class Corpus:
    """Questions to draw from: ``questions`` for new traffic, ``pairs`` of paraphrases."""

    questions: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    source: str

    def describe(self) -> str:
        return (
            f"{len(self.questions)} questions, {len(self.pairs)} paraphrase pairs ({self.source})"
        )


def builtin_corpus() -> Corpus:
    return Corpus(BUILTIN_QUESTIONS, BUILTIN_PAIRS, "built-in prompt set")


def load_corpus(
    directory: str | os.PathLike[str] | None = None, *, max_chars: int = 2000
) -> Corpus:
    """Real prompts from ``directory/prompts.csv`` and positive pairs from
    ``directory/mqp.csv``; the built-in prompt set when ``directory`` is None.

    Prompts longer than ``max_chars`` are left out (a chat question, not a
    document). A directory without both files, or whose files hold no usable
    row, raises FileNotFoundError naming what is missing.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars!r}")
    if directory is None:
        return builtin_corpus()
    root = Path(directory)
    prompts, mqp = root / "prompts.csv", root / "mqp.csv"
    missing = [p.name for p in (prompts, mqp) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"evaluation data directory {str(root)!r} lacks {' and '.join(missing)} "
            "(prompts.csv with a 'prompt' column; mqp.csv rows id,question,question,label)"
        )
    questions: list[str] = []
    with prompts.open(newline="", encoding="utf-8") as f:
        for prompt_row in csv.DictReader(f):
            text = (prompt_row.get("prompt") or "").strip()
            if text and len(text) <= max_chars:
                questions.append(text)
    pairs: list[tuple[str, str]] = []
    with mqp.open(newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            if len(row) == 4 and row[3].strip() == "1":
                a, b = row[1].strip(), row[2].strip()
                if a and b and a != b:
                    pairs.append((a, b))
    if not questions or not pairs:
        raise FileNotFoundError(
            f"no usable rows in {str(root)!r}: {len(questions)} prompts of at most "
            f"{max_chars} characters, {len(pairs)} positive paraphrase pairs"
        )
    return Corpus(
        tuple(questions),
        tuple(pairs),
        f"{prompts.name} ({len(questions)} prompts <= {max_chars} chars) and "
        f"{mqp.name} ({len(pairs)} positive pairs) from {root}",
    )


def normalise_mix(mix: Mapping[str, float]) -> dict[str, float]:
    for name, weight in mix.items():
        if name not in KINDS:
            raise ValueError(f"unknown request kind {name!r}; accepted: {', '.join(KINDS)}")
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight of {name!r} must be a finite number >= 0, got {weight!r}")
    total = sum(mix.values())
    if total <= 0 or mix.get("new", 0) <= 0:
        raise ValueError(
            f"mix {dict(mix)!r} needs a positive weight for 'new' (repeats and "
            "paraphrases need questions asked before)"
        )
    return {k: float(mix.get(k, 0.0)) / total for k in KINDS}


@dataclass(frozen=True)
class ChatRequest:
    """One request of the mix: the question, its kind and whether to stream it."""

    question: str
    kind: str
    stream: bool

    def body(self) -> dict[str, Any]:
        return {"question": self.question, "history": [], "stream": self.stream}


def generate_requests(
    corpus: Corpus,
    n: int,
    *,
    mix: Mapping[str, float] | None = None,
    stream_fraction: float = 0.5,
    seed: int = 0,
) -> list[ChatRequest]:
    """A deterministic sequence of ``n`` requests drawn from ``corpus``.

    * ``new``: a question not asked before in this sequence (half from the
      prompts, half the first question of a paraphrase pair, so that later
      paraphrases have something to match); once every question was asked,
      new draws repeat the oldest ones.
    * ``exact``: a question asked before, word for word.
    * ``paraphrase``: the second question of a pair whose first was asked
      before (a ``new`` question when no pair was opened yet).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    if not 0.0 <= stream_fraction <= 1.0:
        raise ValueError(f"stream_fraction must be in [0, 1], got {stream_fraction!r}")
    weights = normalise_mix(DEFAULT_MIX if mix is None else mix)
    rng = random.Random(seed)
    questions = list(corpus.questions)
    pairs = list(corpus.pairs)
    rng.shuffle(questions)
    rng.shuffle(pairs)
    q_next = p_next = 0
    asked: list[str] = []
    opened: list[int] = []  # indexes into pairs whose first question was asked
    kinds = list(weights)
    kind_weights = [weights[k] for k in kinds]
    out: list[ChatRequest] = []
    for i in range(n):
        kind = rng.choices(kinds, weights=kind_weights)[0]
        stream = rng.random() < stream_fraction
        if kind == "exact" and asked:
            out.append(ChatRequest(rng.choice(asked), "exact", stream))
            continue
        if kind == "paraphrase" and opened:
            out.append(ChatRequest(pairs[rng.choice(opened)][1], "paraphrase", stream))
            continue
        # a new question: alternate prompts and pair openers while both last
        use_pair = p_next < len(pairs) and (q_next >= len(questions) or rng.random() < 0.5)
        if use_pair:
            text = pairs[p_next][0]
            opened.append(p_next)
            p_next += 1
        elif q_next < len(questions):
            text = questions[q_next]
            q_next += 1
        else:
            text = asked[i % len(asked)]  # corpus exhausted: cycle
        asked.append(text)
        out.append(ChatRequest(text, "new", stream))
    return out


#: A stream's error as the load generators record it: the answer did not finish
#: (no ``data: [DONE]``, an error event or a malformed one; see llmedge.sse).
INCOMPLETE_STREAM = "stream ended without [DONE]"


def sse_content(event: Any) -> tuple[str, str | None]:
    """(text, cached kind) of one SSE data payload: the service's text events
    (``{"content": ...}``, ``{"done": true, "cached": ...}``) or OpenAI chunks."""
    if not isinstance(event, dict):
        return "", None
    cached = event.get("cached") if isinstance(event.get("cached"), str) else None
    text = ""
    choices = event.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta") or choices[0].get("message") or {}
        if isinstance(delta, dict):
            text = delta.get("content") or ""
    for key in ("content", "delta", "text", "token", "answer"):
        if not text and isinstance(event.get(key), str):
            text = event[key]
    return text, cached


# --------------------------------------------------------------------- summaries


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None when empty."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q!r}")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class Record:
    """One request as the load generator saw it (times in seconds since the epoch / ms)."""

    t: float
    user: str
    kind: str
    stream: bool
    status: int
    latency_ms: float
    ttft_ms: float | None = None
    cached: str | None = None
    error: str | None = None
    retry_after: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Record:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _round(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


def summarize(records: Sequence[Record], duration_s: float | None = None) -> dict[str, Any]:
    """Latency percentiles, rate, TTFT of streams, cache hits by kind, errors."""
    n = len(records)
    if duration_s is None:
        if n:
            start = min(r.t for r in records)
            end = max(r.t + r.latency_ms / 1000 for r in records)
            duration_s = max(end - start, 1e-9)
        else:
            duration_s = 0.0
    ok = [r for r in records if 200 <= r.status < 300 and r.error is None]
    lat = [r.latency_ms for r in ok]
    ttft = [r.ttft_ms for r in ok if r.stream and r.ttft_ms is not None]
    cached = Counter((r.cached or "none") for r in ok)
    by_kind: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        rows = [r for r in ok if r.kind == kind]
        if rows:
            hits = Counter((r.cached or "none") for r in rows)
            by_kind[kind] = {
                "requests": len(rows),
                "exact_hits": hits.get("exact", 0),
                "semantic_hits": hits.get("semantic", 0),
                "hit_rate": round((len(rows) - hits.get("none", 0)) / len(rows), 4),
            }
    statuses = Counter(str(r.status) for r in records)
    errors = Counter(r.error or f"HTTP {r.status}" for r in records if r not in ok)
    return {
        "requests": n,
        "ok": len(ok),
        "duration_s": round(duration_s, 2),
        "rps": round(n / duration_s, 1) if duration_s else 0.0,
        "ok_rps": round(len(ok) / duration_s, 1) if duration_s else 0.0,
        "latency_ms": {
            "p50": _round(percentile(lat, 50)),
            "p95": _round(percentile(lat, 95)),
            "p99": _round(percentile(lat, 99)),
            "max": _round(max(lat) if lat else None),
            "mean": _round(sum(lat) / len(lat) if lat else None),
        },
        "ttft_ms": {
            "streams": len(ttft),
            "p50": _round(percentile(ttft, 50)),
            "p95": _round(percentile(ttft, 95)),
            "p99": _round(percentile(ttft, 99)),
        },
        "cache": {
            "exact": cached.get("exact", 0),
            "semantic": cached.get("semantic", 0),
            "miss": cached.get("none", 0),
            "hit_rate": round((len(ok) - cached.get("none", 0)) / len(ok), 4) if ok else 0.0,
            "by_request_kind": by_kind,
        },
        "status": dict(sorted(statuses.items())),
        "errors": dict(errors.most_common()),
        "error_rate": round((n - len(ok)) / n, 4) if n else 0.0,
    }


def still_running(started: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Which of the started processes (``{"pid"}`` or ``{"pgid"}`` entries) are alive."""
    alive = []
    for entry in started:
        try:
            if "pgid" in entry:
                os.killpg(int(entry["pgid"]), 0)
            else:
                os.kill(int(entry["pid"]), 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        alive.append(dict(entry))
    return alive


# --------------------------------------------------------------------- /health


def breaker_states(health: Mapping[str, Any]) -> dict[str, str]:
    """``{breaker name: state}`` from a /health body (a list or a mapping of breakers)."""
    raw = health.get("breakers")
    out: dict[str, str] = {}
    if isinstance(raw, Mapping):
        for name, info in raw.items():
            state = info.get("state") if isinstance(info, Mapping) else info
            out[str(name)] = str(state)
    elif isinstance(raw, list):
        for i, info in enumerate(raw):
            if isinstance(info, Mapping):
                out[str(info.get("name", i))] = str(info.get("state"))
    return out


def role_of(breaker: str, roles: Mapping[str, str]) -> str:
    """A breaker's name with an upstream URL replaced by its role (``{url: role}``)."""
    for url, role in roles.items():
        if url in breaker:
            return role
    return breaker


def worker_id(health: Mapping[str, Any]) -> str:
    """Which server process answered (each gunicorn worker has its own breakers)."""
    for key in ("pid", "worker", "worker_pid"):
        if health.get(key) is not None:
            return str(health[key])
    for section in ("process", "memory"):
        info = health.get(section)
        if isinstance(info, Mapping) and info.get("pid") is not None:
            return str(info["pid"])
    return "service"


class HealthMonitor:
    """Polls ``GET /health`` in a thread and records breaker states over time.

    ``transitions()`` lists every change of a breaker's state as seen by one
    worker: ``{"t", "worker", "breaker", "from", "to"}``.
    """

    def __init__(self, base_url: str, *, interval: float = 0.25, clock: Any = time.time) -> None:
        import threading

        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        self.url = base_url.rstrip("/") + "/health"
        self.interval = interval
        self._clock = clock
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-monitor", daemon=True)

    def start(self) -> HealthMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def __enter__(self) -> HealthMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=2.0) as client:
            while not self._stop.is_set():
                try:
                    r = client.get(self.url)
                    body = r.json()
                    if isinstance(body, dict):
                        self.add(body, r.status_code)
                except (httpx.HTTPError, ValueError):
                    pass
                self._stop.wait(self.interval)

    def add(self, body: Mapping[str, Any], http_status: int = 200) -> None:
        self.samples.append(
            {
                "t": self._clock(),
                "worker": worker_id(body),
                "http": http_status,
                "status": body.get("status"),
                "breakers": breaker_states(body),
                "cache": body.get("cache"),
            }
        )

    def transitions(self) -> list[dict[str, Any]]:
        last: dict[tuple[str, str], str] = {}
        out = []
        for s in self.samples:
            for name, state in s["breakers"].items():
                key = (s["worker"], name)
                before = last.get(key)
                if before is not None and before != state:
                    out.append(
                        {"t": s["t"], "worker": s["worker"], "breaker": name,
                         "from": before, "to": state}
                    )  # fmt: skip
                last[key] = state
        return out

    def states_seen(self, since: float = 0.0, until: float = math.inf) -> dict[str, list[str]]:
        """Per breaker, the distinct states seen in [since, until), in order of first sight."""
        seen: dict[str, list[str]] = {}
        for s in self.samples:
            if since <= s["t"] < until:
                for name, state in s["breakers"].items():
                    states = seen.setdefault(name, [])
                    if state not in states:
                        states.append(state)
        return seen

    def last_states(self) -> dict[str, dict[str, str]]:
        """The latest sample's breaker states, per worker."""
        out: dict[str, dict[str, str]] = {}
        for s in self.samples:
            out[s["worker"]] = s["breakers"]
        return out

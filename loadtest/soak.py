"""Soak test of the gateway: steady load with churn for a long time (not in CI).

    python loadtest/soak.py [--minutes 30] [--rate 20] [--backend llmedge|baseline]
                            [--out DIR]

Starts two mock LLM upstreams (``spawn_mock``) and the gateway under uvicorn
(one process, so its RSS, file descriptors and threads are read from
``/proc``), then sends ``--rate`` requests per second for ``--minutes`` with
churn everywhere state accumulates:

* new prompts (real prompts from the data directory, 60 % never asked, the
  rest exact repeats and paraphrases), a cache small enough to evict
  (``--cache-entries``) and a short TTL (``--cache-ttl``) so entries expire;
  the temperature moves every ``--shift-every`` requests, so the cache
  partitions change and misses go on after the corpus was asked once;
* new users: every request carries the API key of one of ``--active-users``
  users drawn from a window that slides by ``--new-users`` keys per second
  (the limiter keeps seeing new keys and forgetting old ones), plus a greedy
  key far above its limit (429s);
* breaker trips: every ``--trip-every`` seconds the primary upstream fails
  everything for ``--trip-seconds`` (503, or 429 with ``Retry-After`` every
  other time), so its breaker opens, probes and closes again;
* clients that leave mid-stream (``--abandon`` of the streams), and a share
  of OpenAI-format requests (``/v1/chat/completions``).

Every ``--sample`` seconds it records the gateway's RSS, open file
descriptors, threads, cache entries, evictions and expirations, the
upstreams' open streams, and the latency of the requests that ended since
the last sample. ``report.json`` and ``soak.md`` (a table per minute and the
verdict: growth of RSS and descriptors after the warm-up, latency drift
between the first and the last quarter after it) go to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if importlib.util.find_spec("llmedge") is None:  # a source checkout without an install
    sys.path.insert(0, str(HERE.parent / "python"))
if str(HERE) not in sys.path:  # loaded by path (the tests) rather than run as a script
    sys.path.insert(0, str(HERE))

import traffic as tr  # noqa: E402

from llmedge.testing import spawn_mock  # noqa: E402

#: Growth of RSS and open descriptors after the warm-up that still counts as flat.
FLAT = 0.05


def proc_stats(pid: int) -> dict[str, int]:
    """RSS (bytes), threads and open file descriptors of a Linux process."""
    rss = threads = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return {"rss_bytes": rss, "threads": threads, "fds": fds}


class Load:
    """The load generator: paced requests from workers, recorded as they end."""

    def __init__(self, args: argparse.Namespace, url: str, requests: list[tr.ChatRequest]):
        self.args = args
        self.url = url
        self.requests = requests
        self.records: list[dict[str, Any]] = []
        self.rng = random.Random(args.seed)
        self.next = 0
        self.started = 0.0

    def temperature(self, k: int) -> float:
        """Moves every ``--shift-every`` requests: every cache partition
        changes, so misses, inserts and evictions go on once the corpus has
        been asked (old partitions empty out by eviction and expiry)."""
        return (k // self.args.shift_every) % 21 / 10

    def _user(self, now: float) -> str:
        if self.rng.random() < self.args.greedy:
            return "greedy"
        first = int((now - self.started) * self.args.new_users)
        return f"user-{first + self.rng.randrange(self.args.active_users)}"

    async def run(self, until: float) -> None:
        import httpx

        limits = httpx.Limits(max_connections=self.args.concurrency)
        async with httpx.AsyncClient(
            base_url=self.url, timeout=30.0, limits=limits, trust_env=False
        ) as client:
            self.started = time.monotonic()
            workers = [self._worker(client, until) for _ in range(self.args.concurrency)]
            await asyncio.gather(*workers)

    async def _worker(self, client: Any, until: float) -> None:
        while True:
            k = self.next
            self.next += 1
            due = self.started + k / self.args.rate
            if due >= until:
                return
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await self._one(client, self.requests[k % len(self.requests)], k)

    async def _one(self, client: Any, req: tr.ChatRequest, k: int) -> None:
        import httpx

        a = self.args
        openai = self.rng.random() < a.openai
        abandon = req.stream and self.rng.random() < a.abandon
        if openai:
            path = "/v1/chat/completions"
            body: dict[str, Any] = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": req.question}],
                "stream": req.stream,
                "temperature": self.temperature(k),
            }
        else:
            path, body = "/chat", {**req.body(), "temperature": self.temperature(k)}
        headers = {"Authorization": f"Bearer {self._user(time.monotonic())}"}
        start = time.monotonic()
        status, cached, error = 0, None, None
        try:
            async with client.stream("POST", path, json=body, headers=headers) as r:
                status, cached = r.status_code, r.headers.get("x-llmedge-cache")
                async for _ in r.aiter_bytes():
                    if abandon:
                        break  # the client leaves: the connection is closed
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        end = time.monotonic()
        self.records.append(
            {
                "t": end,
                "ms": (end - start) * 1000,
                "status": status,
                "error": error,
                "kind": req.kind,
                "cached": cached,
                "abandoned": abandon,
            }
        )


async def trip_breakers(args: argparse.Namespace, primary: Any, until: float) -> list[dict]:
    """Every ``trip_every`` s the primary fails everything for ``trip_seconds``."""
    trips = []
    n = 0
    while time.monotonic() + args.trip_every < until:
        await asyncio.sleep(args.trip_every)
        n += 1
        faults = (
            {"fail_all": True, "status": 429, "retry_after": 2.0}
            if n % 2 == 0
            else {"fail_all": True, "status": 503}
        )
        await asyncio.to_thread(primary.set_faults, **faults)
        trips.append({"t": time.monotonic(), "status": faults["status"]})
        await asyncio.sleep(args.trip_seconds)
        await asyncio.to_thread(primary.clear_faults)
    return trips


async def sample(
    args: argparse.Namespace, pid: int, url: str, mocks: Sequence[Any], load: Load, until: float
) -> list[dict[str, Any]]:
    import httpx

    samples = []
    seen = 0
    begin = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=10.0, trust_env=False) as client:
        while True:
            now = time.monotonic()
            row: dict[str, Any] = {"t": round(now - begin, 1), **proc_stats(pid)}
            try:
                health = (await client.get("/health")).json()
                cache = health["caches"]["chat"]
                row.update(
                    cache_entries=cache.get("entries"),
                    evictions=cache.get("evictions"),
                    expirations=cache.get("expirations"),
                    breakers={k: v["state"] for k, v in health["breakers"].items()},
                )
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                row["health_error"] = repr(exc)
            stats = await asyncio.gather(*(asyncio.to_thread(m.stats) for m in mocks))
            row["upstream_open_streams"] = sum(s["open_streams"] for s in stats)
            window = load.records[seen:]
            seen += len(window)
            row.update(window_stats(window))
            samples.append(row)
            if now >= until:
                return samples
            await asyncio.sleep(min(args.sample, max(0.0, until - now)))


def _get(url: str) -> str:
    import httpx

    return httpx.get(url, timeout=10.0, trust_env=False).text


def window_stats(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ok = [r["ms"] for r in records if r["status"] == 200 and r["error"] is None]
    statuses = Counter(r["status"] for r in records)
    return {
        "requests": len(records),
        "p50_ms": tr.percentile(ok, 50),
        "p99_ms": tr.percentile(ok, 99),
        "http_429": statuses.get(429, 0),
        "http_5xx": sum(n for s, n in statuses.items() if s >= 500),
        "transport_errors": sum(1 for r in records if r["error"] is not None),
        "hits": sum(1 for r in records if r["cached"] in ("exact", "semantic")),
    }


def growth(values: Sequence[float]) -> float | None:
    """Relative growth from the first to the last quarter of ``values``
    (the medians of each: a burst of connections in one sample is not a
    trend)."""
    if len(values) < 2:
        return None
    k = max(1, len(values) // 4)
    first, last = statistics.median(values[:k]), statistics.median(values[-k:])
    return (last - first) / first if first else None


def verdict(samples: Sequence[dict[str, Any]], records: Sequence[dict], warmup: float) -> dict:
    """Growth of RSS, descriptors and threads after ``warmup`` seconds, and
    the latency of the first and the last quarter of the requests after it."""
    after = [s for s in samples if s["t"] >= warmup]
    if not records or not after:
        return {}
    t0 = records[0]["t"] - records[0]["ms"] / 1000
    timed = [r for r in records if r["t"] - t0 >= warmup and r["status"] == 200]
    quarter = max(1, len(timed) // 4)
    first = [r["ms"] for r in timed[:quarter]]
    last = [r["ms"] for r in timed[-quarter:]]
    out: dict[str, Any] = {"warmup_s": warmup, "samples_after_warmup": len(after)}
    for key in ("rss_bytes", "fds", "threads"):
        g = growth([s[key] for s in after])
        out[f"{key}_growth"] = None if g is None else round(g, 4)
    for name, rows in (("first_quarter", first), ("last_quarter", last)):
        out[name] = {
            "requests": len(rows),
            "p50_ms": tr.percentile(rows, 50),
            "p99_ms": tr.percentile(rows, 99),
        }
    out["flat"] = all(
        out[f"{k}_growth"] is not None and out[f"{k}_growth"] < FLAT for k in ("rss_bytes", "fds")
    )
    return out


def _f(x: float | None, nd: int = 0) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def markdown(report: dict[str, Any]) -> str:
    cfg, v = report["config"], report["verdict"]
    lines = [
        f"# Soak: {cfg['backend']} gateway, {cfg['minutes']:g} minutes at {cfg['rate']:g} req/s",
        "",
        f"Machine: {report['machine']}. Cache {cfg['cache_entries']} entries, TTL "
        f"{cfg['cache_ttl']:g} s; {cfg['active_users']} active users, {cfg['new_users']:g} new "
        f"per second, greedy share {cfg['greedy']:.0%}; primary upstream down for "
        f"{cfg['trip_seconds']:g} s every {cfg['trip_every']:g} s; {cfg['abandon']:.0%} of the "
        f"streams abandoned.",
        "",
        "| minute | RSS MiB | fds | threads | cache entries | evictions | expirations "
        "| requests | p50 ms | p99 ms | 429 | 5xx | open upstream streams |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_minute: dict[int, list[dict[str, Any]]] = {}
    for s in report["samples"]:
        by_minute.setdefault(int(s["t"] // 60), []).append(s)
    for minute, rows in sorted(by_minute.items()):
        last = rows[-1]
        n = sum(r["requests"] for r in rows)
        p50 = [r["p50_ms"] for r in rows if r["p50_ms"] is not None]
        p99 = [r["p99_ms"] for r in rows if r["p99_ms"] is not None]
        lines.append(
            f"| {minute} | {last['rss_bytes'] / 2**20:.1f} | {last['fds']} | {last['threads']} "
            f"| {last.get('cache_entries', '-')} | {last.get('evictions', '-')} "
            f"| {last.get('expirations', '-')} | {n} "
            f"| {_f(sorted(p50)[len(p50) // 2] if p50 else None)} "
            f"| {_f(max(p99) if p99 else None)} | {sum(r['http_429'] for r in rows)} "
            f"| {sum(r['http_5xx'] for r in rows)} | {last['upstream_open_streams']} |"
        )
    if v:
        fq, lq = v["first_quarter"], v["last_quarter"]
        lines += [
            "",
            f"After the {v['warmup_s']:g} s warm-up: RSS {v['rss_bytes_growth']:+.1%}, "
            f"open file descriptors {v['fds_growth']:+.1%}, threads {v['threads_growth']:+.1%} "
            f"(flat: under {FLAT:.0%}: {'yes' if v['flat'] else 'NO'}); latency p50/p99 "
            f"{_f(fq['p50_ms'])}/{_f(fq['p99_ms'])} ms in the first quarter, "
            f"{_f(lq['p50_ms'])}/{_f(lq['p99_ms'])} ms in the last.",
        ]
    t = report["totals"]
    lines += [
        "",
        f"Requests {t['requests']} (status {t['status']}), transport errors "
        f"{t['transport_errors']}, outages {t['trips']}; breaker transitions "
        + (", ".join(f"{k}: {v:g}" for k, v in report["breaker_transitions"].items()) or "none")
        + f"; upstream streams open 1 s after the end: {report['final']['upstream_open_streams']}.",
    ]
    return "\n".join(lines) + "\n"


async def soak(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    corpus = tr.load_corpus(args.data)
    total = int(args.rate * args.minutes * 60) + 1
    requests = tr.generate_requests(corpus, total, stream_fraction=args.stream, seed=args.seed)
    env = {
        "LLMEDGE_CACHE_MAX_ENTRIES": str(args.cache_entries),
        "LLMEDGE_CACHE_TTL": str(args.cache_ttl),
        "LLMEDGE_RATE_LIMIT": args.rate_limit,
        "LLMEDGE_BREAKER_FAILURES": "5",
        "LLMEDGE_BREAKER_RECOVERY": "3.0",
        "LLMEDGE_READ_TIMEOUT": "2.0",
    }
    with contextlib.ExitStack() as stack:
        mocks = [
            stack.enter_context(spawn_mock(ttft=args.ttft, tpot=args.tpot, answer_tokens=24))
            for _ in range(2)
        ]
        service, url = tr.start_service(
            upstreams=[f"primary={mocks[0].base_url}", f"fallback={mocks[1].base_url}"],
            backend=args.backend,
            server="uvicorn",
            env=env,
            log_path=out / "service.log",
        )
        stack.callback(service.stop)
        load = Load(args, url, requests)
        until = time.monotonic() + args.minutes * 60
        _, trips, samples = await asyncio.gather(
            load.run(until),
            trip_breakers(args, mocks[0], until),
            sample(args, service.pid, url, mocks, load, until),
        )
        # what is still open once the load stopped (streams, connections)
        await asyncio.sleep(1.0)
        final = proc_stats(service.pid)
        open_streams = sum(m.stats()["open_streams"] for m in mocks)
        metrics = await asyncio.to_thread(_get, url + "/metrics")
        transitions = {
            line.split("{", 1)[1].split("}", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("llmedge_breaker_transitions_total{")
        }
    records = load.records
    statuses = Counter(str(r["status"]) for r in records)
    return {
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "data")},
        "machine": f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {sys.platform}",
        "corpus": corpus.describe(),
        "samples": samples,
        "final": {**final, "upstream_open_streams": open_streams},
        "breaker_transitions": transitions,
        "totals": {
            "requests": len(records),
            "status": dict(sorted(statuses.items())),
            "transport_errors": sum(1 for r in records if r["error"] is not None),
            "abandoned": sum(1 for r in records if r["abandoned"]),
            "trips": len(trips),
        },
        "verdict": verdict(samples, records, args.warmup_minutes * 60),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python loadtest/soak.py", description=__doc__.split("\n\n")[0].strip()
    )
    add = p.add_argument
    add("--minutes", type=float, default=30.0, help="how long (default 30)")
    add("--warmup-minutes", type=float, default=None, help="default: min(5, minutes / 4)")
    add("--rate", type=float, default=20.0, help="requests per second (default 20)")
    add("--concurrency", type=int, default=32, help="requests in flight at most (default 32)")
    add("--backend", choices=["llmedge", "baseline"], default="llmedge")
    add("--sample", type=float, default=10.0, help="seconds between samples (default 10)")
    add("--cache-entries", type=int, default=1000, help="LLMEDGE_CACHE_MAX_ENTRIES (1000)")
    add("--cache-ttl", type=float, default=120.0, help="LLMEDGE_CACHE_TTL seconds (120)")
    add("--rate-limit", default="2/1/6", help="LLMEDGE_RATE_LIMIT per key (default 2/1/6)")
    add("--active-users", type=int, default=400, help="users active at once (default 400)")
    add("--new-users", type=float, default=2.0, help="new users per second (default 2)")
    add("--greedy", type=float, default=0.1, help="share of requests of the greedy key (0.1)")
    add("--trip-every", type=float, default=120.0, help="seconds between outages (120)")
    add("--trip-seconds", type=float, default=15.0, help="seconds an outage lasts (15)")
    add("--shift-every", type=int, default=3000, help="requests per temperature (3000)")
    add("--abandon", type=float, default=0.05, help="share of streams abandoned (0.05)")
    add("--openai", type=float, default=0.2, help="share sent to /v1/chat/completions (0.2)")
    add("--stream", type=float, default=0.5, help="share streamed (default 0.5)")
    add("--ttft", type=float, default=0.05, help="mock time to first token, s (0.05)")
    add("--tpot", type=float, default=0.005, help="mock time per token, s (0.005)")
    add("--seed", type=int, default=0)
    add("--data", default=None, help="data dir (default $LLMEDGE_DATA or ../shared/data)")
    add("--out", default=str(HERE / "results" / "soak"), help="report directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.concurrency < 1 or args.sample <= 0:
        raise SystemExit("--minutes, --rate, --sample must be > 0 and --concurrency >= 1")
    if args.warmup_minutes is None:
        args.warmup_minutes = min(5.0, args.minutes / 4)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = asyncio.run(soak(args, out))
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "soak.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["verdict"].get("flat") else 1


if __name__ == "__main__":
    sys.exit(main())

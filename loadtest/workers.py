"""The gateway under several gunicorn workers: one cache shared through Redis
against one cache per worker, and a rolling restart under load.

    python loadtest/workers.py [--scenario share|deploy|all] [--backend llmedge|baseline|both]
                               [--workers 4] [--users 16] [--requests 3000] [--out DIR]

The runner starts a ``redis-server`` on a free port (no persistence), one mock
LLM upstream (``llmedge.testing.spawn_mock``) and, per run, the gateway under
``gunicorn -k uvicorn.workers.UvicornWorker -w N`` (``LLMEDGE_REDIS_URL`` set
or not), then drives it from an asyncio client and stops everything it started.

Routing: the client keeps keep-alive connections pinned to workers (each
connection learns which worker holds it from ``GET /health``'s ``pid``). A new
question goes to the workers in turn; an exact repeat or a paraphrase goes to
a worker other than the one its question was sent to, so that with one cache
per worker it cannot be answered from the worker that already knows it.

* ``share``: the same sequence of ``--requests`` requests (new questions,
  exact repeats, paraphrases of real prompts; half streamed), ``--users``
  concurrent clients without think time, against: one worker without Redis
  (the reference hit rate), ``--workers`` workers without Redis, and
  ``--workers`` workers with Redis; for each backend (llmedge, and the
  pure-Python baseline whose shared cache is redis-py and numpy, entries in
  Redis, brute force per lookup). Reported: requests per second, latency
  percentiles, hit rate (by request kind), calls that reached the upstream,
  and each worker's cache statistics from ``/health``.
* ``deploy``: ``--workers`` workers under steady load; after ``--warmup``
  seconds the workers are stopped one at a time (SIGTERM: gunicorn lets the
  worker finish its requests and starts a new one), one every ``--interval``
  seconds; the hit rate is reported as a timeline, with and without Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import itertools
import json
import os
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if importlib.util.find_spec("llmedge") is None:  # a source checkout without an install
    sys.path.insert(0, str(HERE.parent / "python"))
if str(HERE) not in sys.path:  # loaded by path (the tests) rather than run as a script
    sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # redis_support: a throwaway redis-server

import httpx  # noqa: E402
import traffic as tr  # noqa: E402
from redis_support import RedisServer  # noqa: E402

from llmedge.testing import spawn_mock  # noqa: E402

SCENARIOS = ("share", "deploy")
BACKENDS = ("llmedge", "baseline")
SERVICE_ENV = {
    "LLMEDGE_RATE_LIMIT": "off",
    "LLMEDGE_READ_TIMEOUT": "5.0",
    # a shared Redis on the same 2 cores as everything else: no 50 ms budget
    "LLMEDGE_REDIS_TIMEOUT": "0.5",
}
HEALTH_TIMEOUT = 10.0
REPORTED_SETTINGS = (
    "workers", "users", "requests", "mix", "stream", "seed", "ttft", "tpot",
    "warmup", "interval", "settle", "bin",
)  # fmt: skip


# --------------------------------------------------------------------- the service


def start_service(
    backend: str, workers: int, redis_url: str | None, upstream: str, log: Path
) -> tuple[tr.ManagedProcess, str]:
    """The gateway under gunicorn, once every worker answers."""
    env = {
        **SERVICE_ENV,
        # pinned client connections stay open between requests
        "GUNICORN_CMD_ARGS": "--keep-alive 300",
    }
    if redis_url is not None:
        env["LLMEDGE_REDIS_URL"] = redis_url
        env["LLMEDGE_REDIS_LOCAL_SHARE"] = str(workers)
    proc, url = tr.start_service(
        upstreams=[upstream], backend=backend, workers=workers, env=env, log_path=log
    )
    try:
        # every worker serving: new connections until each has answered
        answered: set[int] = set()
        deadline = time.monotonic() + 120
        while len(answered) < workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{proc.name}: only workers {answered} answered in 120 s")
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(
                    url + "/health", timeout=HEALTH_TIMEOUT, headers={"Connection": "close"}
                )
                answered.add(int(r.json()["pid"]))
            answered &= worker_pids(proc)
    except BaseException:
        proc.stop()
        raise
    return proc, url


def worker_pids(proc: tr.ManagedProcess) -> set[int]:
    """The gunicorn workers: the process group without its master."""
    return {p for p in proc.pids() if p != proc.pid}


# --------------------------------------------------------------------- the client


class NoRoute(Exception):
    pass


@dataclass
class Conn:
    client: httpx.AsyncClient
    pid: int
    port: int


def _local_port(response: httpx.Response) -> int:
    """The client port of the connection that carried ``response``; -1 once
    the server closed it."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    try:
        return int(sock.getsockname()[1]) if sock is not None else -1
    except OSError:
        return -1


class Pool:
    """Keep-alive connections to the service, each pinned to the worker that
    accepted it. ``acquire(pid)`` returns a connection held by that worker,
    opening new ones until one lands there (the others wait for their turn)."""

    def __init__(self, url: str, *, timeout: float = 30.0, max_idle: int = 64) -> None:
        self.url = url
        self.timeout = timeout
        self.max_idle = max_idle
        self.idle: defaultdict[int, list[Conn]] = defaultdict(list)
        self.opened = 0
        self.repinned = 0

    async def _probe(self, client: httpx.AsyncClient) -> tuple[int, int]:
        r = await client.get("/health", timeout=HEALTH_TIMEOUT)
        return int(r.json()["pid"]), _local_port(r)

    async def _open(self) -> Conn:
        client = httpx.AsyncClient(
            base_url=self.url,
            timeout=self.timeout,
            limits=httpx.Limits(
                max_connections=1, max_keepalive_connections=1, keepalive_expiry=None
            ),
        )
        try:
            pid, port = await self._probe(client)
        except BaseException:
            await client.aclose()
            raise
        self.opened += 1
        return Conn(client, pid, port)

    async def acquire(self, pid: int | None, attempts: int = 48) -> Conn:
        if pid is None:
            for conns in self.idle.values():
                if conns:
                    return conns.pop()
            return await self._open()
        if self.idle[pid]:
            return self.idle[pid].pop()
        for _ in range(attempts):
            conn = await self._open()
            if conn.pid == pid:
                return conn
            await self.release(conn)
        raise NoRoute(f"no connection reached worker {pid} in {attempts} attempts")

    async def release(self, conn: Conn) -> None:
        if len(self.idle[conn.pid]) >= self.max_idle:
            await conn.client.aclose()
        else:
            self.idle[conn.pid].append(conn)

    async def repin(self, conn: Conn, port: int) -> int:
        """The worker that answered on ``conn`` (at ``port``). When the server
        closed the connection, the next request opens another one: which
        worker holds it is asked again."""
        if port == conn.port:
            return conn.pid
        served = conn.pid
        conn.pid, conn.port = await self._probe(conn.client)
        self.repinned += 1
        # -1: the pinned connection answered, then closed; another port: the
        # request already went over a new connection, to the worker probed now
        return served if port == -1 else conn.pid

    async def discard(self, conn: Conn) -> None:
        await conn.client.aclose()

    async def close(self) -> None:
        for conns in self.idle.values():
            for c in conns:
                await c.client.aclose()
        self.idle.clear()


@dataclass
class Result:
    t: float
    kind: str
    stream: bool
    status: int
    latency_ms: float
    cached: str
    worker: int | None
    origin: int | None
    error: str | None = None
    retried: bool = False

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def elsewhere(self) -> bool:
        """A repeat or paraphrase answered by a worker its question was not sent to."""
        return self.worker is not None and self.origin is not None and self.worker != self.origin


class Router:
    """Which worker each request goes to (see the module docstring)."""

    def __init__(self, proc: tr.ManagedProcess, pairs: Sequence[tuple[str, str]]) -> None:
        self.proc = proc
        self.opener = {b: a for a, b in pairs}  # a paraphrase -> the question it rewrites
        self.origin: dict[str, int] = {}
        self.live = sorted(worker_pids(proc))
        self.turn = itertools.count()

    def refresh(self) -> None:
        self.live = sorted(worker_pids(self.proc)) or self.live

    def target(self, req: tr.ChatRequest) -> tuple[int, int | None]:
        """(worker to send to, worker its question was first sent to)."""
        live = self.live
        paraphrase = req.kind == "paraphrase"
        key = self.opener.get(req.question, req.question) if paraphrase else req.question
        origin = self.origin.get(key)
        if req.kind == "new" or origin is None:
            pid = live[next(self.turn) % len(live)]
            self.origin.setdefault(key, pid)
            return pid, (None if req.kind == "new" else origin)
        others = [p for p in live if p != origin] or live
        return others[next(self.turn) % len(others)], origin


async def send(conn: Conn, req: tr.ChatRequest) -> tuple[int, str, str | None, int]:
    """(status, cache kind, error, local port) of one /chat request."""
    body = req.body()
    if not req.stream:
        r = await conn.client.post("/chat", json=body)
        return r.status_code, r.headers.get("x-llmedge-cache", "none"), None, _local_port(r)
    async with conn.client.stream("POST", "/chat", json=body) as r:
        tail = b""
        async for chunk in r.aiter_raw():
            tail = (tail + chunk)[-256:]
        error = None
        if r.status_code == 200 and b'"done"' not in tail:
            error = "stream ended without its final event"
        return r.status_code, r.headers.get("x-llmedge-cache", "none"), error, _local_port(r)


async def drive(
    pool: Pool,
    router: Router,
    requests: Sequence[tr.ChatRequest],
    *,
    users: int,
    until: Callable[[int], bool],
    results: list[Result],
) -> None:
    """``users`` clients without think time, taking requests in order until
    ``until(index)`` says stop."""
    counter = itertools.count()

    async def user() -> None:
        while True:
            i = next(counter)
            if until(i):
                return
            req = requests[i % len(requests)]
            pid, origin = router.target(req)
            t, start = time.time(), time.perf_counter()
            status, cached, error, worker, retried = 0, "none", None, None, False
            for attempt in range(2):
                conn: Conn | None = None
                try:
                    try:
                        conn = await pool.acquire(pid if attempt == 0 else None)
                    except NoRoute:  # that worker is gone (a restart): any other
                        router.refresh()
                        conn = await pool.acquire(None)
                    status, cached, error, port = await send(conn, req)
                    worker = await pool.repin(conn, port)
                    await pool.release(conn)
                    break
                except httpx.TransportError as exc:
                    status, error = 0, type(exc).__name__
                    if conn is not None:
                        await pool.discard(conn)
                    # A stopping worker closes its idle keep-alive connections:
                    # a request sent on one as it closes was never read. Sent
                    # once more on another connection, as a proxy retries a
                    # connection error.
                    retried = True
            latency = (time.perf_counter() - start) * 1000
            results.append(
                Result(
                    t, req.kind, req.stream, status, latency, cached, worker, origin, error, retried
                )
            )

    await asyncio.gather(*(user() for _ in range(users)))


async def warm(pool: Pool, pids: Sequence[int], per_worker: int = 2) -> None:
    """Each worker's first requests load its tokenizer: not measured."""
    for pid in pids:
        conn = await pool.acquire(pid)
        for i in range(per_worker):
            await conn.client.post("/chat", json={"question": f"warm-up {i} of worker {pid}"})
        await pool.release(conn)


async def worker_stats(pool: Pool, pids: Sequence[int]) -> dict[str, Any]:
    """Each worker's cache statistics (and store) from its own ``/health``."""
    out = {}
    for pid in pids:
        try:
            conn = await pool.acquire(pid)
        except NoRoute:
            continue
        body = (await conn.client.get("/health", timeout=HEALTH_TIMEOUT)).json()
        await pool.release(conn)
        out[str(pid)] = {"cache": body.get("caches", {}).get("chat"), "status": body.get("status")}
    return out


# --------------------------------------------------------------------- summaries


def summarize(results: Sequence[Result], duration_s: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    lat = [r.latency_ms for r in ok]
    hits = [r for r in ok if r.cached in ("exact", "semantic")]
    by_kind = {}
    for kind in tr.KINDS:
        rows = [r for r in ok if r.kind == kind]
        if rows:
            n_hit = sum(1 for r in rows if r.cached in ("exact", "semantic"))
            by_kind[kind] = {"requests": len(rows), "hit_rate": round(n_hit / len(rows), 4)}
    repeats = [r for r in ok if r.kind != "new"]
    return {
        "requests": len(results),
        "ok": len(ok),
        "errors": dict(Counter(r.error or f"HTTP {r.status}" for r in results if not r.ok)),
        "duration_s": round(duration_s, 2),
        "rps": round(len(ok) / duration_s, 1) if duration_s > 0 else 0.0,
        "latency_ms": {
            q: _round(tr.percentile(lat, p)) for q, p in (("p50", 50), ("p95", 95), ("p99", 99))
        },
        "hit_rate": round(len(hits) / len(ok), 4) if ok else 0.0,
        "exact_hits": sum(1 for r in hits if r.cached == "exact"),
        "semantic_hits": sum(1 for r in hits if r.cached == "semantic"),
        "by_kind": by_kind,
        "retried": sum(r.retried for r in results),
        "repeats_elsewhere": round(sum(r.elsewhere for r in repeats) / len(repeats), 4)
        if repeats
        else 0.0,
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def timeline(
    results: Sequence[Result], begin: float, end: float, events: Sequence[dict], bin_s: float
) -> list[dict[str, Any]]:
    rows = []
    for i in range(int((end - begin) / bin_s)):  # whole bins only
        t = begin + i * bin_s
        rs = [r for r in results if t <= r.t < t + bin_s]
        ok = [r for r in rs if r.ok]
        hit = sum(1 for r in ok if r.cached in ("exact", "semantic"))
        rows.append(
            {
                "t": round(t - begin, 1),
                "requests": len(rs),
                "errors": len(rs) - len(ok),
                "hit_rate": round(hit / len(ok), 4) if ok else None,
                "p99_ms": _round(tr.percentile([r.latency_ms for r in ok], 99)),
                "events": [e["what"] for e in events if t <= e["t"] < t + bin_s],
            }
        )
    return rows


def window_hit_rate(results: Sequence[Result], since: float, until: float) -> float | None:
    ok = [r for r in results if since <= r.t < until and r.ok]
    if not ok:
        return None
    return round(sum(1 for r in ok if r.cached in ("exact", "semantic")) / len(ok), 4)


# --------------------------------------------------------------------- runs


class Session:
    """Redis, the upstream, the request sequence: shared by every run."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        corpus = tr.load_corpus(args.data)
        self.corpus = corpus
        self.requests = tr.generate_requests(
            corpus, 50_000, mix=tr.parse_mix(args.mix), stream_fraction=args.stream, seed=args.seed
        )
        self.started: list[dict[str, Any]] = []

    def run(self, stack: contextlib.ExitStack) -> None:
        self.redis = stack.enter_context(RedisServer())
        self.started.append({"name": "redis-server", "pid": self.redis.pid})
        self.mock = spawn_mock(port=0, ttft=self.args.ttft, tpot=self.args.tpot, answer_tokens=24)
        stack.callback(self.mock.stop)
        self.started.append({"name": "mock", "pid": self.mock.process.pid})

    @contextlib.asynccontextmanager
    async def serving(
        self, backend: str, workers: int, redis: bool, label: str
    ) -> AsyncIterator[tuple[tr.ManagedProcess, Pool, Router]]:
        """The gateway (on an empty Redis), its workers warmed up, the
        upstream's counts reset."""
        self.redis.flushall()
        proc, url = start_service(
            backend,
            workers,
            self.redis.url if redis else None,
            self.mock.base_url,
            self.work / f"{label}.log",
        )
        self.started.append({"name": proc.name, "pgid": proc.pgid})
        pool = Pool(url)
        try:
            router = Router(proc, self.corpus.pairs)
            await warm(pool, router.live)
            self.mock.reset_stats()
            yield proc, pool, router
        finally:
            await pool.close()
            proc.stop()

    async def share(self, backend: str, workers: int, redis: bool) -> dict[str, Any]:
        label = f"share-{backend}-{workers}w{'-redis' if redis else ''}"
        n = self.args.requests
        results: list[Result] = []
        async with self.serving(backend, workers, redis, label) as (proc, pool, router):
            start = time.time()
            await drive(
                pool,
                router,
                self.requests,
                users=self.args.users,
                until=lambda i: i >= n,
                results=results,
            )
            elapsed = time.time() - start
            upstream = self.mock.stats()["requests"]
            stats = await worker_stats(pool, router.live)
        return {
            "scenario": "share",
            "label": label,
            "backend": backend,
            "workers": workers,
            "redis": redis,
            "summary": summarize(results, elapsed),
            "upstream_calls": upstream,
            "connections_opened": pool.opened,
            "connections_repinned": pool.repinned,
            "worker_stats": stats,
        }

    async def deploy(self, backend: str, workers: int, redis: bool) -> dict[str, Any]:
        a = self.args
        label = f"deploy-{backend}-{workers}w{'-redis' if redis else ''}"
        total = a.warmup + workers * a.interval + a.settle
        results: list[Result] = []
        events: list[dict[str, Any]] = []
        async with self.serving(backend, workers, redis, label) as (proc, pool, router):
            begin = time.time()
            stop_at = begin + total

            async def restarts() -> None:
                await asyncio.sleep(a.warmup)
                for old in list(router.live):
                    before = set(worker_pids(proc))
                    os.kill(old, signal.SIGTERM)
                    events.append({"t": time.time(), "what": f"worker {old} stopped"})
                    deadline = time.time() + a.interval
                    new: set[int] = set()
                    while time.time() < deadline:
                        if not new:
                            new = worker_pids(proc) - before
                            for pid in new:
                                events.append({"t": time.time(), "what": f"worker {pid} started"})
                        await asyncio.sleep(0.05)

            async def refresh() -> None:
                while time.time() < stop_at:
                    router.refresh()
                    await asyncio.sleep(0.2)

            await asyncio.gather(
                restarts(),
                refresh(),
                drive(
                    pool,
                    router,
                    self.requests,
                    users=a.users,
                    until=lambda i: time.time() >= stop_at,
                    results=results,
                ),
            )
            end = time.time()
            upstream = self.mock.stats()["requests"]
            stats = await worker_stats(pool, router.live)
        first = begin + a.warmup
        last = first + (workers - 1) * a.interval
        return {
            "scenario": "deploy",
            "label": label,
            "backend": backend,
            "workers": workers,
            "redis": redis,
            "summary": summarize(results, end - begin),
            "upstream_calls": upstream,
            "events": [dict(e, t=round(e["t"] - begin, 1)) for e in events],
            "hit_rate_before": window_hit_rate(results, begin + a.warmup / 2, first),
            "hit_rate_during": window_hit_rate(results, first, last + a.interval),
            "hit_rate_after": window_hit_rate(results, last + a.interval, end),
            "timeline": timeline(results, begin, end, events, a.bin),
            "worker_stats": stats,
        }


# --------------------------------------------------------------------- report


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def goals(runs: Sequence[dict[str, Any]], workers: int) -> list[str]:
    by = {r["label"]: r for r in runs}
    out = []
    single = by.get("share-llmedge-1w")
    shared = by.get(f"share-llmedge-{workers}w-redis")
    if single and shared:
        gap = (single["summary"]["hit_rate"] - shared["summary"]["hit_rate"]) * 100
        out.append(
            f"{workers} workers with Redis: hit rate {_pct(shared['summary']['hit_rate'])} "
            f"against {_pct(single['summary']['hit_rate'])} for one process "
            f"({abs(gap):.1f} points {'below' if gap > 0 else 'above'}; goal: at most 2 below): "
            f"{'met' if gap <= 2.0 else 'NOT met'}"
        )
    base = by.get(f"share-baseline-{workers}w-redis")
    if shared and base:
        a, b = shared["summary"], base["summary"]
        faster = a["rps"] > b["rps"]
        lower = (a["latency_ms"]["p99"] or 0) < (b["latency_ms"]["p99"] or 0)
        out.append(
            f"llmedge against the pure-Python baseline, {workers} workers with Redis: "
            f"{a['rps']:.1f} against {b['rps']:.1f} req/s ({a['rps'] / max(b['rps'], 1e-9):.2f}x), "
            f"p99 {_ms(a['latency_ms']['p99'])} against {_ms(b['latency_ms']['p99'])} ms "
            f"(goal: more req/s and a lower p99): {'met' if faster and lower else 'NOT met'}"
        )
    for r in runs:
        if r["scenario"] == "deploy" and r["redis"]:
            before, after = r["hit_rate_before"], r["hit_rate_after"]
            if before is not None and after is not None:
                kept = after >= before - 0.02
                out.append(
                    f"rolling restart ({r['backend']}, Redis): hit rate {_pct(before)} before, "
                    f"{_pct(r['hit_rate_during'])} during, {_pct(after)} after "
                    f"(goal: no loss beyond a short dip): {'met' if kept else 'NOT met'}"
                )
    return out


def markdown(report: dict[str, Any]) -> str:
    a = report["settings"]
    w = a["workers"]
    lines = [
        f"# Load test: the gateway under {w} gunicorn workers, one cache shared through Redis",
        "",
        f"`{report['command']}` ({report['machine']}; the load generator, the mock, Redis "
        f"and the workers share its cores).",
        f"Requests: {report['corpus']}; mix {a['mix']}, {a['stream']:.0%} streamed, seed "
        f"{a['seed']}; {a['users']} concurrent clients without think time. Mock upstream: "
        f"TTFT {a['ttft'] * 1000:.0f} ms, {a['tpot'] * 1000:.0f} ms/token, 24 tokens.",
        "Repeats and paraphrases are sent to a worker other than the one their question "
        "was sent to (column 'elsewhere': the share of them that a worker other than the "
        "question's answered).",
        "",
    ]
    share = [r for r in report["runs"] if r["scenario"] == "share"]
    if share:
        lines += [
            f"## Shared cache: the same {a['requests']} requests",
            "",
            "| backend | workers | Redis | req/s | p50 ms | p95 ms | p99 ms | hit rate | "
            "new / exact / paraphrase | elsewhere | upstream calls | errors |",
            "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
        ]
        for r in share:
            s = r["summary"]
            kinds = " / ".join(_pct(s["by_kind"].get(k, {}).get("hit_rate")) for k in tr.KINDS)
            lines.append(
                f"| {r['backend']} | {r['workers']} | {'yes' if r['redis'] else 'no'} | "
                f"{s['rps']:.1f} | {_ms(s['latency_ms']['p50'])} | {_ms(s['latency_ms']['p95'])} | "
                f"{_ms(s['latency_ms']['p99'])} | {_pct(s['hit_rate'])} | {kinds} | "
                f"{_pct(s['repeats_elsewhere'])} | {r['upstream_calls']} | "
                f"{s['requests'] - s['ok']} |"
            )
        lines.append("")
    for r in report["runs"]:
        if r["scenario"] != "deploy":
            continue
        s = r["summary"]
        lines += [
            f"## Rolling restart: {r['backend']}, {r['workers']} workers, "
            f"{'Redis' if r['redis'] else 'no Redis'}",
            "",
            f"{s['requests']} requests, {s['rps']:.1f} req/s, {s['requests'] - s['ok']} errors "
            f"({s['retried']} sent again on another connection after a stopping worker closed "
            f"theirs), {r['upstream_calls']} upstream calls; hit rate "
            f"{_pct(r['hit_rate_before'])} before the first restart, "
            f"{_pct(r['hit_rate_during'])} during, {_pct(r['hit_rate_after'])} after the last.",
            "",
            "| t (s) | requests | hit rate | p99 ms | errors | events |",
            "|---:|---:|---:|---:|---:|---|",
        ]
        for row in r["timeline"]:
            lines.append(
                f"| {row['t']:.0f} | {row['requests']} | {_pct(row['hit_rate'])} | "
                f"{_ms(row['p99_ms'])} | {row['errors']} | {'; '.join(row['events'])} |"
            )
        lines.append("")
    if report["goals"]:
        lines += ["## Goals", "", *(f"- {g}" for g in report["goals"]), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python loadtest/workers.py", description=__doc__.split("\n\n")[0].strip()
    )
    p.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    p.add_argument("--backend", choices=[*BACKENDS, "both"], default="both")
    p.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4)")
    p.add_argument("--users", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument(
        "--requests", type=int, default=3000, help="requests per share run (default 3000)"
    )
    p.add_argument("--warmup", type=float, default=12.0, help="deploy: s before the first restart")
    p.add_argument("--interval", type=float, default=6.0, help="deploy: s between restarts")
    p.add_argument("--settle", type=float, default=12.0, help="deploy: s after the last restart")
    p.add_argument("--bin", type=float, default=3.0, help="deploy: timeline bin in s (default 3)")
    p.add_argument("--mix", default="new=0.5,exact=0.3,paraphrase=0.2")
    p.add_argument("--stream", type=float, default=0.5, help="fraction streamed (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ttft", type=float, default=0.05, help="mock time to first token, s")
    p.add_argument("--tpot", type=float, default=0.005, help="mock time per output token, s")
    p.add_argument("--data", default=None, help="data dir (default: $LLMEDGE_DATA, ../shared/data)")
    p.add_argument("--out", default=str(HERE / "results"), help="report directory")
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.workers < 2:
        raise SystemExit(f"--workers must be at least 2, got {args.workers}")
    if args.users < 1 or args.requests < 1:
        raise SystemExit(f"--users and --requests must be >= 1, got {args.users}, {args.requests}")
    for name in ("warmup", "interval", "settle", "bin"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"--{name} must be > 0 seconds, got {getattr(args, name)}")
    try:
        tr.parse_mix(args.mix)
    except ValueError as e:
        raise SystemExit(str(e)) from None


async def run_all(session: Session, args: argparse.Namespace) -> list[dict[str, Any]]:
    backends = list(BACKENDS) if args.backend == "both" else [args.backend]
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    runs = []
    w = args.workers
    plan: list[tuple[str, str, int, bool]] = []
    if "share" in scenarios:
        for b in backends:
            plan += [("share", b, 1, False), ("share", b, w, False), ("share", b, w, True)]
    if "deploy" in scenarios:
        for b in backends:
            plan += [("deploy", b, w, True), ("deploy", b, w, False)]
    for scenario, backend, workers, redis in plan:
        print(
            f"[{time.strftime('%H:%M:%S')}] {scenario} / {backend} / {workers} workers"
            f"{' / redis' if redis else ''} ...",
            flush=True,
        )
        run = getattr(session, scenario)
        result = await run(backend, workers, redis)
        s = result["summary"]
        print(
            f"    {s['requests']} requests, {s['rps']:.1f} req/s, p99 "
            f"{_ms(s['latency_ms']['p99'])} ms, hit rate {_pct(s['hit_rate'])}, "
            f"upstream calls {result['upstream_calls']}, errors {s['requests'] - s['ok']}",
            flush=True,
        )
        runs.append(result)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    out = Path(args.out)
    work = out / "work" / "workers"
    work.mkdir(parents=True, exist_ok=True)
    session = Session(args, work)
    with contextlib.ExitStack() as stack:
        session.run(stack)
        runs = asyncio.run(run_all(session, args))
    report = {
        "command": " ".join(
            ["python loadtest/workers.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "finished": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        "corpus": session.corpus.describe(),
        "settings": {k: getattr(args, k) for k in REPORTED_SETTINGS},
        "runs": runs,
        "goals": goals(runs, args.workers),
        "started": session.started,
    }
    report["left_running"] = tr.still_running(session.started)
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / "workers.json", out / "workers.md"
    text = markdown(report)
    jpath.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    mpath.write_text(text, encoding="utf-8")
    return tr.finish(report, text, jpath, mpath)


if __name__ == "__main__":
    sys.exit(main())

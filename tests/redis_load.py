"""Load for the Redis tests: threads, asyncio tasks and whole processes calling a
shared limiter as fast as they can, recording every call's outcome and
duration. Worker processes are started with the ``spawn`` method, so
everything here is importable from ``tests/``."""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass
class Calls:
    """What a set of callers saw: one entry per call."""

    starts: list[float] = dataclasses.field(default_factory=list)  # time.monotonic()
    durations: list[float] = dataclasses.field(default_factory=list)
    results: list[Any] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)  # unexpected exceptions

    def extend(self, other: Calls) -> None:
        self.starts += other.starts
        self.durations += other.durations
        self.results += other.results
        self.errors += other.errors

    @property
    def admitted(self) -> int:
        return sum(1 for r in self.results if r is True)

    def slowest(self, n: int = 5) -> list[tuple[float, float]]:
        """(duration, start) of the `n` slowest calls, for assertion messages."""
        return sorted(zip(self.durations, self.starts, strict=True), reverse=True)[:n]

    def between(self, t0: float, t1: float) -> Calls:
        """The calls that started in [t0, t1)."""
        out = Calls()
        for s, d, r in zip(self.starts, self.durations, self.results, strict=True):
            if t0 <= s < t1:
                out.starts.append(s)
                out.durations.append(d)
                out.results.append(r)
        return out


def hammer_threads(
    call: Callable[[int], Any], *, threads: int, stop: threading.Event, pause: float = 0.0
) -> tuple[list[threading.Thread], list[Calls]]:
    """Starts `threads` threads calling ``call(thread_index)`` until `stop` is set;
    join the threads, then read the Calls (one per thread). `pause` sleeps between
    calls (0: as fast as possible)."""
    records = [Calls() for _ in range(threads)]

    def run(i: int) -> None:
        rec = records[i]
        while not stop.is_set():
            t = time.monotonic()
            try:
                out = call(i)
            except Exception as exc:  # recorded: the test decides which are allowed
                out = exc
                rec.errors.append(f"{type(exc).__name__}: {exc}")
            rec.starts.append(t)
            rec.durations.append(time.monotonic() - t)
            rec.results.append(out)
            if pause:
                time.sleep(pause)

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    return workers, records


def merge(records: list[Calls]) -> Calls:
    out = Calls()
    for r in records:
        out.extend(r)
    return out


class LoopLag:
    """Measures how late an asyncio loop wakes a 5 ms sleeper: a loop blocked by
    a synchronous call shows it as lag."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.005)
            self.lags.append(loop.time() - t - 0.005)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> float:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        return max(self.lags, default=0.0)


# ---------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------


def _build_limiter(spec: dict[str, Any]) -> tuple[Any, Any]:
    import llmedge

    store = llmedge.RedisStore(spec["url"], timeout=spec.get("timeout", 2.0))
    common = {
        "store": store,
        "name": spec["name"],
        "on_store_error": spec.get("on_store_error", "deny"),
    }
    if "limits" in spec:
        limiter = llmedge.MultiRateLimiter(spec["limits"], **common)
    else:
        limiter = llmedge.RateLimiter(spec["rate"], spec["per"], burst=spec["burst"], **common)
    return store, limiter


def _redis_time(url: str) -> float:
    import redis

    r = redis.Redis.from_url(url)
    try:
        sec, usec = r.time()
        return sec + usec / 1e6
    finally:
        r.close()


def limiter_process(spec: dict[str, Any], ready: Any, start: Any, out: Any) -> None:
    """One worker process: builds its own store and limiter, waits for `start`, then
    calls ``try_acquire`` from ``spec["threads"]`` threads (and, when
    ``spec["tasks"]``, from that many asyncio tasks) until ``spec["attempts"]``
    calls each, or until ``spec["duration"]`` seconds passed. Puts a dict of
    totals on `out`, with the Redis TIME just before the first call (``t_first``)
    and after the last (``t_last``), and when the last call started
    (``t_last_call``, on the server's clock)."""
    try:
        store, limiter = _build_limiter(spec)
        store.ping()  # connected before the start
        ready.put(True)
        costs: list[dict[str, int]] = spec.get("costs") or [{}]
        attempts = spec.get("attempts")
        duration = spec.get("duration")
        start.wait()
        deadline = time.monotonic() + duration if duration else None
        t_first = _redis_time(spec["url"])
        mono_first = time.monotonic()
        last_call = [mono_first]  # when the last call started (monotonic)
        lock = threading.Lock()
        totals: dict[str, Any] = {"admitted": 0, "attempts": 0, "charged": {}, "errors": []}

        def done(n: int) -> bool:
            if attempts is not None:
                return n >= attempts
            assert deadline is not None
            return time.monotonic() >= deadline

        def account(granted: bool, cost: dict[str, int], started: float) -> None:
            with lock:
                last_call[0] = max(last_call[0], started)
                totals["attempts"] += 1
                if granted:
                    totals["admitted"] += 1
                    for k, v in cost.items():
                        totals["charged"][k] = totals["charged"].get(k, 0) + v

        def thread_main(i: int) -> None:
            n = 0
            try:
                while not done(n):
                    cost = costs[(i + n) % len(costs)]
                    t = time.monotonic()
                    account(bool(limiter.try_acquire(spec["key"], **cost)), cost, t)
                    n += 1
            except Exception:
                with lock:
                    totals["errors"].append(traceback.format_exc())

        async def task_main(i: int) -> None:
            import llmedge

            n = 0
            while not done(n):
                cost = costs[(i + n) % len(costs)]
                t = time.monotonic()
                try:
                    granted = await limiter.acquire_async(spec["key"], timeout=0, **cost)
                except llmedge.RateLimitExceeded:
                    granted = False
                account(granted, cost, t)
                n += 1

        async def tasks_main() -> None:
            await asyncio.gather(*(task_main(i) for i in range(spec.get("tasks", 0))))

        workers = [
            threading.Thread(target=thread_main, args=(i,)) for i in range(spec.get("threads", 1))
        ]
        for w in workers:
            w.start()
        if spec.get("tasks"):
            try:
                asyncio.run(tasks_main())
            except Exception:
                totals["errors"].append(traceback.format_exc())
        for w in workers:
            w.join()
        totals["t_first"] = t_first
        totals["t_last"] = _redis_time(spec["url"])
        # the last call's start on the server's clock (for a lower bound that
        # leaves out the time the threads took to finish)
        totals["t_last_call"] = t_first + (last_call[0] - mono_first)
        totals["metrics"] = limiter.metrics()
        totals["store_metrics"] = store.metrics()
        store.close()
        out.put(totals)
    except BaseException:
        ready.put(False)
        out.put({"errors": [traceback.format_exc()]})


def run_processes(specs: list[dict[str, Any]], *, timeout: float = 240.0) -> list[dict[str, Any]]:
    """Runs one ``limiter_process`` per spec, started together; returns their totals."""
    ctx = multiprocessing.get_context("spawn")
    ready, start, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=limiter_process, args=(s, ready, start, out)) for s in specs]
    for p in procs:
        p.start()
    results = []
    try:
        for _ in procs:  # every process built its limiter and reached Redis
            ready.get(timeout=timeout)
        start.set()
        for _ in procs:
            results.append(out.get(timeout=timeout))
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
    return results

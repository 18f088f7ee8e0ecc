"""The shared rate limiter on Redis: llmedge against a pure-Python baseline and
the library users would otherwise pick, all on the same local ``redis-server``
(started by the suite, no persistence).

Implementations:

* ``llmedge``: ``RateLimiter(..., store=RedisStore(url))``;
* ``python``: redis-py running a GCRA in one Lua script with ``EVALSHA``
  (``benches/baselines/redis_gcra.py``);
* ``limits-moving`` / ``limits-sliding``: ``limits`` with its Redis storage
  (redis-py), moving window and sliding-window counter strategies.

Cases: ``try_acquire`` throughput from one thread, from 8 threads, and from 8
asyncio tasks (llmedge: ``acquire_async(key, timeout=0)``); and the latency of
one call, p50/p99, each call alternating with a bare ``PING`` from the same
client (llmedge: ``store.ping()``; the others: their redis-py client), whose
p50/p99 are recorded beside. llmedge's rows also carry interleaved ratios
(every other implementation ran just before each of llmedge's rounds).

``correct``: the implementation admitted exactly 10 of 15 immediate calls on a
fresh key limited to 10 per hour (sync and asyncio).

Run: ``python benches/run.py redis`` (or ``pytest benches/bench_redis.py
--benchmark-enable``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import statistics
import time

import pytest
from baselines.redis_gcra import AsyncRedisGCRA, RedisGCRA
from conftest import QUICK, interleaved, record

import llmedge

redis = pytest.importorskip("redis")
limits = pytest.importorskip("limits")

IMPLS = ["llmedge", "python", "limits-moving", "limits-sliding"]
CALLS = 400 if QUICK else 2000  # per round
THREADS = 8
ROUNDS = 5 if QUICK else 15
LATENCY_CALLS = 1000 if QUICK else 5000
KEYS = [f"user-{i}" for i in range(1000)]
HUGE = 10**9  # a limit never reached: the granting path is timed


class Impl:
    """One implementation's sync and async ``try_acquire``, and its client's PING."""

    def __init__(self, kind: str, url: str, per_hour: int | None, name: str) -> None:
        self.kind = kind
        self.url = url
        self.name = name
        self.per_hour = per_hour  # None: a limit never reached
        self._closers = []
        if kind == "llmedge":
            self.store = llmedge.RedisStore(url, timeout=1.0)
            self._closers.append(self.store.close)
            if per_hour is None:
                lim = llmedge.RateLimiter(HUGE, 1.0, burst=HUGE, store=self.store, name=name)
            else:
                lim = llmedge.RateLimiter(per_hour, 3600.0, burst=per_hour, store=self.store,
                                          name=name)  # fmt: skip
            self.limiter = lim
            self.try_acquire = lim.try_acquire
            self.ping = self.store.ping
        elif kind == "python":
            client = redis.Redis.from_url(url)
            self._closers.append(client.close)
            g = self._gcra(RedisGCRA, client)
            self.try_acquire = g.try_acquire
            self.ping = client.ping
        else:
            from limits import strategies
            from limits.storage import RedisStorage

            storage = RedisStorage(url)
            self._closers.append(storage.storage.close)
            strategy = (
                strategies.MovingWindowRateLimiter
                if kind == "limits-moving"
                else strategies.SlidingWindowCounterRateLimiter
            )(storage)
            item = self._item()
            self.try_acquire = lambda key: strategy.hit(item, f"{name}:{key}")
            self.ping = storage.check
        self.executor = None

    def _item(self):
        from limits import RateLimitItemPerHour, RateLimitItemPerSecond

        if self.per_hour is None:
            return RateLimitItemPerSecond(HUGE)
        return RateLimitItemPerHour(self.per_hour)

    def _gcra(self, cls, client):
        if self.per_hour is None:
            return cls(client, HUGE, 1.0, burst=HUGE, prefix=f"py:{self.name}:")
        return cls(client, self.per_hour, 3600.0, burst=self.per_hour, prefix=f"py:{self.name}:")

    async def _make_async(self):
        """The async try_acquire, built inside the running loop (clients bind to it)."""
        if self.kind == "llmedge":
            lim = self.limiter

            async def attempt(key):
                try:
                    return await lim.acquire_async(key, timeout=0)
                except llmedge.RateLimitExceeded:
                    return False

            return attempt, None
        if self.kind == "python":
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(self.url)
            return self._gcra(AsyncRedisGCRA, client).try_acquire, client.aclose
        from limits.aio import strategies
        from limits.aio.storage import RedisStorage

        storage = RedisStorage(self.url.replace("redis://", "async+redis://", 1),
                               implementation="redispy")  # fmt: skip
        strategy = (
            strategies.MovingWindowRateLimiter
            if self.kind == "limits-moving"
            else strategies.SlidingWindowCounterRateLimiter
        )(storage)
        item = self._item()
        # limits has no close(): its redis.asyncio client is the bridge's
        return (lambda key: strategy.hit(item, f"{self.name}:{key}")), storage.bridge.storage.aclose

    # -- the timed workloads -----------------------------------------------------

    def one_thread(self) -> int:
        acquire = self.try_acquire
        n = 0
        for key in itertools.islice(itertools.cycle(KEYS), CALLS):
            n += bool(acquire(key))
        return n

    def threads(self) -> int:
        if self.executor is None:
            self.executor = concurrent.futures.ThreadPoolExecutor(THREADS)
            self._closers.append(self.executor.shutdown)
        acquire = self.try_acquire
        per = CALLS // THREADS

        def chunk(t: int) -> int:
            return sum(bool(acquire(KEYS[(t * per + i) % len(KEYS)])) for i in range(per))

        return sum(self.executor.map(chunk, range(THREADS)))

    def close(self) -> None:
        for close in reversed(self._closers):
            close()


def _correct(kind: str, url: str) -> bool:
    """Exactly 10 of 15 immediate calls on a fresh key limited to 10 per hour,
    sync and asyncio."""
    tag = f"check-{kind}-{time.monotonic_ns()}"
    impl = Impl(kind, url, 10, tag)
    loop = asyncio.new_event_loop()
    try:
        sync_ok = sum(bool(impl.try_acquire("k")) for _ in range(15)) == 10

        async def async_count() -> int:
            attempt, close = await impl._make_async()
            n = sum([bool(await attempt("a")) for _ in range(15)])
            if close is not None:
                await close()
            return n

        return sync_ok and loop.run_until_complete(async_count()) == 10
    finally:
        impl.close()
        loop.close()


@pytest.fixture(scope="module")
def impls(redis_server):
    made = {kind: Impl(kind, redis_server.url, None, f"bench-{kind}") for kind in IMPLS}
    correct = {kind: _correct(kind, redis_server.url) for kind in IMPLS}
    yield made, correct
    for impl in made.values():
        impl.close()


def _bench(benchmark, impls, impl_name, group, work):
    made, correct = impls
    benchmark.group = group
    record(benchmark, impl_name, correct[impl_name])
    impl = made[impl_name]
    if impl_name == "llmedge":
        others = {k: (lambda k=k: work(made[k])) for k in IMPLS if k != "llmedge"}
        result = interleaved(
            benchmark,
            lambda: work(impl),
            others,
            rounds=ROUNDS,
            check=lambda name, n: _expect(n, name),
        )
    else:
        result = benchmark.pedantic(lambda: work(impl), rounds=ROUNDS, iterations=1)
    _expect(result, impl_name)
    benchmark.extra_info["calls_per_round"] = CALLS


def _expect(n: int, name: str) -> None:
    assert n == CALLS, f"{name} granted {n} of {CALLS} calls of a limit never reached"


@pytest.mark.parametrize("impl", IMPLS)
def test_try_acquire_one_thread(benchmark, impls, impl):
    _bench(benchmark, impls, impl, f"redis: {CALLS} try_acquire, 1 thread", Impl.one_thread)


@pytest.mark.parametrize("impl", IMPLS)
def test_try_acquire_8_threads(benchmark, impls, impl):
    _bench(benchmark, impls, impl, f"redis: {CALLS} try_acquire, 8 threads", Impl.threads)


@pytest.mark.parametrize("impl", IMPLS)
def test_try_acquire_asyncio(benchmark, impls, impl):
    made, _ = impls
    loop = asyncio.new_event_loop()
    # async clients bind to the loop they first run on: one set per test
    built = {k: loop.run_until_complete(made[k]._make_async()) for k in IMPLS}
    per = CALLS // THREADS

    def tasks(it: Impl) -> int:
        attempt = built[it.kind][0]

        async def chunk(t: int) -> int:
            n = 0
            for i in range(per):
                n += bool(await attempt(KEYS[(t * per + i) % len(KEYS)]))
            return n

        async def run() -> int:
            return sum(await asyncio.gather(*(chunk(t) for t in range(THREADS))))

        return loop.run_until_complete(run())

    try:
        _bench(benchmark, impls, impl, f"redis: {CALLS} try_acquire, 8 asyncio tasks", tasks)
    finally:
        for _, close in built.values():
            if close is not None:
                loop.run_until_complete(close())
        loop.close()


def _percentiles(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": statistics.median(values), "p99": q[98]}


@pytest.mark.parametrize("impl", IMPLS)
def test_latency_against_ping(benchmark, impls, impl):
    """One call at a time, each preceded by a bare PING from the same client."""
    made, correct = impls
    it = made[impl]
    pings: list[float] = []
    calls: list[float] = []
    keys = itertools.cycle(KEYS)

    def ping() -> None:
        t = time.perf_counter()
        it.ping()
        pings.append(time.perf_counter() - t)

    def call() -> bool:
        t = time.perf_counter()
        out = it.try_acquire(next(keys))
        calls.append(time.perf_counter() - t)
        return out

    for _ in range(50):  # warm up connections and scripts
        ping()
        call()
    pings.clear()
    calls.clear()
    benchmark.group = "redis: one try_acquire (latency)"
    record(benchmark, impl, correct[impl])
    assert benchmark.pedantic(call, setup=ping, rounds=LATENCY_CALLS, iterations=1)
    if len(calls) < 2:  # --benchmark-disable runs it once
        return
    ours, base = _percentiles(calls), _percentiles(pings)
    benchmark.extra_info["latency"] = {
        "p50": ours["p50"],
        "p99": ours["p99"],
        "ping_p50": base["p50"],
        "ping_p99": base["p99"],
        "p99_over_ping_p99": ours["p99"] / base["p99"],
    }

"""Worker processes for test_circuit_breaker_redis.py and the breaker bench:
each one builds its own RedisStore and breakers (as a gunicorn worker would).
Started with the ``spawn`` method, so everything here is importable from
``tests/`` and takes only picklable arguments."""

from __future__ import annotations

import threading
import time
import traceback

import llmedge


class Boom(Exception):
    pass


def _raise() -> None:
    raise Boom("upstream down")


def _fail(breaker, n: int) -> None:
    for _ in range(n):
        try:
            breaker(_raise)()
        except Boom:
            pass


def _wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.0005)


def open_and_watch(role: int, url: str, reps: int, barrier, results) -> None:
    """Role 0 opens breaker ``mp-open-<i>`` with three failures and reports
    when its third failure returned; the others poll the state without
    making calls (a success would break the run of failures) and report
    when they saw it open; then each checks that a call is rejected."""
    try:
        store = llmedge.RedisStore(url, timeout=1.0)
        for i in range(reps):
            breaker = llmedge.CircuitBreaker(
                f"mp-open-{i}", store=store, failure_threshold=3, recovery_timeout=60.0
            )
            time.sleep(0.05)  # the first sync of a new breaker
            barrier.wait()
            if role == 0:
                _fail(breaker, 3)
                results.put(("open", i, time.monotonic()))
                # the failures reach Redis in the background (up to 50 ms
                # late), which decides the opening: the opener too sees it then
                _wait_until(lambda b=breaker: b.state == "open")
            else:
                _wait_until(lambda b=breaker: b.state == "open")
                results.put(("seen", i, time.monotonic()))
            try:
                breaker(lambda: 1)()
                import redis

                h = redis.Redis.from_url(url).hgetall(f"llmedge:cb:{{mp-open-{i}}}:s")
                results.put(
                    ("error", i, f"role {role} passed: {breaker.metrics()} {h} {time.monotonic()}")
                )
            except llmedge.CircuitOpenError:
                pass
            barrier.wait()
        store.close()
    except BaseException:
        results.put(("error", role, traceback.format_exc()))


def probe(role: int, url: str, threads: int, barrier, release, results) -> None:
    """After the breaker opened (role 0 opens it) and its recovery timeout
    passed, `threads` threads per process call at once; an admitted probe
    holds its call until `release` is set. Reports ("admitted"|"rejected")."""
    try:
        store = llmedge.RedisStore(url, timeout=1.0)
        breaker = llmedge.CircuitBreaker(
            "mp-probe",
            store=store,
            failure_threshold=2,
            recovery_timeout=0.5,
            half_open_max_calls=2,
            success_threshold=2,
        )
        time.sleep(0.05)
        barrier.wait()
        if role == 0:
            _fail(breaker, 2)
        _wait_until(lambda: breaker.state == "open")
        time.sleep(0.6)
        barrier.wait()

        def held() -> str:
            results.put(("admitted", role, time.monotonic()))
            release.wait(30)
            return "ok"

        guarded = breaker(held)

        def one() -> None:
            try:
                guarded()
            except llmedge.CircuitOpenError:
                results.put(("rejected", role, time.monotonic()))
            except BaseException:
                results.put(("error", role, traceback.format_exc()))

        ts = [threading.Thread(target=one) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        _wait_until(lambda: breaker.state == "closed")
        results.put(("closed", role, time.monotonic()))
        store.close()
    except BaseException:
        results.put(("error", role, traceback.format_exc()))

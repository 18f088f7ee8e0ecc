"""A ``SemanticCache`` with ``store=`` in another process, driven over a pipe
(the multi-process tests and benchmarks of the shared cache)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from typing import Any


def _serve(conn: Any, url: Any, cache_kwargs: dict, store_kwargs: dict) -> None:
    import llmedge

    try:
        if "hashing_dim" in cache_kwargs:  # embedders do not cross processes
            cache_kwargs["embedder"] = llmedge.HashingEmbedder(dim=cache_kwargs.pop("hashing_dim"))
        store = llmedge.RedisStore(url, **store_kwargs)
        cache = llmedge.SemanticCache(store=store, **cache_kwargs)
    except Exception as e:  # reported to the test
        conn.send(("raised", type(e).__name__, str(e)))
        return
    conn.send(("ok", None))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        name, args, kwargs = msg
        try:
            conn.send(("ok", _run(cache, name, args, kwargs)))
        except Exception as e:  # reported to the test
            conn.send(("raised", type(e).__name__, str(e)))


def _response(hit: Any) -> Any:
    return None if hit is None else hit.response


def _run(cache: Any, name: str, args: tuple, kwargs: dict) -> Any:
    if name == "get":
        return _response(cache.get(*args, **kwargs))
    if name in ("wait_hit", "wait_miss"):
        # seconds until the lookup hits (misses), or None after `timeout`
        timeout = kwargs.pop("timeout", 10.0)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            hit = cache.get(*args, **kwargs)
            if (hit is not None) == (name == "wait_hit"):
                return time.monotonic() - t0
            time.sleep(0.001)
        return None
    if name == "wait_set":
        # wall time (time.time) right after set returned, for lag measurements
        cache.set(*args, **kwargs)
        return time.time()
    if name == "wait_until_hit_wall":
        # wall time of the first hit, polling every 0.5 ms
        timeout = kwargs.pop("timeout", 10.0)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if cache.get(*args, **kwargs) is not None:
                return time.time()
            time.sleep(0.0005)
        return None
    if name == "pace_sets":
        # `rate` sets per second for `seconds`, on schedule (not back to back)
        rate, seconds, prefix = args
        t0 = time.monotonic()
        n = int(rate * seconds)
        for i in range(n):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            cache.set(f"{prefix} question {i}", f"answer {i}")
        return n
    if name == "len":
        return len(cache)
    return getattr(cache, name)(*args, **kwargs)


def eventually(what: str, check: Any, timeout: float = 20.0) -> Any:
    """Polls `check()` until it returns something true (returned), failing
    the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.01)


class Peer:
    """One process holding one shared cache; ``call(name, *args, **kwargs)``
    runs a method of the cache there (``get`` returns the response).
    ``hashing_dim=n`` gives it a ``HashingEmbedder(dim=n)``."""

    def __init__(self, url: Any, store_kwargs: dict | None = None, **cache_kwargs: Any) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_serve, args=(child, url, cache_kwargs, store_kwargs or {}), daemon=True
        )
        self.proc.start()
        child.close()
        status = self._recv(60.0)
        if status[0] != "ok":
            self.close()
            raise PeerError(status[1], status[2])

    def _recv(self, timeout: float) -> tuple:
        if not self.conn.poll(timeout):
            raise TimeoutError("the peer process did not answer")
        return self.conn.recv()

    def call(self, name: str, *args: Any, timeout: float = 60.0, **kwargs: Any) -> Any:
        self.send(name, *args, **kwargs)
        return self.result(timeout)

    def send(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Starts a call without waiting: ``result()`` returns what it returned."""
        self.conn.send((name, args, kwargs))

    def result(self, timeout: float = 60.0) -> Any:
        status = self._recv(timeout)
        if status[0] != "ok":
            raise PeerError(status[1], status[2])
        return status[1]

    def suspend(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
            self.proc.join(10)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(10)
        self.conn.close()


class PeerError(Exception):
    """An exception raised in the peer: its class name and message."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind

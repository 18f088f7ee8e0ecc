"""Shared state in Redis: :class:`RedisStore` is the connection that
``RateLimiter(..., store=)``, ``MultiRateLimiter(..., store=)`` and
``CircuitBreaker(..., store=)`` share.

The client is Rust (the ``redis`` crate on a small tokio runtime owned by the
store): calls release the GIL, threads do not serialise on one connection, and
no call waits longer than ``timeout`` for Redis.
"""

from __future__ import annotations

import asyncio
import weakref

from llmedge import _core

__all__ = ["RedisStore"]

# One bridge per event loop; None where the loop cannot watch a descriptor
# (then store calls from coroutines run in the loop's default executor).
_bridges: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _core._LoopBridge | None] = (
    weakref.WeakKeyDictionary()
)


def loop_bridge(loop: asyncio.AbstractEventLoop) -> _core._LoopBridge | None:
    """The bridge through which the store's runtime completes futures of
    ``loop`` (see ``src/py/loop_bridge.rs``), created on first use."""
    try:
        return _bridges[loop]
    except KeyError:
        pass
    bridge: _core._LoopBridge | None
    try:
        bridge = _core._LoopBridge(loop)
        loop.add_reader(bridge.fileno(), bridge.drain)
    except NotImplementedError:
        bridge = None
    _bridges[loop] = bridge
    return bridge


class RedisStore(_core.RedisStore):
    """A connection to Redis (``redis://``, ``rediss://``, ``unix://``) or to a
    Redis Cluster (a list of node URLs).

    ``RedisStore(url="redis://localhost:6379/0", *, key_prefix="llmedge:",
    timeout=0.05, connect_timeout=1.0, cluster=None, health_interval=1.0)``

    A heartbeat ``PING`` every ``health_interval`` seconds (skipped while
    other calls get replies) keeps ``health()["connected"]`` true to the
    connection without traffic.
    """

    async def aping(self) -> float:
        """:meth:`ping` without blocking the event loop: the store's runtime
        resolves a future of the loop (or, where the loop cannot watch a
        socket, the ping runs in the loop's default executor)."""
        loop = asyncio.get_running_loop()
        bridge = loop_bridge(loop)
        if bridge is None:
            return await loop.run_in_executor(None, self.ping)
        return await self._ping_async(bridge)

"""asyncio helpers shared by the Router and the FastAPI streaming helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

# Cleanups still running after their caller was cancelled: asyncio keeps only
# weak references to tasks, so they are held here until they end.
_running: set[asyncio.Future[Any]] = set()


def _done(task: asyncio.Future[Any]) -> None:
    _running.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a cleanup that failed has nobody to tell


async def uncancellable(aw: Awaitable[T]) -> T:
    """Awaits ``aw`` run as its own task, which goes on to its end when the
    caller is cancelled meanwhile; the caller still sees the cancellation.

    For cleanups (closing a connection, an async generator) that must happen
    at once: Starlette cancels a streaming response whose client left through
    an anyio cancel scope, which cancels every later ``await`` of the task
    too, so a plain ``await conn.aclose()`` in a ``finally`` never runs and
    the connection stays open until the garbage collector finds it.
    """
    task = asyncio.ensure_future(aw)
    if not task.done():
        _running.add(task)
        task.add_done_callback(_done)
    return await asyncio.shield(task)

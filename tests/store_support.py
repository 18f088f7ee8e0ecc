"""Small helpers shared by the RedisStore and shared-limiter tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from llmedge import RedisStore, StoreError


def wait_for(cond: Callable[[], bool], what: str) -> None:
    """Polls `cond` until it holds; fails after 10 s (a hang, not a slow machine)."""
    deadline = time.monotonic() + 10
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def answers(store: RedisStore) -> bool:
    """Whether the store's server answers a PING now."""
    try:
        store.ping()
    except StoreError:
        return False
    return True

"""Pure-Python baseline for the shared rate limiter: redis-py running the very
Lua GCRA that llmedge runs, so the comparison measures the client (Rust and
the redis crate against redis-py), not the algorithm.

The script is read from llmedge's source (``GCRA_LUA`` in
``src/resilience/limiter_redis.rs``; benchmarks run from a checkout). It keeps
one hash per user key with the theoretical arrival time (TAT, microseconds of
the server's clock) of each limit, reads the time from Redis ``TIME`` and lets
an idle key expire. redis-py's ``Script`` runs it with ``EVALSHA`` and loads
it again on ``NOSCRIPT``.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parents[2] / "src" / "resilience" / "limiter_redis.rs"


@cache
def gcra_lua() -> str:
    text = SOURCE.read_text()
    match = re.search(r'const GCRA_LUA: &str = r#"\n(.*?)"#;', text, re.S)
    if match is None:
        raise RuntimeError(f"GCRA_LUA not found in {SOURCE}")
    return match.group(1)


class _Config:
    def __init__(self, rate: float, per: float, burst: int, prefix: str) -> None:
        if rate <= 0 or per <= 0 or burst < 1:
            raise ValueError(f"rate, per must be > 0 and burst >= 1, got {rate}, {per}, {burst}")
        self.interval = per / rate * 1e6
        self.tau = self.interval * burst
        self.prefix = prefix

    def keys(self, key: str) -> list[str]:
        return [f"{self.prefix}{{{key}}}"]

    def args(self, cost: int) -> list[Any]:
        # mode ("a": acquire), now ("": the server's TIME), one limit: field,
        # interval, tau, cost
        return ["a", "", "tat", f"{self.interval:.17e}", f"{self.tau:.17e}", cost]


class RedisGCRA:
    """``try_acquire(key, cost=1) -> bool`` on a ``redis.Redis`` client."""

    def __init__(self, client: Any, rate: float, per: float = 1.0, *, burst: int, prefix: str):
        self.config = _Config(rate, per, burst, prefix)
        self.script = client.register_script(gcra_lua())

    def try_acquire(self, key: str, cost: int = 1) -> bool:
        # 0: allowed; otherwise the wait in nanoseconds
        return self.script(keys=self.config.keys(key), args=self.config.args(cost)) == 0


class AsyncRedisGCRA:
    """``await try_acquire(key, cost=1) -> bool`` on a ``redis.asyncio.Redis`` client."""

    def __init__(self, client: Any, rate: float, per: float = 1.0, *, burst: int, prefix: str):
        self.config = _Config(rate, per, burst, prefix)
        self.script = client.register_script(gcra_lua())

    async def try_acquire(self, key: str, cost: int = 1) -> bool:
        wait = await self.script(keys=self.config.keys(key), args=self.config.args(cost))
        return wait == 0

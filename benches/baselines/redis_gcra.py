"""Pure-Python baseline for the shared rate limiter: redis-py and a GCRA in one
Lua script, the way a careful engineer writes it without llmedge.

The script keeps one value per key, the theoretical arrival time (TAT, in
microseconds of the server's clock), reads the time from Redis ``TIME`` so
that hosts with skewed clocks agree, and lets an idle key expire once it is
full again. It is loaded once (``SCRIPT LOAD``) and run with ``EVALSHA``;
redis-py's ``Script`` object reloads it on ``NOSCRIPT``.
"""

from __future__ import annotations

from typing import Any

GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])   -- microseconds per unit
local tolerance = tonumber(ARGV[2])  -- interval * burst
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allow_at = new_tat - tolerance
if now < allow_at then
  return {0, allow_at - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0}
"""


class _Config:
    def __init__(self, rate: float, per: float, burst: int, prefix: str) -> None:
        if rate <= 0 or per <= 0 or burst < 1:
            raise ValueError(f"rate, per must be > 0 and burst >= 1, got {rate}, {per}, {burst}")
        self.interval = per / rate * 1e6
        self.tolerance = self.interval * burst
        self.prefix = prefix

    def args(self, cost: int) -> list[Any]:
        return [self.interval, self.tolerance, cost]


class RedisGCRA:
    """``try_acquire(key, cost=1) -> bool`` on a ``redis.Redis`` client."""

    def __init__(self, client: Any, rate: float, per: float = 1.0, *, burst: int, prefix: str):
        self.config = _Config(rate, per, burst, prefix)
        self.script = client.register_script(GCRA_LUA)

    def try_acquire(self, key: str, cost: int = 1) -> bool:
        allowed, _ = self.script(keys=[self.config.prefix + key], args=self.config.args(cost))
        return bool(allowed)


class AsyncRedisGCRA:
    """``await try_acquire(key, cost=1) -> bool`` on a ``redis.asyncio.Redis`` client."""

    def __init__(self, client: Any, rate: float, per: float = 1.0, *, burst: int, prefix: str):
        self.config = _Config(rate, per, burst, prefix)
        self.script = client.register_script(GCRA_LUA)

    async def try_acquire(self, key: str, cost: int = 1) -> bool:
        allowed, _ = await self.script(keys=[self.config.prefix + key], args=self.config.args(cost))
        return bool(allowed)

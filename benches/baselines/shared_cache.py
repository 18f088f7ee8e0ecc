"""A pure-Python semantic cache shared through Redis: what a careful user
writes with redis-py and numpy when several workers must share one cache.

Every entry lives in Redis and every lookup asks Redis: one round trip for
the exact prompt; on a miss, one for every vector of the partition, compared
by numpy brute force; one more for the response of a hit. Nothing is kept in
the process, so what one worker learned is at once visible to the others,
and a restarted worker starts warm.

Bounded like llmedge's: every entry expires after ``ttl`` seconds (a Redis
expiry), and the namespace holds at most ``max_entries`` (least recently used
evicted first, a sorted set of last use). Values are JSON, never pickle.
Keys, under ``{key_prefix}{namespace}:``:

* ``e:{id}``: hash ``prompt``, ``response`` (JSON), expires;
* ``p:{partition}:exact``: hash normalised prompt -> id;
* ``p:{partition}:vec``: hash id -> unit float32 vector;
* ``p:{partition}:norm``: hash id -> normalised prompt;
* ``lru``: sorted set ``{partition}/{id}`` -> time of last use.

An entry whose hash expired is removed from the partition's hashes when a
lookup finds it, or when it leaves the LRU set.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from typing import Any

import numpy as np
import redis

from .cache import _normalize


class RedisPyCache:
    """``get(prompt, partition)`` -> ``(response, "exact"|"semantic")`` or None;
    ``set(prompt, response, partition)``. Redis errors count as misses (a
    lookup) or are dropped (a set): a request never fails because of the cache."""

    def __init__(
        self,
        url: str,
        embed: Any,
        *,
        namespace: str = "chat",
        key_prefix: str = "baseline:",
        threshold: float = 0.85,
        ttl: float = 3600.0,
        max_entries: int = 10_000,
        timeout: float = 0.5,
    ) -> None:
        if not isinstance(url, str):
            raise ValueError(f"the baseline's shared cache takes one Redis URL, got {url!r}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries!r}")
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl!r}")
        self.redis = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.embed = embed
        self.prefix = f"{key_prefix}{namespace}:"
        self.threshold = threshold
        self.ttl = ttl
        self.max_entries = max_entries
        self.lock = threading.Lock()
        self.counts = {
            "exact_hits": 0,
            "semantic_hits": 0,
            "misses": 0,
            "inserts": 0,
            "evictions": 0,
            "expired": 0,
            "redis_errors": 0,
        }

    def _count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def _part(self, partition: str) -> str:
        return hashlib.blake2b(partition.encode(), digest_size=8).hexdigest()

    def _keys(self, part: str) -> tuple[str, str, str]:
        p = f"{self.prefix}p:{part}:"
        return p + "exact", p + "vec", p + "norm"

    def get(self, prompt: str, partition: str) -> tuple[Any, str] | None:
        try:
            found = self._lookup(prompt, self._part(partition))
        except redis.RedisError:
            self._count("redis_errors")
            found = None
        if found is None:
            self._count("misses")
            return None
        self._count(f"{found[1]}_hits")
        return found

    def _lookup(self, prompt: str, part: str) -> tuple[Any, str] | None:
        exact_key, vec_key, _ = self._keys(part)
        norm = _normalize(prompt)
        raw_id = self.redis.hget(exact_key, norm)
        if raw_id is not None:
            found = self._entry(part, raw_id.decode())
            if found is not None:
                return found, "exact"
        vectors = self.redis.hgetall(vec_key)
        if not vectors:
            return None
        ids = list(vectors)
        matrix = np.frombuffer(b"".join(vectors[i] for i in ids), dtype=np.float32)
        matrix = matrix.reshape(len(ids), -1)
        scores = matrix @ _unit(self.embed(prompt))
        best = int(np.argmax(scores))
        if scores[best] < self.threshold:
            return None
        found = self._entry(part, ids[best].decode())
        return None if found is None else (found, "semantic")

    def _entry(self, part: str, entry_id: str) -> Any:
        """The live entry's response (its last use recorded), or None after
        removing what is left of an expired one."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(f"{self.prefix}e:{entry_id}", "response")
        pipe.zadd(f"{self.prefix}lru", {f"{part}/{entry_id}": time.time()}, xx=True)
        raw, _ = pipe.execute()
        if raw is None:
            self._count("expired")
            self._forget(part, entry_id)
            return None
        return json.loads(raw)

    def _forget(self, part: str, entry_id: str) -> None:
        exact_key, _, norm_key = self._keys(part)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hget(norm_key, entry_id)
        self._drop(pipe, part, entry_id)
        norm = pipe.execute()[0]
        # the exact prompt only if it still names this entry: a newer set may own it
        if norm is not None and self.redis.hget(exact_key, norm) == entry_id.encode():
            self.redis.hdel(exact_key, norm)

    def _drop(self, pipe: Any, part: str, entry_id: str) -> None:
        """Queue the removal of an entry, its vector and its place in the LRU order."""
        _, vec_key, norm_key = self._keys(part)
        pipe.hdel(norm_key, entry_id)
        pipe.hdel(vec_key, entry_id)
        pipe.zrem(f"{self.prefix}lru", f"{part}/{entry_id}")
        pipe.delete(f"{self.prefix}e:{entry_id}")

    def set(self, prompt: str, response: Any, partition: str) -> None:
        try:
            self._store(prompt, response, self._part(partition))
        except redis.RedisError:
            self._count("redis_errors")

    def _store(self, prompt: str, response: Any, part: str) -> None:
        exact_key, vec_key, norm_key = self._keys(part)
        norm = _normalize(prompt)
        v = _unit(self.embed(prompt))
        entry_id = uuid.uuid4().hex[:16]
        old = self.redis.hget(exact_key, norm)
        pipe = self.redis.pipeline(transaction=True)
        if old is not None:  # the same prompt again: the new answer replaces the old
            self._drop(pipe, part, old.decode())
        entry = f"{self.prefix}e:{entry_id}"
        pipe.hset(entry, mapping={"prompt": prompt, "response": json.dumps(response)})
        pipe.pexpire(entry, int(self.ttl * 1000))
        pipe.hset(vec_key, entry_id, v.tobytes())
        pipe.hset(norm_key, entry_id, norm)
        pipe.hset(exact_key, norm, entry_id)
        pipe.zadd(f"{self.prefix}lru", {f"{part}/{entry_id}": time.time()})
        pipe.zcard(f"{self.prefix}lru")
        size = pipe.execute()[-1]
        self._count("inserts")
        if size > self.max_entries:
            self._evict(size - self.max_entries)

    def _evict(self, n: int) -> None:
        for member, _ in self.redis.zpopmin(f"{self.prefix}lru", n):
            part, _, entry_id = member.decode().partition("/")
            self._forget(part, entry_id)
            self._count("evictions")

    def __len__(self) -> int:
        return int(self.redis.zcard(f"{self.prefix}lru"))

    def stats(self) -> dict[str, Any]:
        with self.lock:
            c = dict(self.counts)
        hits = c["exact_hits"] + c["semantic_hits"]
        lookups = hits + c["misses"]
        try:
            entries: int | None = len(self)
        except redis.RedisError:
            entries = None
        return {
            "hits": hits,
            **c,
            "lookups": lookups,
            "hit_rate": hits / lookups if lookups else 0.0,
            "entries": entries,
        }

    def close(self) -> None:
        self.redis.close()


def _unit(vector: Any) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32)
    n = np.linalg.norm(v)
    return v / n if n > 0 else v  # an empty prompt's zero vector matches nothing

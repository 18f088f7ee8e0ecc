"""The :class:`Router`: ranking, fallback, hedging, deadlines, statistics."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from llmedge import _core
from llmedge.errors import (
    CircuitOpenError,
    UpstreamClientError,
    UpstreamError,
)
from llmedge.resilience import CircuitBreaker, MultiRateLimiter
from llmedge.retry import Retry
from llmedge.routing.call import (
    RouterStream,
    _admit_call,
    _BlockingStream,
    _Call,
    _LoopThread,
    _Slot,
)
from llmedge.routing.upstream import (
    Attempt,
    RouterResponse,
    Upstream,
    _all_failed,
    _as_upstream,
    _positive,
)


class Router:
    """Routes chat completions over OpenAI-compatible upstreams (see
    docs/routing.md).

    ``Router(upstreams, *, strategy="ordered", retry=None, hedge=False,
    deadline=None, latency_target=None, explore_after=5.0, alpha=0.2,
    hedge_min_samples=20, breaker=None, client=None, name="router", seed=None,
    clock=None, store=None)``
    """

    def __init__(
        self,
        upstreams: Sequence[Upstream | str | Mapping[str, Any]],
        *,
        strategy: str = "ordered",
        retry: Retry | None = None,
        hedge: bool = False,
        deadline: float | None = None,
        latency_target: float | None = None,
        explore_after: float | None = 5.0,
        alpha: float = 0.2,
        hedge_min_samples: int = 20,
        breaker: Mapping[str, Any] | None = None,
        client: Any = None,
        name: str = "router",
        seed: int | None = None,
        clock: Callable[[], float] | None = None,
        store: Any = None,
    ) -> None:
        if isinstance(upstreams, (str, Mapping, Upstream)) or not isinstance(upstreams, Sequence):
            raise TypeError(
                f"upstreams must be a list of Upstream (or base URLs, or Upstream keyword "
                f"mappings), got {upstreams!r}"
            )
        if not upstreams:
            raise ValueError("upstreams must not be empty: give at least one Upstream")
        ups = [_as_upstream(u) for u in upstreams]
        names = [u.name for u in ups]
        if len(set(names)) != len(names):
            raise ValueError(f"upstream names must be unique, got {names!r}")
        _positive("deadline", deadline, allow_none=True)
        if deadline is not None:
            for u in ups:
                if deadline < u.connect_timeout:
                    raise ValueError(
                        f"deadline ({deadline} s) is shorter than upstream {u.name!r}'s "
                        f"connect_timeout ({u.connect_timeout} s): no call could even connect"
                    )
        if not isinstance(hedge, bool):
            raise TypeError(f"hedge must be True or False, got {hedge!r}")
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"retry must be an llmedge.Retry or None, got {retry!r}")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a zero-argument callable, got {clock!r}")
        if breaker is not None and not isinstance(breaker, Mapping):
            raise TypeError(
                f"breaker must be a mapping of CircuitBreaker settings, got {breaker!r}"
            )
        self._selector = _core.RouteSelector(
            [float(u.weight) for u in ups],
            strategy=strategy,
            latency_target=latency_target,
            explore_after=explore_after,
            alpha=alpha,
            hedge_min_samples=hedge_min_samples,
            seed=seed,
        )
        self.name = name
        self.strategy = strategy
        self.hedge = hedge
        self.deadline = deadline
        self.retry = retry if retry is not None else Retry(len(ups), base=0.05, max_delay=1.0)
        self._clock: Callable[[], float] = clock or time.monotonic
        # ``store`` (shared breaker and limiter state across processes) is
        # passed to each upstream's CircuitBreaker and MultiRateLimiter.
        shared = {} if store is None else {"store": store}
        defaults = {"failure_threshold": 5, "recovery_timeout": 10.0, **(breaker or {})}
        self._slots: list[_Slot] = []
        for i, u in enumerate(ups):
            b = u.breaker
            if b is None or isinstance(b, Mapping):
                config = {**defaults, **(b or {})}
                config.setdefault("exclude", (UpstreamClientError,))
                b = CircuitBreaker(f"{name}:{u.name}", clock=clock, **config, **shared)
            elif not all(
                callable(getattr(b, m, None))
                for m in ("_acquire", "_on_success", "_on_error", "_release", "metrics")
            ):
                raise TypeError(
                    f"upstream {u.name!r}: breaker must be a mapping of CircuitBreaker settings "
                    f"or a circuit breaker object, got {b!r}"
                )
            limits: dict[str, tuple[float, float, int]] = {}
            if u.rpm:
                limits["requests"] = (float(u.rpm), 60.0, u.rpm)
            if u.tpm:
                limits["tokens"] = (float(u.tpm), 60.0, u.tpm)
            # With a store the limiter's name keys its state in Redis: one per
            # router and upstream, so two upstreams with equal limits never share.
            named = {"name": f"{name}:{u.name}", **shared} if shared else {}
            limiter = MultiRateLimiter(limits, clock=clock, **named) if limits else None
            self._slots.append(_Slot(i, u, b, limiter))
        self._client = client
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}
        self._loop_thread: _LoopThread | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"Router(name={self.name!r}, upstreams={[s.name for s in self._slots]!r}, "
            f"strategy={self.strategy!r}, hedge={self.hedge}, deadline={self.deadline})"
        )

    @property
    def upstreams(self) -> list[Upstream]:
        return [s.up for s in self._slots]

    @property
    def breakers(self) -> list[Any]:
        """Each upstream's circuit breaker, in the order of ``upstreams``."""
        return [s.breaker for s in self._slots]

    # -- clients and lifetime ---------------------------------------------

    def _http(self) -> Any:
        if self._client is not None:
            return self._client
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            try:
                import httpx
            except ImportError:
                raise ImportError(
                    "llmedge.Router sends requests with httpx: pip install 'llmedge[router]'"
                ) from None
            client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=512, max_keepalive_connections=256),
                trust_env=False,
            )
            with self._lock:
                self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        """Closes the connection pools this router opened on this loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()

    def close(self) -> None:
        """Closes the blocking methods' loop and its connections."""
        with self._lock:
            lt, self._loop_thread = self._loop_thread, None
        if lt is not None:
            lt.run(self.aclose())
            lt.stop()

    async def __aenter__(self) -> Router:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _blocking(self) -> _LoopThread:
        with self._lock:
            if self._loop_thread is None:
                self._loop_thread = _LoopThread()
            return self._loop_thread

    # -- statistics -------------------------------------------------------

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per upstream: selections, successes, failures, latency EWMA and
        quantiles, time to first token, error rate, breaker state."""
        out = {}
        now = self._clock()
        for s in self._slots:
            row = self._selector.stats(s.index)
            row["breaker"] = s.breaker.metrics()["state"]
            row["cooling_down"] = max(0.0, s.cooldown_until - now)
            out[s.name] = row
        return out

    # -- requests ---------------------------------------------------------

    def _prepare(self, body: Mapping[str, Any] | None, fields: dict[str, Any]) -> dict[str, Any]:
        merged = {**(body or {}), **fields}
        if not isinstance(merged.get("model"), str) or not merged["model"]:
            raise ValueError(f"a chat request needs a model name, got {merged.get('model')!r}")
        if not isinstance(merged.get("messages"), list) or not merged["messages"]:
            raise ValueError("a chat request needs a non-empty list of messages")
        return merged

    def _prices(self, model: str) -> None:
        if not self._selector.has_prices(model):
            prices = []
            for s in self._slots:
                unit = s.up.unit_prices(model)
                prices.append(math.inf if unit is None else unit[0] + unit[1])
            self._selector.set_prices(model, prices)

    def _estimate_tokens(self, body: Mapping[str, Any]) -> int:
        try:
            prompt = _core.count_messages(body["messages"], body["model"])
        except (KeyError, TypeError, ValueError):
            prompt = sum(len(str(m.get("content") or "")) for m in body["messages"]) // 4
        out = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        return int(prompt) + int(out)

    def _admit(self, slot: _Slot, body: Mapping[str, Any], now: float, tokens: list[int]) -> str:
        """ "" if a call may go to ``slot`` now, else why not."""
        if slot.cooldown_until > now:
            return "cooling_down"
        if slot.limiter is not None:
            costs = {"requests": 1} if slot.up.rpm else {}
            if slot.up.tpm:
                if not tokens:
                    tokens.append(self._estimate_tokens(body))
                costs["tokens"] = tokens[0]
            if not slot.limiter.try_acquire("", **costs):
                return "rate_limited"
        return ""

    def cost_of(self, upstream: str, model: str, usage: Mapping[str, Any] | None) -> float:
        """USD of ``usage`` (an OpenAI usage object) at ``upstream``'s price."""
        slot = next((s for s in self._slots if s.name == upstream), None)
        if slot is None or not usage:
            return 0.0
        unit = slot.up.unit_prices(model)
        if unit is None:
            return 0.0
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        return (prompt * unit[0] + completion * unit[1]) / 1e6

    async def _race(self, body: dict[str, Any], stream: bool) -> tuple[_Call, Any, list[Attempt]]:
        """Walks the ranking: falls back on failure, hedges a slow call, and
        returns the first call that answered (for a stream: whose first token
        arrived) with the attempts made; every other call is cancelled."""
        started = self._clock()
        self.retry._record_call()
        model = body["model"]
        if self.strategy == "least_cost":
            self._prices(model)
        order, hedge_after, explored = self._selector.rank(stream, model, started)
        attempts: list[Attempt] = []
        errors: list[UpstreamError] = []
        open_retry: list[float] = []
        tokens: list[int] = []
        tried: set[int] = set()
        position = 0  # next position in the ranking
        rounds = 0
        budget_calls = self.retry.attempts
        delays: list[float] | None = None
        pending: dict[asyncio.Task[Any], _Call] = {}
        hedged = False
        client = self._http()
        deadline = None if self.deadline is None else started + self.deadline

        async def launch(hedge: bool) -> bool:
            """Starts a call to the next admissible upstream; False if none."""
            nonlocal position, budget_calls
            while position < len(order) and budget_calls > 0:
                slot = self._slots[order[position]]
                position += 1
                now = self._clock()
                reason = self._admit(slot, body, now, tokens)
                if not reason:
                    try:
                        permit = await _admit_call(slot.breaker)
                    except CircuitOpenError as exc:
                        open_retry.append(float(exc.retry_after))
                        reason = "circuit_open"
                    else:
                        if slot.index in tried and not self.retry._try_retry():
                            slot.breaker._release(permit)
                            reason = "budget"
                if reason:
                    if reason == "cooling_down":
                        open_retry.append(slot.cooldown_until - now)
                    attempts.append(Attempt(slot.name, reason, hedge=hedge))
                    continue
                tried.add(slot.index)
                budget_calls -= 1
                call = _Call(self, slot, hedge)
                call.permit = permit
                sent = {**body, "model": slot.up.model_for(model)}
                work = call.open(client, sent) if stream else call.complete(client, sent)
                limit = slot.up.read_timeout if stream else slot.up.timeout
                pending[asyncio.ensure_future(asyncio.wait_for(work, limit))] = call
                return True
            return False

        async def cancel_all() -> None:
            for task, call in list(pending.items()):
                task.cancel()
                try:
                    await task
                except BaseException:  # noqa: BLE001 - cancelled or failed: either way it is over
                    pass
                await call.close()
                call.settle("cancelled")
                attempts.append(
                    Attempt(call.slot.name, "cancelled", call.elapsed(), hedge=call.hedge)
                )
            pending.clear()

        try:
            if explored and len(order) > 1:
                # An upstream left alone for a while goes first, raced by the
                # usual pick: learning whether it recovered costs one call,
                # never the caller's time.
                await launch(False)
                if any(c.slot.index == order[0] for c in pending.values()):
                    await launch(True)
                    hedged = True
            while True:
                if not pending:
                    if not await launch(False):
                        # Every upstream was tried once: another round if
                        # attempts remain, after the backoff schedule.
                        if budget_calls <= 0 or not tried:
                            break
                        delays = self.retry.delays() if delays is None else delays
                        if rounds >= len(delays):
                            break
                        wait = delays[rounds]
                        asked = [e.retry_after for e in errors if e.retry_after]
                        if self.retry.respect_retry_after and asked:
                            wait = max(wait, min(asked))
                        if deadline is not None and self._clock() + wait >= deadline:
                            break
                        rounds += 1
                        await asyncio.sleep(wait)
                        order, hedge_after, _ = self._selector.rank(stream, model, self._clock())
                        position = 0
                        continue
                timeout: float | None = None
                can_hedge = self.hedge and not hedged and len(pending) == 1
                if can_hedge:
                    (only,) = pending.values()
                    delay = hedge_after[order.index(only.slot.index)]
                    if delay is not None:
                        timeout = max(0.0, only.started + delay - self._clock())
                if deadline is not None:
                    left = deadline - self._clock()
                    if left <= 0:
                        await cancel_all()
                        errors.append(UpstreamError("the deadline passed", timeout=True))
                        break
                    timeout = left if timeout is None else min(timeout, left)
                done, _ = await asyncio.wait(
                    pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    if can_hedge and (deadline is None or self._clock() < deadline):
                        # A hedge goes to another upstream than the slow one,
                        # at most once per request: not a retry, no budget.
                        hedged = True
                        await launch(True)
                    continue
                winner: _Call | None = None
                # answers first: one that came with a failure still wins
                for task in sorted(done, key=lambda t: t.exception() is not None):
                    call = pending.pop(task)
                    exc = task.exception()
                    if exc is None and winner is None:
                        winner = call
                        result = task.result()
                        continue
                    if exc is None:  # a second answer in the same instant: not needed
                        await call.close()
                        call.settle("cancelled")
                        attempts.append(
                            Attempt(call.slot.name, "cancelled", call.elapsed(), hedge=call.hedge)
                        )
                        continue
                    await call.close()
                    if isinstance(exc, UpstreamClientError):
                        call.settle("client_error")
                        attempts.append(
                            Attempt(
                                call.slot.name,
                                "client_error",
                                call.elapsed(),
                                exc.status,
                                str(exc),
                                call.hedge,
                            )
                        )
                        await cancel_all()
                        raise exc
                    if isinstance(exc, asyncio.TimeoutError) and not isinstance(exc, UpstreamError):
                        exc = call._failure("timed out", timeout=True)
                    if not isinstance(exc, UpstreamError):
                        exc = call._failure(f"failed: {exc!r}")
                    call.settle("timeout" if exc.timeout else "error", exc)
                    errors.append(exc)
                    attempts.append(
                        Attempt(
                            call.slot.name,
                            "timeout" if exc.timeout else "error",
                            call.elapsed(),
                            exc.status,
                            str(exc),
                            call.hedge,
                        )
                    )
                if winner is not None:
                    await cancel_all()
                    attempts.append(
                        Attempt(winner.slot.name, "ok", winner.elapsed(), 200, None, winner.hedge)
                    )
                    return winner, result, attempts
        except BaseException:
            await cancel_all()
            raise
        raise _all_failed(attempts, errors, open_retry)

    async def achat(
        self, body: Mapping[str, Any] | None = None, /, **fields: Any
    ) -> RouterResponse:
        """One chat completion (``body`` and/or keyword fields of an OpenAI
        request): the first upstream that answers, its body unchanged."""
        request = self._prepare(body, fields)
        request["stream"] = False
        started = self._clock()
        call, data, attempts = await self._race(request, stream=False)
        call.settle("ok")
        return RouterResponse(
            body=data,
            upstream=call.slot.name,
            attempts=attempts,
            elapsed=max(0.0, self._clock() - started),
            cost=self.cost_of(call.slot.name, request["model"], data.get("usage")),
        )

    def chat(self, body: Mapping[str, Any] | None = None, /, **fields: Any) -> RouterResponse:
        """:meth:`achat` for blocking code (runs on the router's own loop thread)."""
        return self._blocking().run(self.achat(body, **fields))

    async def astream(
        self, body: Mapping[str, Any] | None = None, /, **fields: Any
    ) -> RouterStream:
        """A streamed chat completion, committed to the first upstream whose
        first token arrived: iterate the returned :class:`RouterStream` for
        the upstream's ``chat.completion.chunk`` events, unchanged."""
        request = self._prepare(body, fields)
        request["stream"] = True
        started = self._clock()
        call, _, attempts = await self._race(request, stream=True)
        return RouterStream(self, call, request["model"], attempts, started)

    def stream(
        self, body: Mapping[str, Any] | None = None, /, **fields: Any
    ) -> Iterator[dict[str, Any]]:
        """:meth:`astream` for blocking code: the chunks, from the router's loop thread."""
        lt = self._blocking()
        s = lt.run(self.astream(body, **fields))
        return _BlockingStream(lt, s)

"""Routing over OpenAI-compatible upstreams (:class:`Router`).

:class:`Router` sends chat completions to a set of :class:`Upstream` s: it
ranks them per request (strategy), falls back on failure, optionally hedges a
slow first upstream, keeps each behind its own circuit breaker and rate
limit, and learns their latency and error rate.

The decisions (statistics, ranking) are made in Rust
(``llmedge._core.RouteSelector``); this module does the HTTP, with httpx
(``pip install 'llmedge[router]'``), imported when a Router first sends a
request. Retries follow a :class:`llmedge.Retry`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from llmedge import _core
from llmedge.errors import (
    AllUpstreamsFailedError,
    CircuitOpenError,
    UpstreamClientError,
    UpstreamError,
)
from llmedge.resilience import CircuitBreaker, MultiRateLimiter
from llmedge.retry import Retry, parse_retry_after
from llmedge.sse import event_content, parse_openai_events

__all__ = [
    "Router",
    "Upstream",
    "Attempt",
    "RouterResponse",
    "RouterStream",
]

T = TypeVar("T")


# ---------------------------------------------------------------------------
# Router: configuration and results
# ---------------------------------------------------------------------------


def _positive(name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        accepted = "None or " if allow_none else ""
        raise ValueError(f"{name} must be {accepted}a finite number > 0, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Upstream:
    """One OpenAI-compatible upstream.

    ``base_url`` ends before ``/chat/completions`` (``https://api.openai.com/v1``);
    ``models`` maps a request's model name to this upstream's (others pass
    unchanged); ``price`` is USD per million (input, output) tokens for every
    model it serves (None: the model table's price of the model sent);
    ``connect_timeout``, ``read_timeout`` (to the first byte and between
    bytes) and ``timeout`` (a whole non-streamed answer) in seconds; ``rpm``
    and ``tpm`` limit requests and estimated tokens per minute; ``breaker``
    is the configuration of its :class:`llmedge.CircuitBreaker` (a mapping
    of keyword arguments) or a breaker object to use as it is.
    """

    base_url: str
    api_key: str | None = None
    name: str | None = None
    models: Mapping[str, str] = dataclasses.field(default_factory=dict)
    weight: float = 1.0
    price: tuple[float, float] | None = None
    connect_timeout: float = 2.0
    read_timeout: float = 30.0
    timeout: float = 120.0
    rpm: int | None = None
    tpm: int | None = None
    breaker: Any = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.base_url, str) or not self.base_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError(
                f"base_url must be an http(s) URL such as https://api.openai.com/v1, "
                f"got {self.base_url!r}"
            )
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if self.name is None:
            object.__setattr__(self, "name", self.base_url)
        if (
            isinstance(self.weight, bool)
            or not isinstance(self.weight, (int, float))
            or not math.isfinite(self.weight)
            or self.weight < 0
        ):
            raise ValueError(
                f"upstream {self.name!r}: weight must be a finite number >= 0, got {self.weight!r}"
            )
        for key in ("connect_timeout", "read_timeout", "timeout"):
            _positive(f"upstream {self.name!r}: {key}", getattr(self, key))
        for key in ("rpm", "tpm"):
            value = getattr(self, key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(
                    f"upstream {self.name!r}: {key} must be None or an integer >= 1, got {value!r}"
                )
        if self.price is not None:
            ok = (
                isinstance(self.price, tuple)
                and len(self.price) == 2
                and all(isinstance(p, (int, float)) and p >= 0 for p in self.price)
            )
            if not ok:
                raise ValueError(
                    f"upstream {self.name!r}: price must be None or (input, output) USD per "
                    f"million tokens, got {self.price!r}"
                )
        if not isinstance(self.models, Mapping):
            raise TypeError(
                f"upstream {self.name!r}: models must be a mapping, got {self.models!r}"
            )

    def model_for(self, model: str) -> str:
        return self.models.get(model, model)

    def unit_prices(self, model: str) -> tuple[float, float] | None:
        """USD per million (input, output) tokens of ``model`` sent here."""
        if self.price is not None:
            return (float(self.price[0]), float(self.price[1]))
        try:
            info = _core.model_info(self.model_for(model))
        except KeyError:
            return None
        return (float(info["input_price"]), float(info["output_price"]))


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One upstream tried for a request. ``outcome``: ``"ok"``, ``"error"``,
    ``"timeout"``, ``"client_error"``, ``"cancelled"`` (a lost hedge),
    ``"circuit_open"``, ``"rate_limited"`` or ``"cooling_down"`` (the last
    three made no call)."""

    upstream: str
    outcome: str
    seconds: float = 0.0
    status: int | None = None
    error: str | None = None
    hedge: bool = False


@dataclasses.dataclass
class RouterResponse:
    """An upstream's completion, unchanged (``body``), with which upstream
    answered, what was tried, the seconds spent and the cost in USD."""

    body: dict[str, Any]
    upstream: str
    attempts: list[Attempt]
    elapsed: float
    cost: float


# ---------------------------------------------------------------------------
# Router: one call to one upstream
# ---------------------------------------------------------------------------


class _Slot:
    """An upstream with its breaker, limiter and index in the selector."""

    def __init__(self, index: int, up: Upstream, breaker: Any, limiter: Any) -> None:
        self.index = index
        self.up = up
        self.name: str = up.name  # type: ignore[assignment]
        self.url = up.base_url + "/chat/completions"
        self.breaker = breaker
        self.limiter = limiter
        self.cooldown_until = 0.0
        headers = dict(up.headers)
        if up.api_key:
            headers["Authorization"] = f"Bearer {up.api_key}"
        self.headers = headers
        self._http: tuple[Any, Any] | None = None

    def http(self) -> tuple[Any, Any]:
        """(URL, timeouts) as httpx objects, built once (httpx parses a URL
        string on every request otherwise)."""
        if self._http is None:
            import httpx

            up = self.up
            timeout = httpx.Timeout(
                connect=up.connect_timeout,
                read=up.read_timeout,
                write=up.read_timeout,
                pool=up.connect_timeout,
            )
            self._http = (httpx.URL(self.url), timeout)
        return self._http


def _substantive(event: Mapping[str, Any]) -> bool:
    """An event carrying the answer's start: content, a tool call or a finish."""
    if event_content(event):
        return True
    for choice in event.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("tool_calls") or delta.get("function_call") or choice.get("finish_reason"):
            return True
    return False


def _valid_completion(data: Any) -> bool:
    try:
        message = data["choices"][0]["message"]
        usage = data.get("usage")
    except (KeyError, IndexError, TypeError, AttributeError):
        return False
    return isinstance(message, dict) and (
        usage is None
        or (
            isinstance(usage, dict)
            and all(
                isinstance(usage.get(k, 0), int) for k in ("prompt_tokens", "completion_tokens")
            )
        )
    )


def _error_body(raw: bytes) -> Any:
    import json

    try:
        return json.loads(raw)
    except ValueError:
        text = raw.decode("utf-8", "replace")[:500]
        return {"error": {"message": text, "type": "upstream_error", "code": None}}


class _Call:
    """One upstream call in flight: its permit, its timing, and (streams)
    the open response and the events read so far."""

    def __init__(self, router: Router, slot: _Slot, hedge: bool) -> None:
        self.router = router
        self.slot = slot
        self.hedge = hedge
        self.permit: Any = None
        self.started = router._clock()
        self.first: float | None = None
        self.response: Any = None
        self.events: AsyncIterator[dict[str, Any]] | None = None
        self.head: list[dict[str, Any]] = []
        self.usage: dict[str, Any] = {}
        self.tokens = 0
        self.settled = False
        self.id = router._selector.begin(slot.index, self.started)

    def elapsed(self) -> float:
        return max(0.0, self.router._clock() - self.started)

    def _failure(self, message: str, **kw: Any) -> UpstreamError:
        return UpstreamError(f"{self.slot.name}: {message}", upstream=self.slot.name, **kw)

    async def _send(self, client: Any, body: dict[str, Any], stream: bool) -> Any:
        import httpx

        url, timeout = self.slot.http()
        request = client.build_request(
            "POST", url, json=body, headers=self.slot.headers, timeout=timeout
        )
        try:
            response = await client.send(request, stream=stream)
        except httpx.TimeoutException as exc:
            raise self._failure(f"timed out: {exc!r}", timeout=True) from exc
        except httpx.HTTPError as exc:
            raise self._failure(f"failed: {exc!r}") from exc
        if response.status_code >= 400:
            raw = await response.aread() if stream else response.content
            if stream:
                await response.aclose()
            status = response.status_code
            if status in (408, 429) or status >= 500:
                asked = parse_retry_after(response.headers.get("retry-after"), time.time())
                raise self._failure(f"answered {status}", status=status, retry_after=asked)
            raise UpstreamClientError(
                f"{self.slot.name} answered {status}",
                upstream=self.slot.name,
                status=status,
                body=_error_body(raw),
            )
        return response

    async def complete(self, client: Any, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        response = await self._send(client, body, stream=False)
        try:
            data = response.json()
        except ValueError:
            data = None
        except httpx.HTTPError as exc:
            raise self._failure(f"failed: {exc!r}") from exc
        if not _valid_completion(data):
            raise self._failure("sent a malformed completion")
        self.first = self.router._clock()
        return data  # type: ignore[no-any-return]

    async def open(self, client: Any, body: dict[str, Any]) -> None:
        """Reads the stream up to its first token (the call stays open)."""
        import httpx

        self.response = await self._send(client, body, stream=True)
        self.events = parse_openai_events(self.response.aiter_lines(), on_usage=self.usage.update)
        try:
            async for event in self.events:
                self.head.append(event)
                if _substantive(event):
                    self.first = self.router._clock()
                    self.tokens += 1
                    self.router._selector.first_token(self.slot.index, self.id)
                    return
        except httpx.TimeoutException as exc:
            raise self._failure(f"timed out: {exc!r}", timeout=True) from exc
        except (httpx.HTTPError, ConnectionError) as exc:
            raise self._failure(f"failed: {exc}") from exc
        raise self._failure("ended its stream before the first token")

    async def close(self) -> None:
        events, response = self.events, self.response
        self.events = self.response = None
        if events is not None:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:  # a broken stream being closed has nothing more to say
                    pass
        if response is not None:
            await response.aclose()

    def settle(self, outcome: str, exc: BaseException | None = None) -> None:
        """Reports the call to its breaker and the selector, once."""
        if self.settled:
            return
        self.settled = True
        r, i, b = self.router, self.slot.index, self.slot.breaker
        elapsed = self.elapsed()
        if outcome == "ok":
            first = elapsed if self.first is None else max(0.0, self.first - self.started)
            r._selector.success(i, self.id, elapsed, first, self.tokens)
            b._on_success(self.permit)
        elif outcome == "cancelled":
            r._selector.cancelled(i, self.id, elapsed)
            b._release(self.permit)
        elif outcome == "client_error":
            r._selector.cancelled(i, self.id, 0.0)
            b._on_success(self.permit)
        else:
            r._selector.failure(i, self.id, elapsed)
            b._on_error(self.permit, exc if exc is not None else UpstreamError(outcome))
            # A 429 is about our quota there: leave that upstream alone for as
            # long as it asked (other statuses' Retry-After only pace retries).
            asked = getattr(exc, "retry_after", None)
            if (
                getattr(exc, "status", None) == 429
                and isinstance(asked, (int, float))
                and asked > 0
            ):
                self.slot.cooldown_until = max(self.slot.cooldown_until, r._clock() + asked)


# ---------------------------------------------------------------------------
# Router
# ---------------------------------------------------------------------------


class _LoopThread:
    """An event loop on a daemon thread, for the blocking methods."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="llmedge-router", daemon=True
        )
        self.thread.start()

    def run(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()  # type: ignore[arg-type]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


class Router:
    """Routes chat completions over OpenAI-compatible upstreams (see the
    README's Router section).

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


async def _admit_call(breaker: Any) -> Any:
    """A breaker permit, without blocking the loop where the breaker offers
    an async way (a breaker whose state is shared through a store)."""
    acquire_async = getattr(breaker, "_acquire_async", None)
    if acquire_async is not None:
        return await acquire_async()
    return breaker._acquire()


def _as_upstream(u: Upstream | str | Mapping[str, Any]) -> Upstream:
    if isinstance(u, Upstream):
        return u
    if isinstance(u, str):
        return Upstream(u)
    if isinstance(u, Mapping):
        return Upstream(**u)
    raise TypeError(f"an upstream must be an Upstream, a base URL or a mapping, got {u!r}")


def _all_failed(
    attempts: list[Attempt], errors: list[UpstreamError], open_retry: list[float]
) -> AllUpstreamsFailedError:
    if not errors:
        wait = min((w for w in open_retry if w >= 0), default=0.0)
        return AllUpstreamsFailedError(
            "every upstream is unavailable (circuit open, rate limited or cooling down): "
            + ", ".join(f"{a.upstream} {a.outcome}" for a in attempts),
            attempts=attempts,
            retry_after=wait,
        )
    return AllUpstreamsFailedError(
        "every upstream failed: " + "; ".join(str(e) for e in errors),
        attempts=attempts,
        errors=errors,
        timeout=errors[-1].timeout,
    )


class RouterStream:
    """The chunks of a streamed completion (an async iterator of dicts),
    with ``upstream``, ``attempts``, ``elapsed`` (seconds to the first
    token), and once it ended ``usage`` (when the upstream sent it) and
    ``cost``. A stream cut by the upstream raises :class:`UpstreamError`;
    ``aclose()`` (or leaving an ``async with``) closes the connection."""

    def __init__(
        self, router: Router, call: _Call, model: str, attempts: list[Attempt], started: float
    ) -> None:
        self._router = router
        self._call = call
        self._model = model
        self.upstream = call.slot.name
        self.attempts = attempts
        self.elapsed = max(0.0, router._clock() - started)
        self.usage: dict[str, Any] = call.usage
        self.cost = 0.0
        self._head = list(call.head)
        self._done = False

    def __aiter__(self) -> RouterStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._head:
            return self._head.pop(0)
        call = self._call
        if self._done or call.events is None:
            raise StopAsyncIteration
        import httpx

        try:
            event = await call.events.__anext__()
        except StopAsyncIteration:
            await self._finish("ok")
            raise
        except httpx.TimeoutException as exc:
            err = call._failure(f"timed out mid-stream: {exc!r}", timeout=True)
            await self._finish("timeout", err)
            raise err from exc
        except (httpx.HTTPError, ConnectionError) as exc:
            err = call._failure(f"stream failed: {exc}")
            await self._finish("error", err)
            raise err from exc
        except BaseException:
            await self._finish("cancelled")
            raise
        if _substantive(event):
            call.tokens += 1
        return event

    async def _finish(self, outcome: str, exc: BaseException | None = None) -> None:
        if self._done:
            return
        self._done = True
        await self._call.close()
        self._call.settle(outcome, exc)
        self.cost = self._router.cost_of(self.upstream, self._model, self.usage)

    async def aclose(self) -> None:
        """Ends the stream early: closes the connection; the call counts as a
        success for the upstream (it answered)."""
        await self._finish("ok")

    def __del__(self) -> None:
        # Dropped without being closed: hand the upstream's permit back as
        # answered (the connection is closed by httpx's own finaliser).
        call = getattr(self, "_call", None)
        if call is not None and not self._done:
            self._done = True
            call.settle("ok")

    async def __aenter__(self) -> RouterStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _BlockingStream(Iterator[dict[str, Any]]):
    def __init__(self, lt: _LoopThread, stream: RouterStream) -> None:
        self._lt = lt
        self.stream = stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def __next__(self) -> dict[str, Any]:
        try:
            return self._lt.run(self.stream.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        self._lt.run(self.stream.aclose())

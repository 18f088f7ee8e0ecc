"""Router configuration and results: :class:`Upstream`, :class:`Attempt`,
:class:`RouterResponse`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from llmedge import _core
from llmedge.errors import (
    AllUpstreamsFailedError,
    UpstreamError,
)


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
    waits = [w for w in open_retry if w >= 0]
    if not errors:
        wait = min(waits, default=0.0)
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
        # beside failed calls, the upstreams that made none: when they admit again
        retry_after=min(waits) if waits else None,
    )

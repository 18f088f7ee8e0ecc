"""The gateway's upstreams: their labels, the Router over them, and what a
client is told when none answered.

An upstream is named by a label (``LLMEDGE_UPSTREAMS`` entries
``label=url``, else ``upstream-<index>``): the label, never the base URL,
is what clients see in error bodies, ``/chat`` answers, ``/health`` and
``/metrics``; the URLs go to the ``llmedge.gateway`` log only.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import llmedge
from llmedge.fastapi import OpenAIError

log = logging.getLogger("llmedge.gateway")

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def parse_upstreams(entries: Sequence[str]) -> list[tuple[str, str]]:
    """``[(label, base URL)]`` from entries ``url`` or ``label=url`` (an
    unlabelled entry is ``upstream-<index>``). Raises ValueError naming the
    bad entry."""
    out: list[tuple[str, str]] = []
    for i, raw in enumerate(entries):
        entry = raw.strip()
        label, url = f"upstream-{i}", entry
        if not entry.startswith(("http://", "https://")) and "=" in entry:
            label, url = (part.strip() for part in entry.split("=", 1))
            if not _LABEL.fullmatch(label):
                raise ValueError(
                    f"LLMEDGE_UPSTREAMS entry {i}: the label {label!r} must be 1-64 letters, "
                    f"digits, '_', '.' or '-' (starting with a letter or digit)"
                )
        url = url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError(
                f"LLMEDGE_UPSTREAMS entries must be http(s) base URLs such as "
                f"http://127.0.0.1:8001/v1, optionally labelled (primary=http://...), "
                f"got {raw!r}"
            )
        out.append((label, url))
    labels = [label for label, _ in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"LLMEDGE_UPSTREAMS labels must be unique, got {labels!r}")
    return out


def make_router(settings: Any, backend: Any) -> llmedge.Router:
    """The upstreams in order of preference, each behind the backend's breaker
    (5xx, 429, timeouts and connection errors fail over to the next; other 4xx
    are the caller's and are passed back). Upstreams and their breakers are
    named by label (with a shared store, the label keys the breaker's state)."""
    s = settings
    upstreams = []
    for label, url in parse_upstreams(s.upstreams):
        breaker = backend.breaker(
            label,
            exclude=(llmedge.UpstreamClientError,),
            failure_threshold=s.breaker_failures,
            recovery_timeout=s.breaker_recovery,
            failure_rate_threshold=s.breaker_failure_rate,
            window_size=20,
            minimum_calls=10,
        )
        upstreams.append(
            llmedge.Upstream(
                url,
                name=label,
                api_key=s.upstream_api_key,
                breaker=breaker,
                connect_timeout=s.connect_timeout,
                read_timeout=s.read_timeout,
                timeout=s.total_timeout,
            )
        )
    # one pass over the upstreams: falling back to the next is no retry
    retry = llmedge.Retry(len(upstreams))
    return llmedge.Router(upstreams, strategy="ordered", retry=retry, name="chat")


def describe(exc: llmedge.UpstreamError) -> str:
    """One failed call, for a client: the upstream's label and what kind of
    failure (an error's own text may carry an address: ``Connect call failed
    ('10.0.0.7', 8000)``)."""
    if exc.timeout:
        what = "timed out"
    elif exc.status is not None:
        what = f"answered {exc.status}"
    else:
        what = "failed (connection or protocol error)"
    return f"{exc.upstream}: {what}" if exc.upstream else what


def _seconds(wait: float) -> str:
    return str(max(1, math.ceil(wait)))


def all_failed_error(exc: llmedge.AllUpstreamsFailedError, urls: Mapping[str, str]) -> OpenAIError:
    """The HTTP error for a request no upstream answered (``urls``: label to
    base URL, for the log).

    * each upstream answered 429 or is cooling down after one: 429 with the
      smallest ``Retry-After`` they gave (1 s when none did);
    * none was called (breakers open, or a mix with 429s): 503 with the
      smallest wait;
    * otherwise 504 when the last failure was a timeout, else 502.
    """
    if exc.errors or exc.attempts:
        log.warning(
            "every upstream failed: %s",
            "; ".join(f"{a.upstream} ({urls.get(a.upstream)}): {a.error or a.outcome}"
                      for a in exc.attempts),
        )  # fmt: skip
    limited = [e for e in exc.errors if e.status == 429]
    waits = [e.retry_after for e in limited if e.retry_after is not None and e.retry_after >= 0]
    if exc.retry_after is not None:
        waits.append(exc.retry_after)
    unavailable = [a.outcome for a in exc.attempts if a.outcome not in ("error", "timeout")]
    if len(limited) == len(exc.errors) and all(o == "cooling_down" for o in unavailable):
        wait = _seconds(min(waits, default=1.0))
        return OpenAIError(
            429,
            "every upstream is rate limiting this service; retry after "
            f"{wait} s: " + ", ".join(a.upstream for a in exc.attempts),
            type="rate_limit_error",
            code="upstream_rate_limited",
            headers={"Retry-After": wait},
        )
    if len(limited) == len(exc.errors):
        wait = _seconds(min(waits, default=0.0))
        return OpenAIError(
            503,
            "every upstream is unavailable (circuit open, cooling down or rate limiting); "
            f"retry after {wait} s",
            type="upstream_unavailable",
            code="circuit_open",
            headers={"Retry-After": wait},
        )
    return OpenAIError(
        504 if exc.timeout else 502,
        "every upstream failed: " + "; ".join(describe(e) for e in exc.errors),
        type="upstream_error",
        code="upstream_timeout" if exc.timeout else "upstream_failed",
    )

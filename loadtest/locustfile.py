"""Locust users for the reference chat service (driven by ``loadtest/run.py``).

Configuration comes from the environment (the runner sets it):

* ``LT_REQUESTS``: JSON list of requests ``{"question", "kind", "stream"}``
  (the seeded mix); users take them in order from one shared counter, so the
  sequence is the same whatever the user count;
* ``LT_RECORDS``: a JSON-lines file where every request is recorded as the
  user saw it (start time, status, latency, time to first token, cache kind,
  Retry-After) for the runner to summarise per phase;
* ``LT_WAIT_MIN`` / ``LT_WAIT_MAX``: think time of a chat user in seconds;
* ``LT_GREEDY_WAIT``: think time of the one greedy client (rate-limit scenario);
* ``LT_TIMEOUT``: client-side network timeout in seconds.

Streams are read to the end here: the time to the first content event is
fired as a custom ``TTFT`` request (so locust's own table shows it too) and
the whole stream's time as ``/chat stream (complete)``.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from typing import Any

import gevent
from locust import FastHttpUser, between, constant, events, task

from llmedge._workload import INCOMPLETE_STREAM, sse_content
from llmedge.errors import IncompleteStreamError
from llmedge.sse import iter_events, iter_lines

REQUESTS: list[dict[str, Any]] = []
if os.environ.get("LT_REQUESTS"):
    with open(os.environ["LT_REQUESTS"], encoding="utf-8") as f:
        REQUESTS = json.load(f)
if not REQUESTS:
    REQUESTS = [{"question": "What is the capital of France?", "kind": "new", "stream": False}]

_next_request = itertools.count()
_next_user = itertools.count()
_records = open(  # noqa: SIM115 - closed when locust quits
    os.environ.get("LT_RECORDS", os.devnull), "a", buffering=1, encoding="utf-8"
)


@events.quitting.add_listener
def _close_records(**_kwargs: Any) -> None:
    _records.close()


def _record(**fields: Any) -> None:
    if not _records.closed:
        _records.write(json.dumps(fields, separators=(",", ":")) + "\n")


def _cached_header(headers: Any) -> str | None:
    for name in ("x-llmedge-cache", "x-cache"):
        try:
            value = headers.get(name)
        except Exception:  # noqa: BLE001 - header containers differ between clients
            value = None
        if value:
            return str(value).lower()
    return None


class ChatUser(FastHttpUser):
    """A person chatting: asks the next question of the mix, then thinks."""

    abstract = False
    wait_time = between(
        float(os.environ.get("LT_WAIT_MIN", "0.5")), float(os.environ.get("LT_WAIT_MAX", "1.5"))
    )
    network_timeout = float(os.environ.get("LT_TIMEOUT", "30"))
    connection_timeout = 10.0
    role = "chat"

    def on_start(self) -> None:
        self.key = f"{self.role}-{next(_next_user)}"
        self.headers = {"Authorization": f"Bearer {self.key}"}

    @task
    def chat(self) -> None:
        req = REQUESTS[next(_next_request) % len(REQUESTS)]
        self.ask(req)

    def ask(self, req: dict[str, Any]) -> dict[str, Any]:
        body = {"question": req["question"], "history": [], "stream": bool(req["stream"])}
        t = time.time()
        start = time.perf_counter()
        if req["stream"]:
            rec = self._stream(body, start)
        else:
            rec = self._plain(body, start)
        rec.update(t=t, user=self.role, kind=req["kind"], stream=bool(req["stream"]))
        rec["extra"] = {"key": self.key}
        _record(**rec)
        return rec

    def _plain(self, body: dict[str, Any], start: float) -> dict[str, Any]:
        with self.client.post(
            "/chat", json=body, headers=self.headers, name="/chat", catch_response=True
        ) as resp:
            latency = (time.perf_counter() - start) * 1000
            status = resp.status_code or 0
            rec: dict[str, Any] = {"status": status, "latency_ms": latency, "error": None}
            if status == 200:
                try:
                    data = resp.json()
                except Exception:  # noqa: BLE001
                    rec["error"] = "bad JSON body"
                    resp.failure("bad JSON body")
                    return rec
                cached = data.get("cached") if isinstance(data, dict) else None
                rec["cached"] = str(cached).lower() if cached else _cached_header(resp.headers)
                resp.success()
            elif status == 429:
                rec["retry_after"] = _retry_after(resp.headers)
                self.on_429(resp)
            else:
                rec["error"] = None if status else _error_name(resp)
                resp.failure(f"HTTP {status}")
            return rec

    def on_429(self, resp: Any) -> None:
        resp.failure("HTTP 429")

    def _stream(self, body: dict[str, Any], start: float) -> dict[str, Any]:
        rec: dict[str, Any] = {"status": 0, "latency_ms": 0.0, "error": None, "ttft_ms": None}
        resp = self.client.post(
            "/chat", json=body, headers=self.headers, name="/chat stream (headers)", stream=True
        )
        status = resp.status_code or 0
        rec["status"] = status
        if status != 200:
            rec["latency_ms"] = (time.perf_counter() - start) * 1000
            if status == 429:
                rec["retry_after"] = _retry_after(resp.headers)
            elif not status:
                rec["error"] = _error_name(resp)
            return rec
        cached = _cached_header(resp.headers)
        chunks = resp.iter_content(chunk_size=4096, decode_content=False)
        try:
            for event in iter_events(iter_lines(chunks)):
                text, event_cached = sse_content(event)
                if event_cached and not cached:
                    cached = event_cached.lower()
                if text and rec["ttft_ms"] is None:
                    rec["ttft_ms"] = (time.perf_counter() - start) * 1000
            for _ in chunks:  # read the body to its end: the connection is reused
                pass
        except IncompleteStreamError:
            rec["error"] = INCOMPLETE_STREAM
        except Exception as e:  # noqa: BLE001 - a cut stream is a result, not a crash
            rec["error"] = f"stream broken: {type(e).__name__}"
        rec["latency_ms"] = (time.perf_counter() - start) * 1000
        rec["cached"] = cached
        fire = self.environment.events.request.fire
        if rec["ttft_ms"] is not None:
            fire(
                request_type="SSE",
                name="TTFT",
                response_time=rec["ttft_ms"],
                response_length=0,
                exception=None,
                context={},
            )
        fire(
            request_type="SSE",
            name="/chat stream (complete)",
            response_time=rec["latency_ms"],
            response_length=0,
            exception=RuntimeError(rec["error"]) if rec["error"] else None,
            context={},
        )
        return rec


def _error_name(resp: Any) -> str:
    """The client-side failure of a request that got no HTTP status."""
    error = getattr(resp, "error", None)
    return type(error).__name__ if error is not None else "no response"


def _retry_after(headers: Any) -> float | None:
    try:
        value = headers.get("retry-after") or headers.get("Retry-After")
    except Exception:  # noqa: BLE001
        return None
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return -1.0  # present but not a number of seconds: reported as malformed


class PoliteUser(ChatUser):
    """A normal client in the rate-limit scenario: its own key, well under the limit."""

    role = "polite"


class GreedyUser(ChatUser):
    """One client far above its limit: bursts of ``LT_GREEDY_CONCURRENCY``
    concurrent requests with one API key. After every fourth burst that got a
    429, the whole client honours the largest Retry-After (sends nothing for
    that long), then sends one request: that one must be answered."""

    role = "greedy"
    fixed_count = 1
    wait_time = constant(float(os.environ.get("LT_GREEDY_WAIT", "0.02")))
    concurrency = max(1, int(os.environ.get("LT_GREEDY_CONCURRENCY", "4")))

    def on_start(self) -> None:
        super().on_start()
        self.limited_bursts = 0

    def on_429(self, resp: Any) -> None:
        resp.success()  # expected for this client; counted in the records

    @task
    def chat(self) -> None:
        reqs = [
            dict(REQUESTS[next(_next_request) % len(REQUESTS)], stream=False)
            for _ in range(self.concurrency)
        ]
        burst = [gevent.spawn(self.ask, r) for r in reqs]
        gevent.joinall(burst)
        waits = [
            g.value.get("retry_after") or 0.0
            for g in burst
            if g.value is not None and g.value["status"] == 429
        ]
        if not waits:
            return
        self.limited_bursts += 1
        wait = max(waits)
        if self.limited_bursts % 4 == 0 and 0 < wait <= 60:
            time.sleep(wait)  # gevent-patched: only this client waits
            retry = self.ask(dict(reqs[0], kind="after-retry-after"))
            _record(
                t=time.time(),
                user="greedy-check",
                kind="honoured",
                stream=False,
                status=retry["status"],
                latency_ms=0.0,
                retry_after=wait,
                error=None,
            )

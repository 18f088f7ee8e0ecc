"""``python -m llmedge demo``: the gateway under a short load, with a failure.

Starts two mock LLM upstreams (subprocesses of ``python -m llmedge.testing``),
the gateway (``llmedge.gateway``) under uvicorn with one worker, in a
subprocess, so that its ``/health`` speaks for the whole service, and a small
asyncio + httpx load generator: chat users asking real questions (new ones,
exact repeats and paraphrases; every other new question a follow-up in a
conversation), half of them streamed. In the middle the primary upstream fails every request, then
recovers. The report gives latency percentiles and requests per second per
phase, time to first token, the cache hit rate by kind, the breakers'
transitions, where the traffic went, and the tokens and cost that the cache
and the history cut saved (from the service's ``/health``). Everything it
started is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmedge import _workload as tr
from llmedge.errors import IncompleteStreamError
from llmedge.sse import aiter_events

DEMO_SERVICE_ENV = {
    "LLMEDGE_CONNECT_TIMEOUT": "1.0",
    "LLMEDGE_READ_TIMEOUT": "2.0",
    "LLMEDGE_BREAKER_FAILURES": "5",
    "LLMEDGE_BREAKER_RECOVERY": "3.0",
    "LLMEDGE_RATE_LIMIT": "off",
}


def phases(duration: float) -> list[tuple[str, float, dict[str, Any] | None]]:
    """healthy, primary down (every request fails), recovered."""
    return [
        ("healthy", duration * 0.35, None),
        ("primary down", duration * 0.30, {"fail_all": True, "status": 503}),
        ("recovered", duration * 0.35, None),
    ]


async def _ask(
    client: Any,
    req: tr.ChatRequest,
    key: str,
    history: list[dict[str, str]],
    follow_up: bool,
) -> tr.Record:
    # Every other new question follows up on the user's conversation (the
    # history cut has work to do); the others, and the repeats and
    # paraphrases, are asked afresh, as people ask a common question. The
    # service answers a follow-up from the cache only after the same
    # conversation, so only questions asked afresh can be hit later.
    sent = history if req.kind == "new" and follow_up else []
    body = {"question": req.question, "history": sent, "stream": req.stream}
    headers = {"Authorization": f"Bearer {key}"}
    t = time.time()
    start = time.perf_counter()
    status, cached, ttft, error, answer = 0, None, None, None, ""
    try:
        if not req.stream:
            r = await client.post("/chat", json=body, headers=headers)
            status = r.status_code
            if status == 200:
                data = r.json()
                cached = data.get("cached")
                answer = data.get("answer") or ""
        else:
            async with client.stream("POST", "/chat", json=body, headers=headers) as r:
                status = r.status_code
                cached = r.headers.get("x-llmedge-cache")
                if status == 200:
                    lines = r.aiter_lines()
                    try:
                        async for event in aiter_events(lines):
                            text, event_cached = tr.sse_content(event)
                            if text:
                                answer += text
                                if ttft is None:
                                    ttft = (time.perf_counter() - start) * 1000
                            if event_cached:
                                cached = event_cached
                    except IncompleteStreamError:
                        error = tr.INCOMPLETE_STREAM
                    async for _ in lines:  # read the body to its end: the connection is reused
                        pass
                else:
                    await r.aread()
    except Exception as e:  # noqa: BLE001 - every failure is a result to report
        error = type(e).__name__
    latency = (time.perf_counter() - start) * 1000
    if status == 200 and error is None and answer and req.kind == "new":
        history.extend(
            [{"role": "user", "content": req.question}, {"role": "assistant", "content": answer}]
        )
        del history[:-8]  # a client keeps its last four exchanges
    return tr.Record(
        t=t,
        user="demo",
        kind=req.kind,
        stream=req.stream,
        status=status,
        latency_ms=latency,
        ttft_ms=ttft,
        cached=cached,
        error=error,
    )


async def drive(
    base_url: str,
    requests: Sequence[tr.ChatRequest],
    *,
    users: int,
    duration: float,
    think: float = 0.2,
    on_phase: Callable[[str, dict[str, Any] | None], None] | None = None,
    phase_plan: Sequence[tuple[str, float, dict[str, Any] | None]] | None = None,
) -> tuple[list[tr.Record], list[dict[str, Any]]]:
    """Run ``users`` chat users for ``duration`` seconds; returns (records, timeline)."""
    import httpx

    if users < 1:
        raise ValueError(f"users must be at least 1, got {users!r}")
    plan = list(phase_plan) if phase_plan is not None else [("load", duration, None)]
    counter = itertools.count()
    records: list[tr.Record] = []
    stop = asyncio.Event()

    async def user(i: int, client: httpx.AsyncClient) -> None:
        history: list[dict[str, str]] = []
        follow_up = True  # the first new question is asked afresh
        key = f"demo-{i}"
        while not stop.is_set():
            req = requests[next(counter) % len(requests)]
            if req.kind == "new":
                follow_up = not follow_up
            records.append(await _ask(client, req, key, history, follow_up))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), think)

    timeline: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=users + 4, max_keepalive_connections=users + 4)
    timeout = httpx.Timeout(30.0, connect=5.0)
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=timeout, trust_env=False
    ) as client:
        tasks: list[asyncio.Task[None]] = []
        try:
            for name, seconds, faults in plan:
                if on_phase is not None:
                    await asyncio.to_thread(on_phase, name, faults)
                start = time.time()
                if not tasks:  # the users start with the first phase
                    tasks = [asyncio.create_task(user(i, client)) for i in range(users)]
                await asyncio.sleep(seconds)
                timeline.append({"name": name, "faults": faults or {}, "start": start,
                                 "end": time.time()})  # fmt: skip
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    return records, timeline


def _fmt_ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def format_report(result: dict[str, Any]) -> str:
    o = result["overall"]
    c = o["cache"]
    lines = [
        "",
        f"llmedge demo: {result['users']} users for {result['duration_s']:.0f} s against the "
        f"gateway (uvicorn, 1 worker) and two mock LLM "
        f"upstreams (TTFT {result['mock']['ttft'] * 1000:.0f} ms, "
        f"{result['mock']['tpot'] * 1000:.0f} ms/token)",
        f"questions: {result['corpus']}",
        "",
        f"{'phase':<14}{'s':>5}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'primary':>9}{'fallback':>10}",
    ]
    for ph in result["phases"]:
        s = ph["summary"]
        lat = s["latency_ms"]
        lines.append(
            f"{ph['phase']:<14}{ph['seconds']:>5.0f}{s['rps']:>8.1f}{_fmt_ms(lat['p50']):>9}"
            f"{_fmt_ms(lat['p95']):>9}{_fmt_ms(lat['p99']):>9}{_pct(s['error_rate']):>8}"
            f"{ph['primary_calls']:>9}{ph['fallback_calls']:>10}"
        )
    lat = o["latency_ms"]
    lines += [
        f"{'all':<14}{result['duration_s']:>5.0f}{o['rps']:>8.1f}{_fmt_ms(lat['p50']):>9}"
        f"{_fmt_ms(lat['p95']):>9}{_fmt_ms(lat['p99']):>9}{_pct(o['error_rate']):>8}",
        "",
        f"requests: {o['requests']} ({o['ok']} answered), errors: "
        + (", ".join(f"{k} x{v}" for k, v in o["errors"].items()) or "none"),
        f"time to first token (streams, n={o['ttft_ms']['streams']}): "
        f"p50 {_fmt_ms(o['ttft_ms']['p50'])} ms, p95 {_fmt_ms(o['ttft_ms']['p95'])} ms, "
        f"p99 {_fmt_ms(o['ttft_ms']['p99'])} ms",
        f"cache: hit rate {_pct(c['hit_rate'])} ({c['exact']} exact, {c['semantic']} semantic, "
        f"{c['miss']} misses)",
    ]
    for kind, k in c["by_request_kind"].items():
        lines.append(
            f"  {kind + ' questions':<22} {k['requests']:>5} asked, hit rate {_pct(k['hit_rate'])}"
            f" ({k['exact_hits']} exact, {k['semantic_hits']} semantic)"
        )
    lines.append("breaker transitions (from /health):")
    if result["transitions"]:
        for t in result["transitions"]:
            lines.append(f"  +{t['t']:5.1f} s  {t['breaker']}: {t['from']} -> {t['to']}")
    else:
        lines.append("  none seen")
    costs = result.get("costs") or {}
    if costs:
        lines.append("tokens and cost (from the service's /health):")
        labels = {
            "spent": "sent upstream",
            "saved_by_cache": "saved by the cache",
            "saved_by_optimizer": "saved by the history cut",
        }
        for name, total in costs.items():
            if not isinstance(total, dict):
                continue
            lines.append(
                f"  {labels.get(name, name):<26} {total.get('requests', 0):>6} requests "
                f"{total.get('input_tokens', 0):>9,} input + {total.get('output_tokens', 0):>7,} "
                f"output tokens  ${total.get('cost', 0.0):.4f}"
            )
    lines.append("")
    return "\n".join(lines)


def run(
    *,
    duration: float = 30.0,
    users: int = 20,
    data_dir: str | None = None,
    seed: int = 0,
    json_path: str | None = None,
    print_fn: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo and return its result (also printed); stops everything it started."""
    from llmedge.testing import GatewayServer, spawn_mock

    if not 3 <= duration <= 600:
        raise ValueError(f"duration must be between 3 and 600 seconds, got {duration!r}")
    if users < 1:
        raise ValueError(f"users must be at least 1, got {users!r}")
    corpus = tr.load_corpus(data_dir)
    requests = tr.generate_requests(corpus, 20_000, seed=seed)
    print_fn(f"questions: {corpus.describe()}")
    ttft, tpot = 0.05, 0.005
    started: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        print_fn("starting two mock LLM upstreams and the gateway ...")
        primary = stack.enter_context(spawn_mock(port=0, ttft=ttft, tpot=tpot))
        fallback = stack.enter_context(spawn_mock(port=0, ttft=ttft, tpot=tpot))
        started += [{"name": "mock", "pid": m.process.pid} for m in (primary, fallback)]
        gateway = GatewayServer(
            [f"primary={primary.base_url}", f"fallback={fallback.base_url}"],
            subprocess=True,
            env=DEMO_SERVICE_ENV,
        )
        stack.enter_context(gateway)
        url = gateway.url
        assert gateway.process is not None
        started.append({"name": "gateway", "pgid": gateway.process.pid})
        monitor = stack.enter_context(tr.HealthMonitor(url, interval=0.2))
        stats: dict[str, tuple[dict, dict]] = {}

        def on_phase(name: str, faults: dict[str, Any] | None) -> None:
            if faults:
                primary.set_faults(**faults)
            else:
                primary.clear_faults()
            stats[name] = (primary.stats(), fallback.stats())
            print_fn(f"  {name}" + (f": primary {faults}" if faults else ""))

        print_fn(f"load: {users} users, {duration:.0f} s; service at {url}")
        t0 = time.time()
        records, timeline = asyncio.run(
            drive(
                url,
                requests,
                users=users,
                duration=duration,
                on_phase=on_phase,
                phase_plan=phases(duration),
            )  # fmt: skip
        )
        end_stats = (primary.stats(), fallback.stats())
        roles = {primary.base_url: "primary", fallback.base_url: "fallback"}
        monitor.stop()
        costs = _final_costs(url)
    names = [ph["name"] for ph in timeline]
    per_phase = []
    for i, ph in enumerate(timeline):
        after = stats[names[i + 1]] if i + 1 < len(names) else end_stats
        before = stats[ph["name"]]
        rows = [r for r in records if ph["start"] <= r.t < ph["end"]]
        per_phase.append(
            {
                "phase": ph["name"],
                "faults": ph["faults"],
                "seconds": round(ph["end"] - ph["start"], 1),
                "summary": tr.summarize(rows, duration_s=ph["end"] - ph["start"]),
                "primary_calls": after[0]["requests"] - before[0]["requests"],
                "fallback_calls": after[1]["requests"] - before[1]["requests"],
            }
        )
    result = {
        "users": users,
        "duration_s": round(timeline[-1]["end"] - t0, 1) if timeline else 0.0,
        "corpus": corpus.describe(),
        "mock": {"ttft": ttft, "tpot": tpot},
        "overall": tr.summarize(records),
        "phases": per_phase,
        "transitions": [
            dict(t, t=round(t["t"] - t0, 2), breaker=tr.role_of(t["breaker"], roles))
            for t in monitor.transitions()
        ],
        "costs": costs,
        "upstreams": {"primary": end_stats[0], "fallback": end_stats[1]},
        "started": started,
    }
    result["left_running"] = tr.still_running(started)
    print_fn(format_report(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def _final_costs(url: str) -> dict[str, Any]:
    import httpx

    try:
        body = httpx.get(url + "/health", timeout=5.0).json()
    except (httpx.HTTPError, ValueError):
        return {}
    costs = body.get("costs") if isinstance(body, dict) else None
    return costs if isinstance(costs, dict) else {}


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(args: Any) -> int:
    from llmedge.gateway.cli import missing_service_modules

    missing = missing_service_modules()
    if missing:
        print(
            f"llmedge demo: the demo runs the gateway, which needs the optional dependencies "
            f"of llmedge[service] (missing: {', '.join(missing)}); install them with: "
            "pip install 'llmedge[service]'"
        )
        return 2
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        run(
            duration=args.duration,
            users=args.users,
            data_dir=args.data,
            seed=args.seed,
            json_path=args.json,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"llmedge demo: {e}")
        return 2
    except KeyboardInterrupt:
        print("llmedge demo: interrupted; everything it started was stopped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0

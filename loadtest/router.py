"""Upstream routing under the same traffic: llmedge.Router (each strategy,
with and without hedging), LiteLLM's Router (simple-shuffle and
latency-based routing) and a tenacity retry loop with a fixed fallback order.

    python loadtest/router.py [--rate 30] [--phase 2.5] [--only NAME ...] [--out DIR]

Three mock upstreams (``llmedge.testing.spawn_mock`` subprocesses, loopback)
with different latency, error rate and price. Each implementation gets the
same open-loop traffic (``--rate`` requests per second at fixed intervals,
non-streamed chat completions) in two scenarios:

* ``steady``: the three upstreams as configured;
* ``degraded``: the fastest upstream is healthy, then slow (1.5 s to its
  answer), then fails half its requests (HTTP 500), then answers every
  request with 429 (``Retry-After: 2``), then recovers; one ``--phase`` each.

Every implementation gets a per-attempt timeout of 3 s, three attempts at
most, the same backoff (exponential from 50 ms, at most 0.5 s) and a client
deadline of 8 s per request (a request not answered by then is a failure).
Before each scenario one second of traffic warms the implementation up (not
measured). Reported per implementation and scenario: success rate, latency
percentiles over every request (failures at the time they failed), upstream
calls per answered request (from the mocks' own counts) and the cost of the
answers served (the mocks' token counts at each upstream's price).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# LiteLLM fetches a price table from GitHub at import unless told not to
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
if importlib.util.find_spec("llmedge") is None:  # a source checkout without an install
    sys.path.insert(0, str(HERE.parent / "python"))

import httpx  # noqa: E402

import llmedge  # noqa: E402
from llmedge.testing import spawn_mock  # noqa: E402

MODEL = "gpt-4o-mini"
ATTEMPT_TIMEOUT = 3.0
DEADLINE = 8.0
ATTEMPTS = 3
BACKOFF_BASE, BACKOFF_MAX = 0.05, 0.5


@dataclass(frozen=True)
class Spec:
    name: str
    ttft: float
    tpot: float
    error_rate: float
    price: tuple[float, float]  # USD per million input, output tokens


UPSTREAMS = (
    Spec("fast", 0.03, 0.002, 0.0, (2.50, 10.00)),
    Spec("cheap", 0.08, 0.004, 0.02, (0.15, 0.60)),
    Spec("steady", 0.15, 0.004, 0.0, (1.10, 4.40)),
)
DEGRADED = 0  # the upstream that degrades: the fastest, where latency routing sends traffic


def phases(scenario: str, seconds: float) -> list[tuple[str, float, dict[str, Any]]]:
    """(name, seconds, settings of the degrading upstream)."""
    if scenario == "steady":
        return [("steady", seconds * 2, {})]
    return [
        ("healthy", seconds, {}),
        ("slow", seconds, {"ttft": 1.5}),
        ("errors50", seconds, {"faults": {"error_rate": 0.5, "status": 500}}),
        ("429", seconds, {"faults": {"fail_all": True, "status": 429, "retry_after": 2}}),
        ("recovered", seconds, {}),
    ]


# ---------------------------------------------------------------------------
# The implementations: each is an async function request(i) -> None (raises
# on failure), built by a factory over the mocks' base URLs.
# ---------------------------------------------------------------------------


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"routing question {i}"}]


def llmedge_impl(strategy: str, hedge: bool) -> Callable[[list[str]], Any]:
    def make(urls: list[str]) -> tuple[Callable[[int], Awaitable[None]], Callable[[], Any]]:
        ups = [
            llmedge.Upstream(
                url,
                name=spec.name,
                price=spec.price,
                connect_timeout=1.0,
                read_timeout=ATTEMPT_TIMEOUT,
                timeout=ATTEMPT_TIMEOUT,
            )
            for url, spec in zip(urls, UPSTREAMS, strict=True)
        ]
        router = llmedge.Router(
            ups,
            strategy=strategy,
            hedge=hedge,
            deadline=DEADLINE,
            retry=llmedge.Retry(ATTEMPTS, base=BACKOFF_BASE, max_delay=BACKOFF_MAX),
            breaker={
                "failure_threshold": 5,
                "recovery_timeout": 2.0,
                "failure_rate_threshold": 0.5,
                "window_size": 20,
                "minimum_calls": 10,
            },
            explore_after=2.0,
            name=f"lt-{strategy}-{hedge}-{time.monotonic_ns()}",
        )

        async def request(i: int) -> None:
            await router.achat(model=MODEL, messages=messages(i))

        return request, router.aclose

    return make


def litellm_impl(strategy: str) -> Callable[[list[str]], Any]:
    def make(urls: list[str]) -> tuple[Callable[[int], Awaitable[None]], Callable[[], Any]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import litellm

            litellm.suppress_debug_info = True
            router = litellm.Router(
                model_list=[
                    {
                        "model_name": MODEL,
                        "litellm_params": {
                            "model": f"openai/{MODEL}",
                            "api_base": url,
                            "api_key": "sk-mock",
                            "input_cost_per_token": spec.price[0] / 1e6,
                            "output_cost_per_token": spec.price[1] / 1e6,
                        },
                    }
                    for url, spec in zip(urls, UPSTREAMS, strict=True)
                ],
                routing_strategy=strategy,
                num_retries=ATTEMPTS - 1,
                timeout=ATTEMPT_TIMEOUT,
                allowed_fails=3,
                cooldown_time=2.0,
                retry_after=0,
            )

        async def request(i: int) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                await router.acompletion(model=MODEL, messages=messages(i))

        async def close() -> None:
            return None

        return request, close

    return make


def tenacity_impl() -> Callable[[list[str]], Any]:
    def make(urls: list[str]) -> tuple[Callable[[int], Awaitable[None]], Callable[[], Any]]:
        import tenacity

        client = httpx.AsyncClient(
            timeout=httpx.Timeout(ATTEMPT_TIMEOUT, connect=1.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=256),
            trust_env=False,
        )

        async def request(i: int) -> None:
            retrying = tenacity.AsyncRetrying(
                stop=tenacity.stop_after_attempt(ATTEMPTS),
                wait=tenacity.wait_random_exponential(multiplier=BACKOFF_BASE, max=BACKOFF_MAX),
                retry=tenacity.retry_if_exception_type(httpx.HTTPError),
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    # attempt n goes to upstream n: the fixed fallback order
                    n = attempt.retry_state.attempt_number - 1
                    url = urls[n % len(urls)] + "/chat/completions"
                    body = {"model": MODEL, "messages": messages(i)}
                    r = await client.post(url, json=body)
                    r.raise_for_status()

        return request, client.aclose

    return make


def implementations() -> dict[str, Callable[[list[str]], Any]]:
    out: dict[str, Callable[[list[str]], Any]] = {}
    for strategy in ("ordered", "weighted", "least_latency", "least_cost", "least_busy"):
        out[f"llmedge {strategy}"] = llmedge_impl(strategy, False)
        out[f"llmedge {strategy} +hedge"] = llmedge_impl(strategy, True)
    out["litellm simple-shuffle"] = litellm_impl("simple-shuffle")
    out["litellm latency-based"] = litellm_impl("latency-based-routing")
    out["tenacity ordered"] = tenacity_impl()
    return out


def available(name: str) -> str | None:
    """Why an implementation cannot run here, or None."""
    module = name.split()[0]
    if module == "llmedge":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            __import__(module)
    except ImportError as exc:
        return f"{module} is not installed ({exc})"
    return None


# ---------------------------------------------------------------------------
# Driving the traffic
# ---------------------------------------------------------------------------


async def drive(
    request: Callable[[int], Awaitable[None]],
    rate: float,
    seconds: float,
    start_index: int,
    on_tick: Callable[[float], None] | None = None,
) -> list[tuple[float, float, bool]]:
    """Open-loop traffic: a request every 1/rate s for ``seconds``; returns
    (start offset, latency, answered) per request, after all ended."""
    records: list[tuple[float, float, bool]] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def one(i: int, offset: float) -> None:
        started = loop.time()
        ok = True
        try:
            await asyncio.wait_for(request(i), DEADLINE)
        except Exception:
            ok = False
        records.append((offset, loop.time() - started, ok))

    tasks = []
    n = int(seconds * rate)
    for k in range(n):
        offset = k / rate
        delay = t0 + offset - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if on_tick is not None:
            on_tick(offset)
        tasks.append(asyncio.ensure_future(one(start_index + k, offset)))
    await asyncio.gather(*tasks)
    return records


def configure(mocks: list[Any], settings: dict[str, Any]) -> None:
    for m, spec in zip(mocks, UPSTREAMS, strict=True):
        m.configure(ttft=spec.ttft, tpot=spec.tpot)
        m.set_faults(error_rate=spec.error_rate, status=500)
    bad = mocks[DEGRADED]
    if "ttft" in settings:
        bad.configure(ttft=settings["ttft"])
    if "faults" in settings:
        bad.set_faults(**settings["faults"])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 1)))
    return ordered[min(rank, len(ordered)) - 1]


async def run_one(name: str, make: Any, mocks: list[Any], scenario: str, args: Any) -> dict:
    urls = [m.base_url for m in mocks]
    request, close = make(urls)
    try:
        configure(mocks, {})
        await drive(request, args.rate, 1.0, 10_000_000)  # warm-up, not measured
        for m in mocks:
            m.reset_stats()
        timeline = phases(scenario, args.phase)
        bounds = []
        t = 0.0
        for pname, seconds, settings in timeline:
            bounds.append((t, pname, settings))
            t += seconds
        current = [-1]

        def on_tick(offset: float) -> None:
            k = max(i for i, (start, _, _) in enumerate(bounds) if start <= offset)
            if k != current[0]:
                current[0] = k
                configure(mocks, bounds[k][2])

        records = await drive(request, args.rate, t, 0, on_tick)
    finally:
        configure(mocks, {})
        await close()
    stats = [m.stats() for m in mocks]
    answered = sum(1 for r in records if r[2])
    calls = sum(s["requests"] for s in stats)
    cost = sum(
        (s["prompt_tokens"] * spec.price[0] + s["completion_tokens"] * spec.price[1]) / 1e6
        for s, spec in zip(stats, UPSTREAMS, strict=True)
    )
    latencies = [r[1] for r in records]
    per_phase = {}
    for start, pname, _ in bounds:
        end = next((b[0] for b in bounds if b[0] > start), float("inf"))
        rows = [r for r in records if start <= r[0] < end]
        if rows:
            per_phase[pname] = {
                "requests": len(rows),
                "success": sum(1 for r in rows if r[2]) / len(rows),
                "p99_ms": pct([r[1] for r in rows], 0.99) * 1000,
            }
    return {
        "implementation": name,
        "scenario": scenario,
        "requests": len(records),
        "answered": answered,
        "success": answered / len(records),
        "p50_ms": pct(latencies, 0.50) * 1000,
        "p95_ms": pct(latencies, 0.95) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "calls_per_answer": calls / answered if answered else float("inf"),
        "upstream_calls": {
            spec.name: s["requests"] for s, spec in zip(stats, UPSTREAMS, strict=True)
        },
        "cost_per_1k_answers": cost / answered * 1000 if answered else 0.0,
        "phases": per_phase,
    }


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------


def report(results: list[dict], skipped: dict[str, str], args: Any, seconds: float) -> str:
    lines = [
        "# Upstream routing: llmedge Router, LiteLLM Router, tenacity",
        "",
        f"`python loadtest/router.py --rate {args.rate:g} --phase {args.phase:g}` "
        f"({seconds:.0f} s); {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, loopback.",
        "",
        "Mock upstreams (time to first token, per token, error rate, USD per 1M in/out): "
        + "; ".join(
            f"{s.name} {s.ttft * 1000:.0f} ms, {s.tpot * 1000:.0f} ms, {s.error_rate:.0%}, "
            f"{s.price[0]:g}/{s.price[1]:g}"
            for s in UPSTREAMS
        )
        + f". 24-token answers, non-streamed, {args.rate:g} requests/s open loop. Degraded: "
        f"`{UPSTREAMS[DEGRADED].name}` is healthy, slow (1.5 s), 50% HTTP 500, all 429 "
        f"(Retry-After 2 s), recovered; {args.phase:g} s each. Per attempt 3 s, 3 attempts, "
        f"client deadline {DEADLINE:g} s.",
        "",
    ]
    for scenario in ("steady", "degraded"):
        rows = [r for r in results if r["scenario"] == scenario]
        if not rows:
            continue
        lines += [
            f"## {scenario}",
            "",
            "| implementation | success | p50 ms | p95 ms | p99 ms | calls / answer | "
            "USD / 1k answers | calls per upstream |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in rows:
            per = ", ".join(f"{k} {v}" for k, v in r["upstream_calls"].items())
            lines.append(
                f"| {r['implementation']} | {r['success']:.1%} | {r['p50_ms']:,.0f} | "
                f"{r['p95_ms']:,.0f} | {r['p99_ms']:,.0f} | {r['calls_per_answer']:.2f} | "
                f"{r['cost_per_1k_answers']:.4f} | {per} |"
            )
        lines.append("")
    if skipped:
        lines += ["Not run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()), ""]
    lines += goals(results)
    return "\n".join(lines) + "\n"


def goals(results: list[dict]) -> list[str]:
    out = ["## Goals", ""]
    for scenario in ("steady", "degraded"):
        rows = [r for r in results if r["scenario"] == scenario]
        ours = [r for r in rows if r["implementation"].startswith("llmedge")]
        peers = [r for r in rows if not r["implementation"].startswith("llmedge")]
        if not ours or not peers:
            continue
        best_peer = max(peers, key=lambda r: r["success"])
        worst_ours = min(ours, key=lambda r: r["success"])
        out.append(
            f"- {scenario}: lowest llmedge success {worst_ours['success']:.1%} "
            f"({worst_ours['implementation']}) vs best peer {best_peer['success']:.1%} "
            f"({best_peer['implementation']}): "
            f"{'met' if worst_ours['success'] >= best_peer['success'] else 'NOT met'}"
        )
    deg = [r for r in results if r["scenario"] == "degraded"]
    lite = [r for r in deg if r["implementation"].startswith("litellm")]
    ours = [r for r in deg if r["implementation"].startswith("llmedge")]
    if lite and ours:
        best_lite = min(lite, key=lambda r: r["p99_ms"])
        for r in sorted(ours, key=lambda r: r["p99_ms"]):
            ratio = best_lite["p99_ms"] / r["p99_ms"]
            out.append(
                f"- degraded p99, {r['implementation']}: {r['p99_ms']:,.0f} ms, "
                f"{ratio:.2f}x lower than LiteLLM's best ({best_lite['implementation']}, "
                f"{best_lite['p99_ms']:,.0f} ms): {'met' if ratio >= 1.5 else 'NOT met'}"
            )
    return out + [""]


async def main_async(args: Any) -> int:
    impls = implementations()
    if args.only:
        unknown = [n for n in args.only if n not in impls]
        if unknown:
            raise SystemExit(f"unknown implementation(s) {unknown}; known: {sorted(impls)}")
        impls = {n: impls[n] for n in args.only}
    skipped = {n: why for n in impls if (why := available(n))}
    started = time.monotonic()
    results = []
    with contextlib.ExitStack() as stack:
        mocks = [
            stack.enter_context(spawn_mock(ttft=s.ttft, tpot=s.tpot, answer_tokens=24))
            for s in UPSTREAMS
        ]
        for name, make in impls.items():
            if name in skipped:
                continue
            for scenario in args.scenarios:
                r = await run_one(name, make, mocks, scenario, args)
                results.append(r)
                print(
                    f"{scenario:9} {name:28} success {r['success']:.1%} p50 {r['p50_ms']:.0f} "
                    f"p99 {r['p99_ms']:.0f} ms calls/answer {r['calls_per_answer']:.2f}",
                    flush=True,
                )
    seconds = time.monotonic() - started
    write(Path(args.out), results, skipped, report(results, skipped, args, seconds))
    return 0


def write(out: Path, results: list[dict], skipped: dict[str, str], text: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "router.json").write_text(json.dumps({"results": results, "skipped": skipped}, indent=1))
    (out / "router.md").write_text(text)
    print(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=30.0, help="requests per second")
    p.add_argument("--phase", type=float, default=2.5, help="seconds per phase")
    p.add_argument("--scenarios", nargs="+", default=["steady", "degraded"])
    p.add_argument("--only", nargs="+", help="implementations to run (default: all)")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())

"""Load tests of the reference chat service with locust (headless), on loopback.

    python loadtest/run.py [--scenario sustained|failure|ratelimit|all] [--users 100]
                           [--duration S] [--backend llmedge|baseline|both] [--out DIR]

For each backend and scenario the runner starts two mock LLM upstreams
(``llmedge.testing.spawn_mock``), the service under gunicorn with two uvicorn
workers (``LLMEDGE_UPSTREAMS=<primary>/v1,<fallback>/v1``,
``LLMEDGE_SERVICE_BACKEND=llmedge|baseline``) and locust as a subprocess
(``loadtest/locustfile.py``), times the phases itself, polls ``/health`` for
the breakers, then stops everything it started (also on Ctrl-C or an error)
and writes ``report.json`` and ``summary.md`` to ``--out``.

Scenarios:

* ``sustained``: ``--users`` chat users (default 100) asking the seeded mix
  of real questions (new / exact repeats / paraphrases, half of them streamed).
* ``failure``: the same load while the primary upstream is healthy, fails
  half its requests (HTTP 500), fails all of them, hangs (timeouts), then
  recovers; per phase latency, errors, where the traffic went (mock stats) and
  the breaker states seen.
* ``ratelimit``: one greedy client far above its limit beside polite ones:
  its 429s and their ``Retry-After``, whether honouring it works, and that
  the others are unaffected.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if importlib.util.find_spec("llmedge") is None:  # a source checkout without an install
    sys.path.insert(0, str(HERE.parent / "python"))
if str(HERE) not in sys.path:  # loaded by path (the tests) rather than run as a script
    sys.path.insert(0, str(HERE))

import traffic as tr  # noqa: E402

from llmedge.testing import spawn_mock  # noqa: E402

SCENARIOS = ("sustained", "failure", "ratelimit")
DEFAULT_DURATION = {"sustained": 35.0, "failure": 45.0, "ratelimit": 20.0}

#: The service's knobs for a load test: short upstream timeouts so that a
#: hanging provider costs a bounded wait, a breaker that reacts within the
#: phases, and (rate-limit scenario) a per-key limit a greedy client exceeds.
UPSTREAM_TIMEOUT_S = 2.0
BASE_SERVICE_ENV = {
    "LLMEDGE_CONNECT_TIMEOUT": "1.0",
    "LLMEDGE_READ_TIMEOUT": str(UPSTREAM_TIMEOUT_S),
    "LLMEDGE_BREAKER_FAILURES": "5",
    "LLMEDGE_BREAKER_RECOVERY": "3.0",
}
UNLIMITED_ENV = {"LLMEDGE_RATE_LIMIT": "off"}
RATE_LIMIT = 2.0  # requests per second per key (per worker)
RATE_BURST = 4
RATELIMIT_ENV = {"LLMEDGE_RATE_LIMIT": f"{RATE_LIMIT:g}/1/{RATE_BURST}"}


class Interrupted(Exception):
    pass


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Interrupted(f"signal {signum}")


def failure_phases(duration: float) -> list[tuple[str, float, dict[str, Any] | None]]:
    """(name, seconds, faults for the primary or None for healthy)."""
    weights = [
        ("healthy", 0.16, None),
        ("errors50", 0.20, {"error_rate": 0.5, "status": 500}),
        ("down", 0.20, {"fail_all": True, "status": 500}),
        ("timeouts", 0.20, {"timeout_rate": 1.0, "hang": 30.0}),
        ("recovered", 0.24, None),
    ]
    return [(name, duration * w, faults) for name, w, faults in weights]


class Run:
    """One (backend, scenario) run: its processes, its timeline, its records."""

    def __init__(self, args: argparse.Namespace, backend: str, scenario: str, work: Path) -> None:
        self.args = args
        self.backend = backend
        self.scenario = scenario
        self.work = work
        self.duration = args.duration or DEFAULT_DURATION[scenario]
        self.started: list[dict[str, Any]] = []  # what we started, for the orphan check

    def execute(self, requests_file: Path) -> dict[str, Any]:
        with contextlib.ExitStack() as stack:
            primary = stack.enter_context(self._mock())
            fallback = stack.enter_context(self._mock())
            env = dict(BASE_SERVICE_ENV)
            env.update(RATELIMIT_ENV if self.scenario == "ratelimit" else UNLIMITED_ENV)
            service, url = tr.start_service(
                upstreams=[f"primary={primary.base_url}", f"fallback={fallback.base_url}"],
                backend=self.backend,
                workers=self.args.workers,
                env=env,
                log_path=self.work / "service.log",
            )
            stack.callback(service.stop)
            self.started.append({"name": service.name, "pgid": service.pgid})
            monitor = stack.enter_context(tr.HealthMonitor(url, interval=0.25))
            records_file = self.work / "records.jsonl"
            locust = self._locust(url, requests_file, records_file)
            stack.callback(locust.stop)
            self.started.append({"name": locust.name, "pgid": locust.pgid})
            _wait_first_record(records_file, locust, timeout=60.0)
            # users ramp up and each worker loads its vocabulary on first use: not measured
            _sleep_while(locust, self.args.warmup)
            phases = self._drive(locust, primary, fallback)
            # the runner's timer ends the run: locust's own -t is only a safety net
            with contextlib.suppress(ProcessLookupError):
                os.kill(locust.pid, signal.SIGTERM)
            rc = locust.proc.wait(timeout=60)
            monitor.stop()
            records = tr.read_records(records_file) if records_file.exists() else []
            names = {primary.base_url: "primary", fallback.base_url: "fallback"}
            return self._result(records, phases, monitor, rc, primary, fallback, names)

    def _mock(self) -> Any:
        m = spawn_mock(
            port=0, ttft=self.args.ttft, tpot=self.args.tpot, answer_tokens=self.args.tokens
        )
        self.started.append({"name": "mock", "pid": m.process.pid})
        return m

    def _locust(self, url: str, requests_file: Path, records_file: Path) -> tr.ManagedProcess:
        users = self.args.users
        classes = ["ChatUser"]
        if self.scenario == "ratelimit":
            users = max(2, min(users, self.args.polite_users + 1))
            classes = ["PoliteUser", "GreedyUser"]
        argv = [
            sys.executable, "-m", "locust",
            "-f", str(HERE / "locustfile.py"),
            "--headless", "--only-summary",
            "-u", str(users), "-r", str(max(1, math.ceil(users / 4))),
            "-t", f"{self.duration + 90:.0f}s", "--stop-timeout", "5",
            "--host", url,
            "--csv", str(self.work / "locust"),
            "--json-file", str(self.work / "locust"),
            "--loglevel", "WARNING",
            *classes,
        ]  # fmt: skip
        env = {
            "LT_REQUESTS": str(requests_file),
            "LT_RECORDS": str(records_file),
            "LT_WAIT_MIN": str(self.args.wait[0]),
            "LT_WAIT_MAX": str(self.args.wait[1]),
            "LT_TIMEOUT": "30",
        }
        if self.scenario == "ratelimit":
            # polite clients ask well under the limit: one request every 1-2 s
            env.update(
                LT_WAIT_MIN="1.0",
                LT_WAIT_MAX="2.0",
                LT_GREEDY_WAIT="0.02",
                LT_GREEDY_CONCURRENCY=str(self.args.greedy_concurrency),
            )
        return tr.ManagedProcess(
            "locust", argv, env=env, cwd=HERE, log_path=self.work / "locust.log"
        )

    def _drive(self, locust: tr.ManagedProcess, primary: Any, fallback: Any) -> list[dict]:
        """Apply the scenario's phases on a runner-side timer; returns the timeline."""
        if self.scenario != "failure":
            start = time.time()
            while time.time() < start + self.duration and locust.alive():
                time.sleep(0.1)
            return [{"name": self.scenario, "start": start, "end": time.time()}]
        timeline = []
        for name, seconds, faults in failure_phases(self.duration):
            if not locust.alive():
                break
            if faults is None:
                primary.clear_faults()
            else:
                primary.set_faults(**faults)
            start = time.time()
            before = (primary.stats(), fallback.stats())
            deadline = start + seconds
            while time.time() < deadline and locust.alive():
                time.sleep(0.1)
            after = (primary.stats(), fallback.stats())
            timeline.append(
                {
                    "name": name,
                    "faults": faults or {},
                    "start": start,
                    "end": time.time(),
                    "primary": _stats_delta(before[0], after[0]),
                    "fallback": _stats_delta(before[1], after[1]),
                }
            )
        primary.clear_faults()
        return timeline

    def _result(
        self,
        records: list[tr.Record],
        phases: list[dict],
        monitor: tr.HealthMonitor,
        rc: int,
        primary: Any,
        fallback: Any,
        names: dict[str, str],
    ) -> dict[str, Any]:
        begin, end = phases[0]["start"], phases[-1]["end"]
        measured = [r for r in records if begin <= r.t < end]
        main = [r for r in measured if r.user != "greedy-check"]
        out: dict[str, Any] = {
            "backend": self.backend,
            "scenario": self.scenario,
            "duration_s": round(self.duration, 1),
            "locust_exit_code": rc,
            "warmup_s": self.args.warmup,
            "overall": tr.summarize(main, duration_s=end - begin),
            "upstreams": {"primary": primary.stats(), "fallback": fallback.stats()},
            "breaker_transitions": [
                dict(x, t=round(x["t"] - begin, 2), breaker=tr.role_of(x["breaker"], names))
                for x in monitor.transitions()
            ],
            "health_samples": len(monitor.samples),
        }
        if self.scenario == "failure":
            per_phase = []
            for ph in phases:
                rows = [r for r in main if ph["start"] <= r.t < ph["end"]]
                s = tr.summarize(rows, duration_s=ph["end"] - ph["start"])
                slow = [r for r in rows if r.latency_ms >= UPSTREAM_TIMEOUT_S * 1000]
                hung = ph["primary"]["timeouts"] + ph["fallback"]["timeouts"]
                per_phase.append(
                    {
                        "phase": ph["name"],
                        "faults": ph["faults"],
                        "start_s": round(ph["start"] - begin, 1),
                        "seconds": round(ph["end"] - ph["start"], 1),
                        "summary": s,
                        "at_least_upstream_timeout": len(slow),
                        "hung_on_upstream": hung,
                        "primary": ph["primary"],
                        "fallback": ph["fallback"],
                        "breaker_states": {
                            tr.role_of(k, names): v
                            for k, v in monitor.states_seen(ph["start"], ph["end"]).items()
                        },
                    }
                )
            out["phases"] = per_phase
            out["upstream_timeout_s"] = UPSTREAM_TIMEOUT_S
            out["breaker_final"] = {
                w: {tr.role_of(k, names): v for k, v in states.items()}
                for w, states in monitor.last_states().items()
            }
            out["checks"] = failure_checks(out)
        if self.scenario == "ratelimit":
            out["ratelimit"] = ratelimit_summary(measured)
        return out


def _sleep_while(proc: tr.ManagedProcess, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and proc.alive():
        time.sleep(0.1)


def _wait_first_record(path: Path, locust: tr.ManagedProcess, *, timeout: float) -> None:
    """Wait until locust's users are sending (the phases start with the load)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not locust.alive():
            raise RuntimeError(f"locust exited early (code {locust.proc.returncode}); see its log")
        if path.exists() and path.stat().st_size > 0:
            return
        time.sleep(0.05)
    raise TimeoutError(f"locust sent no request within {timeout:.0f}s")


def _stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    status = Counter(after.get("by_status", {}))
    status.subtract(before.get("by_status", {}))
    return {
        "requests": after.get("requests", 0) - before.get("requests", 0),
        "timeouts": after.get("timeouts", 0) - before.get("timeouts", 0),
        "by_status": {k: v for k, v in sorted(status.items()) if v},
    }


def failure_checks(run: dict[str, Any]) -> dict[str, Any]:
    """What the failure scenario must show, read off its phases and /health."""
    phases = {ph["phase"]: ph for ph in run["phases"]}
    faulty = [ph for name, ph in phases.items() if name not in ("healthy", "recovered")]
    opened = any("open" in ph["breaker_states"].get("primary", []) for ph in faulty)
    final = [states.get("primary") for states in run.get("breaker_final", {}).values()]
    rec = phases.get("recovered")
    return {
        "breaker_opened": opened,
        "fallback_served_during_failure": sum(ph["fallback"]["requests"] for ph in faulty),
        "errors_during_failure": sum(
            ph["summary"]["requests"] - ph["summary"]["ok"] for ph in faulty
        ),
        "requests_that_waited_on_the_hung_primary": sum(
            ph.get("hung_on_upstream", 0) for ph in faulty
        ),
        "max_latency_ms_during_failure": max(
            (ph["summary"]["latency_ms"]["max"] or 0.0 for ph in faulty), default=0.0
        ),
        "breaker_closed_after_recovery": bool(final) and all(s == "closed" for s in final),
        "primary_served_again": bool(rec and rec["primary"]["requests"] > 0),
    }


def ratelimit_summary(records: Sequence[tr.Record]) -> dict[str, Any]:
    greedy = [r for r in records if r.user == "greedy"]
    polite = [r for r in records if r.user == "polite"]
    checks = [r for r in records if r.user == "greedy-check"]
    limited = [r for r in greedy if r.status == 429]
    values = [r.retry_after for r in limited]
    present = [v for v in values if v is not None and v >= 0]
    # a token refills every 1/RATE_LIMIT s: a whole-second Retry-After is at most ceil of that
    bound = math.ceil(1.0 / RATE_LIMIT)
    return {
        "limit_per_key": {"rate_per_s": RATE_LIMIT, "burst": RATE_BURST, "per_worker": True},
        "greedy": {
            "requests": len(greedy),
            "ok": sum(1 for r in greedy if r.status == 200),
            "429": len(limited),
            "retry_after_present": len(present),
            "retry_after_missing_or_malformed": len(values) - len(present),
            "retry_after_values": dict(Counter(str(v) for v in values).most_common()),
            "retry_after_within_bound": sum(1 for v in present if 0 < v <= bound),
            "retry_after_bound_s": bound,
            "honoured_retries": len(checks),
            "honoured_retries_ok": sum(1 for r in checks if r.status == 200),
        },
        "polite": {
            "users": len({r.extra.get("key") for r in polite}) if polite else 0,
            "summary": tr.summarize(polite),
            "429": sum(1 for r in polite if r.status == 429),
        },
    }


# --------------------------------------------------------------------- report


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{b / a:.2f}x"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Load test: the gateway under gunicorn ({report.get('workers', 2)} uvicorn workers)",
        "",
        f"`{report['command']}` at {report['finished']} UTC; {report['machine']}.",
        f"Requests: {report['mix']['corpus']}; mix {report['mix']['weights']}, "
        f"{report['mix']['stream_fraction']:.0%} streamed, seed {report['mix']['seed']}. "
        f"Mock upstreams: TTFT {report['mock']['ttft'] * 1000:.0f} ms, "
        f"{report['mock']['tpot'] * 1000:.0f} ms/token, {report['mock']['tokens']} tokens.",
        "",
    ]
    runs = report["runs"]
    by = {(r["backend"], r["scenario"]): r for r in runs}
    scenarios = [s for s in SCENARIOS if any(r["scenario"] == s for r in runs)]
    if "sustained" in scenarios or "failure" in scenarios:
        lines += [
            "| scenario | backend | users | req/s | p50 ms | p95 ms | p99 ms | TTFT p50 ms | "
            "TTFT p95 ms | hit rate (exact / semantic) | errors |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        for s in ("sustained", "failure"):
            for b in ("llmedge", "baseline"):
                r = by.get((b, s))
                if not r:
                    continue
                o = r["overall"]
                c = o["cache"]
                lines.append(
                    f"| {s} | {b} | {report['users']} | {o['rps']:.1f} | "
                    f"{_ms(o['latency_ms']['p50'])} | {_ms(o['latency_ms']['p95'])} | "
                    f"{_ms(o['latency_ms']['p99'])} | {_ms(o['ttft_ms']['p50'])} | "
                    f"{_ms(o['ttft_ms']['p95'])} | {c['hit_rate']:.1%} "
                    f"({c['exact']} / {c['semantic']}) | {o['error_rate']:.2%} |"
                )
        lines.append("")
    kinds = [(b, by[(b, "sustained")]) for b in ("llmedge", "baseline") if (b, "sustained") in by]
    if kinds:
        lines += [
            "Cache hits by request kind (sustained): "
            + "; ".join(
                f"{b}: "
                + ", ".join(
                    f"{k} {v['hit_rate']:.0%} ({v['exact_hits']} exact, "
                    f"{v['semantic_hits']} semantic of {v['requests']})"
                    for k, v in r["overall"]["cache"]["by_request_kind"].items()
                )
                for b, r in kinds
            ),
            "",
        ]
    ratios = report.get("ratios") or {}
    if ratios:
        lines += [
            "Baseline / llmedge (higher = llmedge better): "
            + "; ".join(
                f"{s}: " + ", ".join(f"{k} {v}" for k, v in rs.items()) for s, rs in ratios.items()
            ),
            "",
        ]
    for b in ("llmedge", "baseline"):
        r = by.get((b, "failure"))
        if not r:
            continue
        lines += [
            f"Provider failure ({b}): primary faults per phase, upstream timeout "
            f"{r['upstream_timeout_s']:.0f} s",
            "",
            "| phase | s | req/s | p50 ms | p99 ms | max ms | errors | waited on a hung "
            f"primary | took >= {r['upstream_timeout_s']:g} s | primary calls | fallback calls | "
            "breaker states seen |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for ph in r["phases"]:
            s = ph["summary"]
            states = "; ".join(f"{k}: {'/'.join(v)}" for k, v in ph["breaker_states"].items())
            lines.append(
                f"| {ph['phase']} | {ph['seconds']:.0f} | {s['rps']:.1f} | "
                f"{_ms(s['latency_ms']['p50'])} | {_ms(s['latency_ms']['p99'])} | "
                f"{_ms(s['latency_ms']['max'])} | {s['error_rate']:.1%} | "
                f"{ph.get('hung_on_upstream', 0)} | "
                f"{ph['at_least_upstream_timeout']} | {ph['primary']['requests']} | "
                f"{ph['fallback']['requests']} | {states or '-'} |"
            )
        c = r.get("checks")
        if c:
            lines += [
                "",
                f"Checks: breaker opened: {'yes' if c['breaker_opened'] else 'NO'}; fallback "
                f"answered {c['fallback_served_during_failure']} calls during the failure; "
                f"{c['errors_during_failure']} failed requests; "
                f"{c['requests_that_waited_on_the_hung_primary']} requests waited on the hung "
                f"primary (each at most the {r['upstream_timeout_s']:g} s read timeout, the "
                f"hang is 30 s); slowest request {_ms(c['max_latency_ms_during_failure'])} ms; "
                f"breaker closed after recovery on every worker seen: "
                f"{'yes' if c['breaker_closed_after_recovery'] else 'NO'}.",
            ]
        trans = r["breaker_transitions"]
        lines += [
            "",
            f"Breaker transitions seen by /health ({len(trans)}): "
            + (
                ", ".join(f"{t['t']:.1f}s {t['breaker']} {t['from']}->{t['to']}" for t in trans)
                or "none"
            ),
            "",
        ]
    for b in ("llmedge", "baseline"):
        r = by.get((b, "ratelimit"))
        if not r:
            continue
        g = r["ratelimit"]["greedy"]
        p = r["ratelimit"]["polite"]
        ps = p["summary"]
        lines += [
            f"Rate limit ({b}, {RATE_LIMIT:g}/s burst {RATE_BURST} per key and worker): the greedy "
            f"client sent {g['requests']}, got {g['ok']} answers and {g['429']} 429s; "
            f"Retry-After present on {g['retry_after_present']}/{g['429']} "
            f"(values {g['retry_after_values']}), within {g['retry_after_bound_s']} s on "
            f"{g['retry_after_within_bound']}; after waiting it out, "
            f"{g['honoured_retries_ok']}/{g['honoured_retries']} retries succeeded. "
            f"Polite clients: {ps['requests']} requests, {p['429']} 429s, "
            f"p99 {_ms(ps['latency_ms']['p99'])} ms.",
            "",
        ]
    return "\n".join(lines)


def compute_ratios(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, str]]:
    by = {(r["backend"], r["scenario"]): r for r in runs}
    out: dict[str, dict[str, str]] = {}
    for s in SCENARIOS:
        a, b = by.get(("llmedge", s)), by.get(("baseline", s))
        if not a or not b:
            continue
        oa, ob = a["overall"], b["overall"]
        if s == "ratelimit":
            oa = a["ratelimit"]["polite"]["summary"]
            ob = b["ratelimit"]["polite"]["summary"]
        out[s] = {
            "req/s": _ratio(ob["rps"], oa["rps"]),
            "p50": _ratio(oa["latency_ms"]["p50"], ob["latency_ms"]["p50"]),
            "p95": _ratio(oa["latency_ms"]["p95"], ob["latency_ms"]["p95"]),
            "p99": _ratio(oa["latency_ms"]["p99"], ob["latency_ms"]["p99"]),
        }
        if oa["ttft_ms"]["p50"] and ob["ttft_ms"]["p50"]:
            out[s]["TTFT p50"] = _ratio(oa["ttft_ms"]["p50"], ob["ttft_ms"]["p50"])
    return out


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / "report.json", out / "summary.md"
    jpath.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    mpath.write_text(markdown(report) + "\n", encoding="utf-8")
    return jpath, mpath


def _machine() -> str:
    try:
        import platform

        return f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()}"
    except Exception:  # noqa: BLE001
        return f"{os.cpu_count()} CPUs"


# --------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python loadtest/run.py", description=__doc__.split("\n\n")[0].strip()
    )
    p.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    p.add_argument("--backend", choices=["llmedge", "baseline", "both"], default="both")
    p.add_argument("--users", type=int, default=100, help="concurrent chat users (default 100)")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds per scenario (default: sustained 35, failure 45, ratelimit 20)",
    )
    p.add_argument("--out", default=str(HERE / "results"), help="report directory")
    p.add_argument(
        "--data", default=None, help="data dir (default $LLMEDGE_DATA or ../shared/data)"
    )
    p.add_argument(
        "--mix",
        default="new=0.6,exact=0.25,paraphrase=0.15",
        help="request kinds and weights (default new=0.6,exact=0.25,paraphrase=0.15)",
    )
    p.add_argument("--stream", type=float, default=0.5, help="fraction streamed (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--wait",
        type=float,
        nargs=2,
        default=(0.5, 1.5),
        metavar=("MIN", "MAX"),
        help="think time of a chat user in seconds (default 0.5 1.5)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="seconds of load before measuring (ramp-up; default 5)",
    )
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    p.add_argument("--polite-users", type=int, default=10, help="rate-limit scenario (default 10)")
    p.add_argument(
        "--greedy-concurrency",
        type=int,
        default=6,
        help="concurrent requests of the greedy client (default 6)",
    )
    p.add_argument("--ttft", type=float, default=0.05, help="mock time to first token, s")
    p.add_argument("--tpot", type=float, default=0.005, help="mock time per output token, s")
    p.add_argument("--tokens", type=int, default=24, help="mock answer length in tokens")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.users < 1:
        raise SystemExit(f"--users must be at least 1, got {args.users}")
    if args.duration is not None and not 5 <= args.duration <= 600:
        raise SystemExit(f"--duration must be between 5 and 600 seconds, got {args.duration}")
    if not 0 <= args.wait[0] <= args.wait[1]:
        raise SystemExit(f"--wait needs 0 <= MIN <= MAX, got {args.wait}")
    try:
        mix = tr.parse_mix(args.mix)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    backends = ["llmedge", "baseline"] if args.backend == "both" else [args.backend]
    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)

    corpus = tr.load_corpus(args.data)
    requests = tr.generate_requests(
        corpus, 50_000, mix=mix, stream_fraction=args.stream, seed=args.seed
    )
    requests_file = work / "requests.json"
    requests_file.write_text(json.dumps([asdict(r) for r in requests]), encoding="utf-8")
    print(f"requests: {corpus.describe()}", flush=True)
    if corpus.source.startswith("built-in"):
        print("note: evaluation data not found; using the small built-in prompt set", flush=True)

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    runs: list[dict[str, Any]] = []
    started: list[dict[str, Any]] = []
    try:
        # interleave the backends per scenario so that both see the same machine load
        for scenario in scenarios:
            for backend in backends:
                d = work / f"{scenario}-{backend}"
                d.mkdir(parents=True, exist_ok=True)
                for stale in d.glob("*"):
                    stale.unlink()
                run = Run(args, backend, scenario, d)
                print(f"[{time.strftime('%H:%M:%S')}] {scenario} / {backend} ...", flush=True)
                try:
                    result = run.execute(requests_file)
                finally:
                    started.extend(run.started)
                runs.append(result)
                o = result["overall"]
                print(
                    f"    {o['requests']} requests, {o['rps']:.1f} req/s, p50 "
                    f"{_ms(o['latency_ms']['p50'])} ms, p99 {_ms(o['latency_ms']['p99'])} ms, "
                    f"hit rate {o['cache']['hit_rate']:.1%}, errors {o['error_rate']:.2%}",
                    flush=True,
                )
    except (KeyboardInterrupt, Interrupted):
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    report = {
        "command": "python loadtest/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "finished": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": _machine(),
        "users": args.users,
        "workers": args.workers,
        "mix": {
            "corpus": corpus.describe(),
            "weights": {k: round(v, 3) for k, v in mix.items()},
            "stream_fraction": args.stream,
            "seed": args.seed,
        },
        "mock": {"ttft": args.ttft, "tpot": args.tpot, "tokens": args.tokens},
        "runs": runs,
        "ratios": compute_ratios(runs),
        "started": started,
    }
    report["left_running"] = tr.still_running(started)
    jpath, mpath = write_report(report, out)
    return tr.finish(report, markdown(report), jpath, mpath)


if __name__ == "__main__":
    sys.exit(main())

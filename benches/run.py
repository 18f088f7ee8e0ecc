"""Runs the benches/ suites and prints ratio tables.

    python benches/run.py [COMPONENT ...] [--full] [--json FILE] [--data DIR]

Conventions every suite in benches/ follows, so that this report can read it:

* ``benchmark.group`` is ``"<component>: <case>"``;
* ``benchmark.extra_info["impl"]`` names the implementation (``"llmedge"``, a
  baseline such as ``"python"``, or a peer such as ``"tiktoken"``);
* ``benchmark.extra_info["correct"]`` is True when the implementation's result
  agreed with the reference for that case;
* optionally ``benchmark.extra_info["latency"]``: per-call percentiles in
  seconds (``p50``, ``p99``) beside those of a reference operation measured in
  the same rounds (``ping_p50``, ``ping_p99``), printed under the row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCHES = Path(__file__).resolve().parent


def format_report(data: dict[str, Any]) -> str:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for b in data.get("benchmarks", []):
        groups[b.get("group") or b["name"]].append(b)
    lines: list[str] = []
    by_component: dict[str, list[str]] = defaultdict(list)
    for group in groups:
        by_component[group.split(":", 1)[0].strip()].append(group)
    for component in sorted(by_component):
        lines.append("")
        lines.append(f"== {component} ==")
        lines.append(f"{'case':<44} {'implementation':<18} {'median':>12} {'relative':>10}  agree")
        for group in by_component[component]:
            rows = groups[group]
            base = next((r for r in rows if r.get("extra_info", {}).get("impl") == "llmedge"), None)
            base_median = base["stats"]["median"] if base else None
            rows = sorted(rows, key=lambda r: r["stats"]["median"])
            case = group.split(":", 1)[-1].strip()
            for r in rows:
                info = r.get("extra_info", {})
                impl = info.get("impl", r["name"])
                median = r["stats"]["median"]
                rel = f"{median / base_median:9.2f}x" if base_median else "        -"
                correct = info.get("correct")
                agree = "yes" if correct is True else ("NO" if correct is False else "-")
                lines.append(
                    f"{case[:44]:<44} {impl[:18]:<18} {_fmt_time(median):>12} {rel:>10}  {agree}"
                )
                case = ""
                lat = info.get("latency")
                if lat:
                    lines.append(
                        f"{'':<44} p50 {_fmt_time(lat['p50'])}, p99 {_fmt_time(lat['p99'])}; "
                        f"PING p50 {_fmt_time(lat['ping_p50'])}, p99 {_fmt_time(lat['ping_p99'])}"
                        f" (p99 {lat['p99'] / lat['ping_p99']:.2f}x PING's)"
                    )
                for name, b in info.get("interleaved", {}).items():
                    paired = f"{b['ratio']:8.2f}x*"
                    lines.append(
                        f"{'':<44} {name[:18]:<18} {_fmt_time(b['median']):>12} {paired:>10}"
                    )
    lines.append("")
    lines.append(
        "relative: the implementation's median time divided by llmedge's (higher = "
        "llmedge faster); agree: its result matched the reference. *: interleaved "
        "(the baseline ran just before each of llmedge's rounds; relative is the median "
        "of the per-round ratios, which a slowdown of the machine moves much less)."
    )
    return "\n".join(lines)


def _fmt_time(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def run(
    *,
    components: list[str],
    full: bool,
    json_path: str | None,
    data_dir: str | None,
) -> int:
    benches = BENCHES
    targets = []
    for c in components:
        f = benches / f"bench_{c}.py"
        if not f.is_file():
            known = sorted(p.stem.removeprefix("bench_") for p in benches.glob("bench_*.py"))
            print(
                f"benches/run.py: unknown component {c!r}; known: {', '.join(known)}",
                file=sys.stderr,
            )
            return 2
        targets.append(str(f))
    if not targets:
        targets = [str(p) for p in sorted(benches.glob("bench_*.py"))]
    env = dict(os.environ)
    env["LLMEDGE_BENCH_QUICK"] = "0" if full else "1"
    if data_dir:
        env["LLMEDGE_DATA"] = data_dir
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(json_path) if json_path else Path(tmp) / "bench.json"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            *targets,
            "-p",
            "no:cacheprovider",
            "-q",
            "--benchmark-enable",
            "--benchmark-only",
            f"--benchmark-json={out}",
            "-o",
            "addopts=",
            "-W",
            "default",
            "--timeout=0",
            "--rootdir",
            str(benches.parent),
        ]
        proc = subprocess.run(cmd, env=env, cwd=str(benches.parent))
        if not out.is_file():
            return proc.returncode or 1
        data = json.loads(out.read_text())
    print(format_report(data))
    return proc.returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benches/run.py",
        description=(
            "Runs the pytest-benchmark suites in benches/ (quick mode unless --full) and "
            "prints, per component, each implementation's median time relative to "
            "llmedge, with a check that their results agreed."
        ),
    )
    parser.add_argument(
        "components",
        nargs="*",
        metavar="COMPONENT",
        help="only these components (the bench_<component>.py files), e.g. tokens cache",
    )
    parser.add_argument("--full", action="store_true", help="full sizes instead of quick mode")
    parser.add_argument("--json", metavar="FILE", help="also write pytest-benchmark's JSON here")
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="evaluation data directory (default: $LLMEDGE_DATA or ../shared/data)",
    )
    args = parser.parse_args(argv)
    return run(components=args.components, full=args.full, json_path=args.json,
               data_dir=args.data)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

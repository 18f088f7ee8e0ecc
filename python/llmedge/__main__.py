"""The llmedge command line: ``python -m llmedge --help``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llmedge import __version__


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llmedge",
        description="llmedge: fast, correct LLM plumbing for Python web backends.",
    )
    parser.add_argument("--version", action="version", version=f"llmedge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    bench = sub.add_parser(
        "bench",
        help="run the benchmark suites and print llmedge against the baselines and peers",
        description=(
            "Runs the pytest-benchmark suites in benches/ (quick mode unless --full) and "
            "prints, per component, each implementation's median time relative to "
            "llmedge, with a check that their results agreed."
        ),
    )
    bench.add_argument(
        "components",
        nargs="*",
        metavar="COMPONENT",
        help="only these components (the bench_<component>.py files), e.g. tokens cache",
    )
    bench.add_argument("--full", action="store_true", help="full sizes instead of quick mode")
    bench.add_argument(
        "--benches",
        metavar="DIR",
        help="the benches/ directory (default: ./benches or the one beside the source tree)",
    )
    bench.add_argument("--json", metavar="FILE", help="also write pytest-benchmark's JSON here")
    bench.add_argument(
        "--data",
        metavar="DIR",
        help="evaluation data directory (default: $LLMEDGE_DATA or ../shared/data)",
    )
    from llmedge.cache_eval import add_arguments as cache_eval_arguments

    cache_eval = sub.add_parser(
        "cache-eval",
        help="precision and recall of the semantic cache on your labelled prompt pairs",
        description=(
            "Reads labelled prompt pairs (prompt_a,prompt_b,same_answer), prints precision "
            "and recall per similarity threshold with and without the guard, the guard's "
            "rejections by reason with examples, and the threshold that meets a target "
            "precision."
        ),
    )
    cache_eval_arguments(cache_eval)
    demo = sub.add_parser(
        "demo",
        help="run the reference chat service under a short load with a provider failure",
        description=(
            "Starts two mock LLM upstreams and the gateway "
            "(llmedge.gateway), runs a short load (30 s by default) during which "
            "the primary upstream fails and recovers, prints latency percentiles, "
            "requests per second, time to first token, cache hit rate by kind, breaker "
            "transitions and the tokens and cost saved, then stops everything it started."
        ),
    )
    demo.add_argument("--duration", type=float, default=30.0, help="seconds of load (30)")
    demo.add_argument("--users", type=int, default=20, help="concurrent chat users (20)")
    demo.add_argument(
        "--backend",
        choices=["llmedge", "baseline"],
        default="llmedge",
        help="the service on llmedge (default) or on the pure-Python baselines",
    )
    demo.add_argument(
        "--data",
        metavar="DIR",
        help="prompts.csv and mqp.csv (default: $LLMEDGE_DATA or ../shared/data; "
        "a small built-in set when absent)",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the request mix (0)")
    demo.add_argument("--json", metavar="FILE", help="also write the result as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        from llmedge._bench import run

        return run(
            components=args.components,
            full=args.full,
            benches_dir=args.benches,
            json_path=args.json,
            data_dir=args.data,
        )
    if args.command == "cache-eval":
        from llmedge.cache_eval import main as cache_eval_main

        return cache_eval_main(args)
    if args.command == "demo":
        from llmedge._demo import main as demo_main

        return demo_main(args)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())

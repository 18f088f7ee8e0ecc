"""The llmedge command line: ``python -m llmedge --help``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llmedge import __version__


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmedge",
        description="llmedge: fast, correct LLM plumbing for Python web backends.",
    )
    parser.add_argument("--version", action="version", version=f"llmedge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    bench = sub.add_parser(
        "bench",
        help="moved: the benchmarks run from a source checkout (python benches/run.py)",
        add_help=False,
    )
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    from llmedge.gateway.cli import add_parser as add_serve_parser

    add_serve_parser(sub)

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
        help="run the gateway in front of two mock LLMs under a short load with a failure",
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
        "--data",
        metavar="DIR",
        help="evaluation data: a directory holding prompts.csv and mqp.csv "
        "(default: the built-in prompt set)",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the request mix (0)")
    demo.add_argument("--json", metavar="FILE", help="also write the result as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        print(
            "llmedge bench: the benchmark suites are not part of the installed package; "
            "from a source checkout run: python benches/run.py [COMPONENT ...] [--full]",
            file=sys.stderr,
        )
        return 2
    if args.command == "serve":
        from llmedge.gateway.cli import main as serve_main

        return serve_main(args)
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

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
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())

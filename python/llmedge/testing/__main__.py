"""``python -m llmedge.testing --port PORT``: serve the mock LLM until stopped."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from llmedge.testing._server import MockLLM


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llmedge.testing",
        description=(
            "Serve an OpenAI-compatible mock LLM (POST /v1/chat/completions, streaming and "
            "not) with configurable latency and fault injection (POST /mock/faults)."
        ),
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=8001, help="port (0 picks a free one; default 8001)"
    )
    parser.add_argument(
        "--ttft", type=float, default=0.0, help="seconds to the first token (default 0)"
    )
    parser.add_argument(
        "--tpot", type=float, default=0.0, help="seconds per further token (default 0)"
    )
    parser.add_argument(
        "--answer-tokens", type=int, default=24, help="tokens per answer (default 24)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="varies the deterministic answers (default 0)"
    )
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of requests that fail")
    parser.add_argument("--status", type=int, default=500, help="HTTP status of injected failures")
    parser.add_argument("--fail-all", action="store_true", help="fail every request")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        mock = MockLLM(
            ttft=args.ttft,
            tpot=args.tpot,
            answer_tokens=args.answer_tokens,
            seed=args.seed,
            host=args.host,
            port=args.port,
        )
        mock.set_faults(error_rate=args.error_rate, status=args.status, fail_all=args.fail_all)
        mock.start()
    except (ValueError, OSError, RuntimeError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    print(f"llmedge mock listening on {mock.url}", flush=True)
    try:
        done.wait()
    finally:
        mock.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``llmedge serve``: the gateway from the command line.

Flags override the ``LLMEDGE_*`` environment variables that ``create_app``
reads (they are set in the environment, so gunicorn's workers see them too);
everything without a flag is configured by its variable (see
``llmedge.gateway.app``). One worker runs under uvicorn in this process;
``--workers N`` (N > 1) replaces this process with gunicorn running N uvicorn
workers.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any

import llmedge

#: The distributions of ``llmedge[service]`` by the module they provide.
SERVICE_MODULES = {
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
    "httpx": "httpx",
    "prometheus_client": "prometheus-client",
}


def missing_service_modules(modules: dict[str, str] = SERVICE_MODULES) -> list[str]:
    """The distributions of ``modules`` that are not installed."""
    return [dist for mod, dist in modules.items() if importlib.util.find_spec(mod) is None]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    serve = sub.add_parser(
        "serve",
        help="run the OpenAI-compatible gateway (needs llmedge[service])",
        description=(
            "Runs the gateway: POST /v1/chat/completions and /chat in front of the "
            "upstreams in order of preference, with the semantic cache, rate limits, "
            "circuit breakers and fallback, GET /health and /metrics. Flags override the "
            "LLMEDGE_* environment variables; the rest is configured by them."
        ),
    )
    serve.add_argument(
        "--upstream",
        action="append",
        metavar="URL",
        help="an OpenAI-compatible base URL such as http://127.0.0.1:8001/v1, optionally "
        "labelled (primary=http://...: clients see the label, never the URL); repeat for "
        "fallbacks, in order of preference (env LLMEDGE_UPSTREAMS, comma-separated)",
    )
    serve.add_argument(
        "--redis",
        metavar="URL",
        help="share rate limits and breakers through this Redis (env LLMEDGE_REDIS_URL)",
    )
    serve.add_argument(
        "--embedder",
        metavar="SPEC",
        help="the semantic tier's embedder: hashing (default), sentence-transformers:MODEL "
        "or openai:MODEL (env LLMEDGE_EMBEDDER)",
    )
    serve.add_argument(
        "--embedder-url",
        metavar="URL",
        help="base URL of the openai: embedder (default: the first upstream; "
        "env LLMEDGE_EMBEDDER_URL; its key: env LLMEDGE_EMBEDDER_API_KEY)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes: 1 runs uvicorn, more run gunicorn with uvicorn workers (1)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="server log level (info)",
    )
    return serve


def _apply_flags(args: argparse.Namespace) -> None:
    flags = {
        "LLMEDGE_UPSTREAMS": ",".join(args.upstream) if args.upstream else None,
        "LLMEDGE_REDIS_URL": args.redis,
        "LLMEDGE_EMBEDDER": args.embedder,
        "LLMEDGE_EMBEDDER_URL": args.embedder_url,
    }
    for name, value in flags.items():
        if value is not None:
            os.environ[name] = value


def _fail(message: str) -> int:
    print(f"llmedge serve: {message}", file=sys.stderr)
    return 2


def _preflight(settings: Any) -> None:
    """What ``create_app`` would fail on in every worker, checked once here so
    that it ends with a message and exit status 2 instead of a traceback:
    a malformed Redis URL, an embeddings endpoint that does not embed, a
    sentence-transformers embedder without its package."""
    if settings.redis_url is not None:
        llmedge.RedisStore(settings.redis_url, timeout=settings.redis_timeout).close()
    kind = settings.embedder.partition(":")[0]
    has_st = importlib.util.find_spec("sentence_transformers") is not None
    if kind == "sentence-transformers" and not has_st:
        raise ValueError(
            f"LLMEDGE_EMBEDDER={settings.embedder!r} needs sentence-transformers: "
            "pip install 'llmedge[sentence-transformers]'"
        )
    if kind == "openai":
        from llmedge.gateway.backends import make_embedder

        make_embedder(settings).close()


def main(args: argparse.Namespace) -> int:
    missing = missing_service_modules()
    if missing:
        return _fail(
            f"the gateway needs the optional dependencies of llmedge[service] "
            f"(missing: {', '.join(missing)}); install them with: "
            "pip install 'llmedge[service]'"
        )
    if not 0 <= args.port <= 65535:
        return _fail(f"--port must be in 0..65535, got {args.port}")
    if args.workers < 1:
        return _fail(f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1 and importlib.util.find_spec("gunicorn") is None:
        return _fail(
            f"--workers {args.workers} runs gunicorn, which is not installed: "
            "pip install 'llmedge[service]' installs it where the platform supports it "
            "(not on Windows: run one worker per process there)"
        )
    _apply_flags(args)
    from llmedge.gateway import Settings

    try:
        settings = Settings.from_env()
        settings.validate()
        _preflight(settings)
    except (ValueError, KeyError, OSError, llmedge.StoreError) as exc:
        return _fail(str(exc))
    if args.workers == 1:
        import uvicorn

        uvicorn.run(
            "llmedge.gateway:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=args.log_level == "debug",
            http="llmedge.gateway.server:HeaderTimeoutProtocol",  # refuses slow-loris clients
        )
        return 0
    bind = f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}"
    argv = [
        sys.executable, "-m", "gunicorn",
        "-k", "llmedge.gateway.worker.UvicornWorker",
        "-w", str(args.workers),
        "-b", bind,
        "--log-level", args.log_level,
        "--graceful-timeout", "10",
        "llmedge.gateway:create_app()",
    ]  # fmt: skip
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
    return 0  # not reached: execv replaces this process

"""Load-generation plumbing of ``loadtest/run.py`` (the request mix, records and
summaries come from ``llmedge._workload``, which the demo shares).

* where the evaluation data lives, the mix on the command line, records on disk;
* the processes a run starts (the reference service under gunicorn or uvicorn)
  and their clean shutdown: every process is started in its own session and
  its whole process group is signalled on stop, so no worker is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import llmedge
from llmedge._workload import (  # noqa: F401 - the load tests' vocabulary, re-exported
    BUILTIN_PAIRS,
    BUILTIN_QUESTIONS,
    DEFAULT_MIX,
    INCOMPLETE_STREAM,
    KINDS,
    ChatRequest,
    Corpus,
    HealthMonitor,
    Record,
    breaker_states,
    builtin_corpus,
    generate_requests,
    normalise_mix,
    percentile,
    role_of,
    sse_content,
    still_running,
    summarize,
    worker_id,
)
from llmedge._workload import load_corpus as _load_corpus

#: The source checkout holding loadtest/.
REPO_ROOT = Path(__file__).resolve().parent.parent
# the directory that holds the llmedge being tested (an editable checkout or a wheel)
PACKAGE_PARENT = Path(llmedge.__file__).resolve().parent.parent


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The evaluation data directory: explicit, else $LLMEDGE_DATA, else ../shared/data."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("LLMEDGE_DATA")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "data"


def load_corpus(
    directory: str | os.PathLike[str] | None = None, *, max_chars: int = 2000
) -> Corpus:
    """The evaluation data of ``data_dir(directory)``, or the built-in prompt set when
    its files are absent (the returned corpus says which in ``source``)."""
    try:
        return _load_corpus(data_dir(directory), max_chars=max_chars)
    except FileNotFoundError:
        return builtin_corpus()


def parse_mix(text: str) -> dict[str, float]:
    """``"new=0.6,exact=0.25,paraphrase=0.15"`` -> a normalised mix."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in KINDS:
            raise ValueError(
                f"bad mix entry {part!r}: expected KIND=WEIGHT with KIND one of {', '.join(KINDS)}"
            )
        try:
            mix[name] = float(value)
        except ValueError:
            raise ValueError(
                f"bad weight {value!r} for {name!r} in mix: expected a number"
            ) from None
    return normalise_mix(mix)


def mix_counts(requests: Iterable[ChatRequest]) -> dict[str, int]:
    counts = Counter(r.kind for r in requests)
    return {k: counts.get(k, 0) for k in KINDS}


def read_records(path: str | os.PathLike[str]) -> list[Record]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(Record.from_dict(json.loads(line)))
    return out


# --------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ManagedProcess:
    """A child started in its own session; ``stop()`` ends its whole process group.

    Used for gunicorn (master + workers), uvicorn and locust. ``pids()`` lists
    the group's live members (from /proc) so that callers can verify none is
    left after ``stop()``.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pgid = self.proc.pid

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pids(self) -> list[int]:
        """Live processes of this process group (Linux /proc)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid pgrp ...: comm may hold spaces, split after ')'
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) > 2 and int(fields[2]) == self.pgid and fields[0] != "Z":
                found.append(int(entry.name))
        return found

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, wait, then SIGKILL what is left; reap the child."""
        if _group_alive(self.pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                self.proc.poll()
                if not self.pids():
                    break
                time.sleep(0.05)
            if self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pgid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)
        if not isinstance(self._log, int):
            self._log.close()

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, alive={self.alive()})"


def wait_http(url: str, *, timeout: float, proc: ManagedProcess | None = None) -> None:
    """Poll ``url`` until it answers (any status below 500... or 503 for health)."""
    import httpx

    deadline = time.monotonic() + timeout
    last: str = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited with code {proc.proc.returncode} before answering {url}"
            )
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code < 500 or r.status_code == 503:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            last = type(e).__name__
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s (last: {last})")


def start_service(
    *,
    upstreams: Sequence[str],
    backend: str = "llmedge",
    workers: int = 2,
    env: Mapping[str, str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    server: str = "gunicorn",
    startup_timeout: float = 60.0,
) -> tuple[ManagedProcess, str]:
    """Start the reference service on a free loopback port; returns (process, base URL)."""
    if backend not in ("llmedge", "baseline"):
        raise ValueError(f"backend must be 'llmedge' or 'baseline', got {backend!r}")
    if server not in ("gunicorn", "uvicorn"):
        raise ValueError(f"server must be 'gunicorn' or 'uvicorn', got {server!r}")
    port = free_port()
    if server == "gunicorn":
        argv = [
            sys.executable, "-m", "gunicorn",
            "-k", "llmedge.gateway.worker.UvicornWorker",
            "-w", str(workers),
            "-b", f"127.0.0.1:{port}",
            "--graceful-timeout", "5",
            "llmedge.gateway:create_app()",
        ]  # fmt: skip
    else:
        argv = [
            sys.executable, "-m", "uvicorn", "--factory", "llmedge.gateway:create_app",
            "--http", "llmedge.gateway.server:HeaderTimeoutProtocol",
            "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
        ]  # fmt: skip
    full_env = {
        "LLMEDGE_UPSTREAMS": ",".join(upstreams),
        "LLMEDGE_SERVICE_BACKEND": backend,
        # this llmedge (the editable package or an installed wheel), whichever
        # directory the server runs in, and the checkout's benches/ (the
        # baseline backend)
        "PYTHONPATH": os.pathsep.join(
            p
            for p in (
                str(PACKAGE_PARENT),
                str(REPO_ROOT / "benches"),
                os.environ.get("PYTHONPATH", ""),
            )
            if p
        ),
    }
    if env:
        full_env.update(env)
    proc = ManagedProcess(f"service ({server}, {backend})", argv, env=full_env, log_path=log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", timeout=startup_timeout, proc=proc)
    except BaseException:
        proc.stop()
        raise
    return proc, url

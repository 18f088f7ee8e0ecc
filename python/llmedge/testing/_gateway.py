"""The gateway served for tests: in this process (uvicorn on a thread) or as
``llmedge serve`` in a subprocess of its own session."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess as _subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from llmedge.testing._server import _ThreadServer


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class GatewayServer:
    """``llmedge.gateway`` in front of ``upstreams``, on a free loopback port.

    In this process (the default), ``settings`` are :class:`llmedge.gateway.Settings`
    fields (``cache_threshold=0.9``, ``breaker_failures=2``...) and ``app`` and
    ``service`` are the live objects. With ``subprocess=True`` it runs
    ``llmedge serve`` (``workers`` processes) with ``env`` added to the
    environment (``LLMEDGE_*`` variables). ``start()``/``stop()`` or ``with``.
    """

    def __init__(
        self,
        upstreams: Sequence[str],
        *,
        subprocess: bool = False,
        workers: int = 1,
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        **settings: Any,
    ) -> None:
        if isinstance(upstreams, str) or not upstreams:
            raise ValueError(f"upstreams must be a non-empty list of base URLs, got {upstreams!r}")
        if subprocess and settings:
            raise ValueError(
                f"settings {sorted(settings)} apply in this process only; a subprocess "
                "gateway takes LLMEDGE_* variables in env="
            )
        if not subprocess and (env or workers != 1):
            raise ValueError("env= and workers= apply to a subprocess gateway (subprocess=True)")
        self.upstreams = list(upstreams)
        self.subprocess = subprocess
        self.workers = workers
        self.env = dict(env or {})
        self.host = host
        self.settings_overrides = settings
        self.app: Any = None
        self.process: _subprocess.Popen[bytes] | None = None
        self._thread_server: _ThreadServer | None = None
        self._log: Any = None
        self.url = ""

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (``.../v1``)."""
        return self.url + "/v1"

    @property
    def service(self) -> Any:
        if self.app is None:
            raise RuntimeError("service is available for a gateway started in this process")
        return self.app.state.service

    def start(self, timeout: float = 60.0) -> GatewayServer:
        if self.url:
            raise RuntimeError(f"the gateway is already running at {self.url}")
        if self.subprocess:
            self._spawn(timeout)
        else:
            from llmedge.gateway import Settings, create_app

            self.app = create_app(Settings(upstreams=self.upstreams, **self.settings_overrides))
            server = _ThreadServer(self.app, self.host, 0, "gateway", lifespan="on")
            server.start(timeout)
            self._thread_server = server
            host = f"[{self.host}]" if ":" in self.host else self.host
            self.url = f"http://{host}:{server.port}"
        return self

    def _spawn(self, timeout: float) -> None:
        port = _free_port(self.host)
        argv = [sys.executable, "-m", "llmedge", "serve", "--host", self.host, "--port", str(port)]
        argv += ["--workers", str(self.workers), "--log-level", "warning"]
        for url in self.upstreams:
            argv += ["--upstream", url]
        # a file, not a pipe: a pipe nobody reads would fill and stall the gateway
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self.process = _subprocess.Popen(
            argv,
            env={**os.environ, **self.env},
            stdin=_subprocess.DEVNULL,
            stdout=self._log,
            stderr=_subprocess.STDOUT,
            start_new_session=True,
        )
        host = f"[{self.host}]" if ":" in self.host else self.host
        url = f"http://{host}:{port}"
        deadline = time.monotonic() + timeout
        try:
            while not _answers(url + "/health"):
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"llmedge serve exited with code {self.process.returncode}:\n{self.log()}"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the gateway did not answer at {url} within {timeout} s")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        self.url = url

    def log(self) -> str:
        """What a subprocess gateway wrote so far."""
        if self._log is None or self._log.closed:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")  # type: ignore[no-any-return]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (a subprocess: SIGTERM its process group, then SIGKILL)."""
        if self._thread_server is not None:
            self._thread_server.stop()
            self._thread_server = None
        if self.process is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, sig)
                try:
                    self.process.wait(timeout=timeout)
                    break
                except _subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
        self.url = ""

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url or "not started"
        how = f"subprocess, {self.workers} worker(s)" if self.subprocess else "in process"
        return f"GatewayServer({where}, {how}, upstreams={self.upstreams!r})"


# loopback: no proxy from the environment
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=2.0) as r:
            return bool(r.status == 200)
    except urllib.error.HTTPError as exc:
        return exc.code == 503  # up, every upstream's breaker open
    except OSError:
        return False

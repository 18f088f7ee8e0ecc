"""Real Redis servers and a real Redis Cluster for the tests (no mocks).

``RedisServer`` starts one ``redis-server`` on a free port with no
persistence; ``RedisCluster`` starts six and joins them into three masters
with a replica each. Both stop their processes and remove their files when
closed, and are context managers, so they also serve scripts and benchmarks
outside pytest::

    with RedisServer() as server:
        print(server.url)

The fixtures ``redis_server`` and ``redis_cluster`` in ``conftest.py`` wrap
them; ``require_redis()`` skips a test when the binaries are missing, or fails
it when the ``CI`` environment variable is set (CI must run the Redis tests).

The binaries are ``redis-server`` and ``redis-cli`` on PATH unless the
environment names others: ``LLMEDGE_TEST_REDIS_SERVER`` and
``LLMEDGE_TEST_REDIS_CLI`` (a path or a command name), which is how CI runs
the Redis tests against Redis 6.2 and Valkey as well (``redis-cli`` drives
Valkey too). ``server_version()`` and ``server_name()`` say what runs.

Fault injection: ``kill()`` (SIGKILL), ``restart()`` (same port, empty: no
data, no scripts), ``pause(seconds)`` (``CLIENT PAUSE``: connections stay up,
answers wait), ``debug_sleep(seconds)`` (``DEBUG SLEEP``: the whole server
blocks), ``suspend()``/``resume()`` (SIGSTOP/SIGCONT: the kernel still accepts
connections, nothing answers), and on a cluster ``kill_master(i)`` then
``wait_for_failover()``.
"""

from __future__ import annotations

import atexit
import functools
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT = 20.0

_live: weakref.WeakSet[RedisServer] = weakref.WeakSet()


def _stop_all_at_exit() -> None:
    for server in list(_live):
        server.stop()


atexit.register(_stop_all_at_exit)


class RedisUnavailable(RuntimeError):
    """``redis-server`` or ``redis-cli`` is not installed."""


SERVER_ENV = "LLMEDGE_TEST_REDIS_SERVER"
CLI_ENV = "LLMEDGE_TEST_REDIS_CLI"


def server_binary() -> str:
    """The server the tests start: $LLMEDGE_TEST_REDIS_SERVER, else redis-server."""
    return os.environ.get(SERVER_ENV) or "redis-server"


def cli_binary() -> str:
    """The client the tests drive servers with: $LLMEDGE_TEST_REDIS_CLI, else redis-cli."""
    return os.environ.get(CLI_ENV) or "redis-cli"


def missing_binaries() -> list[str]:
    return [name for name in (server_binary(), cli_binary()) if shutil.which(name) is None]


def require_redis() -> None:
    """Skip the calling test when Redis is not installed; fail it under CI."""
    import pytest

    missing = missing_binaries()
    if not missing:
        return
    message = (
        f"{' and '.join(missing)} not found on PATH: the Redis tests need a local Redis "
        f"(Debian/Ubuntu: apt-get install redis-server), or ${SERVER_ENV} and ${CLI_ENV} "
        "naming a server and a redis-cli"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI is set, so the Redis tests must run", pytrace=False)
    pytest.skip(message)


@functools.cache
def _server_identity(binary: str) -> tuple[str, tuple[int, ...], bool]:
    """`binary`'s name and version ("Valkey 9.1.2"), version, and whether it
    was built with TLS (the Redis 6.2 build CI tests with is not)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.match(r"(\w+) server v=(\d+)\.(\d+)\.(\d+)", out)
    if match is None:
        raise RedisUnavailable(f"cannot read the version of {binary} from {out!r}")
    # A TLS port with certificate files that do not exist makes the server
    # exit at once: a TLS build fails to load them, a build without TLS says
    # it lacks TLS (Valkey) or does not know the option (Redis 6.2).
    missing = tempfile.gettempdir() + "/llmedge-no-such-file.pem"
    probe = subprocess.run(
        [binary, "--port", "0", "--bind", HOST, "--save", "", "--tls-port", str(free_port()),
         "--tls-cert-file", missing, "--tls-key-file", missing, "--tls-ca-cert-file", missing],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    log = probe.stdout + probe.stderr
    tls = "'tls-port" not in log and "TLS support" not in log
    version = tuple(int(g) for g in match.groups()[1:])
    return f"{match.group(1)} {'.'.join(map(str, version))}", version, tls


def server_version() -> tuple[int, ...]:
    """The version of the server the tests start (Valkey 9.1.2 is (9, 1, 2))."""
    return _server_identity(server_binary())[1]


def server_name() -> str:
    """What the tests start, for the report header: "Valkey 9.1.2"."""
    label, _, tls = _server_identity(server_binary())
    return label if tls else f"{label}, built without TLS"


def require_tls() -> None:
    """Skip the calling test when the server was built without TLS: the
    Redis 6.2 build CI tests with is (the default server has it)."""
    import pytest

    require_redis()
    label, _, tls = _server_identity(server_binary())
    if not tls:
        pytest.skip(f"{server_binary()} ({label}) was built without TLS")


def free_port() -> int:
    """A TCP port nothing listens on now (the caller retries if it is taken later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too; Redis Cluster
    refuses ports above 55535 for that reason."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 55535)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RedisUnavailable("no free pair of ports (port, port + 10000) for a cluster node")


def _ping(port: int, timeout: float = 0.5) -> bytes:
    """A plain-TCP server's answer to PING (b"+PONG\\r\\n", b"-NOAUTH ..."), or b""
    when it does not answer within `timeout`."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64)
    except OSError:
        return b""


def _make_tls_files(directory: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost."""
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def openssl(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=llmedge test CA",
            "-keyout", ca_key, "-out", ca_crt)  # fmt: skip
    openssl("req", *ec, "-subj", "/CN=localhost", "-keyout", key, "-out", csr)
    openssl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
            "-days", "2", "-extfile", ext, "-out", crt)  # fmt: skip
    return {"ca": ca_crt, "cert": crt, "key": key}


class RedisServer:
    """One ``redis-server`` process on a free port, no persistence.

    ``password`` sets ``requirepass`` (and goes into ``url``); ``unixsocket``
    also listens on a socket file (``unix_url``); ``tls`` serves TLS only
    (``url`` is ``rediss://``, ``ca_file`` is the CA to trust); ``args`` are
    extra ``redis-server`` options (``["--maxmemory", "10mb"]``).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        password: str | None = None,
        unixsocket: bool = False,
        tls: bool = False,
        args: Sequence[str] = (),
        directory: Path | None = None,
    ) -> None:
        missing = missing_binaries()
        if missing:
            raise RedisUnavailable(f"{' and '.join(missing)} not found on PATH")
        self.password = password
        self.tls = tls
        self.extra_args = list(args)
        self._own_dir = directory is None
        self.dir = (
            Path(tempfile.mkdtemp(prefix="llmedge-redis-")) if directory is None else directory
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        self.unixsocket = self.dir / "redis.sock" if unixsocket else None
        self._tls_files = _make_tls_files(self.dir) if tls else None
        self._fixed_port = port
        self.port = port or 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    # -- addresses -------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f":{self.password}@" if self.password else ""
        return f"{scheme}://{auth}{HOST}:{self.port}/0"

    @property
    def unix_url(self) -> str:
        if self.unixsocket is None:
            raise ValueError("this server was started without unixsocket=True")
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.unixsocket}?db=0"

    @property
    def ca_file(self) -> Path:
        if self._tls_files is None:
            raise ValueError("this server was started without tls=True")
        return self._tls_files["ca"]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def log_file(self) -> Path:
        return self.dir / f"redis-{self.port}.log"

    # -- lifecycle -------------------------------------------------------------

    def _command_line(self) -> list[str]:
        cmd = [server_binary(), "--bind", HOST, "--save", "", "--appendonly", "no",
               "--dir", str(self.dir), "--daemonize", "no", "--logfile", str(self.log_file),
               "--dbfilename", f"dump-{self.port}.rdb"]  # fmt: skip
        if server_version() >= (7, 0, 0):
            cmd += ["--enable-debug-command", "yes"]
        if self._tls_files is not None:
            files = self._tls_files
            cmd += ["--port", "0", "--tls-port", str(self.port),
                    "--tls-cert-file", str(files["cert"]), "--tls-key-file", str(files["key"]),
                    "--tls-ca-cert-file", str(files["ca"]), "--tls-auth-clients", "no"]  # fmt: skip
        else:
            cmd += ["--port", str(self.port)]
        if self.password:
            cmd += ["--requirepass", self.password]
        if self.unixsocket is not None:
            cmd += ["--unixsocket", str(self.unixsocket), "--unixsocketperm", "700"]
        return cmd + self.extra_args

    def start(self) -> None:
        """Start the process; after a kill(), on the same port, empty."""
        if self.running:
            return
        last_error = ""
        # a free port can be taken between choosing and binding it: try others,
        # unless this server must keep its port (a restart, a cluster node)
        for _ in range(1 if self._fixed_port else 5):
            if not self._fixed_port:
                self.port = free_port()
            self.proc = subprocess.Popen(
                self._command_line(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            _live.add(self)
            try:
                self._wait_ready()
                self._fixed_port = self.port  # a later start() comes back on it
                return
            except RedisUnavailable as e:
                last_error = str(e)
                self._reap()
        raise RedisUnavailable(f"redis-server did not start: {last_error}")

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
                raise RedisUnavailable(
                    f"exited with {self.proc.returncode} on port {self.port}: "
                    f"{(err + log).strip()[-2000:]}"
                )
            if self._ready():
                return
            time.sleep(0.02)
        raise RedisUnavailable(f"no answer on port {self.port} after {START_TIMEOUT} s")

    def _ready(self) -> bool:
        if self.tls or self.password:
            try:
                return self.cli("PING", timeout=2.0) == "PONG"
            except (subprocess.SubprocessError, RuntimeError):
                return False
        return _ping(self.port).startswith(b"+PONG")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _reap(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # a suspended process cannot die
                self.proc.kill()
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: connections drop at once, no shutdown, nothing saved."""
        if self.proc is not None:
            self._reap()

    def restart(self) -> None:
        """Kill if running, then start again on the same port, empty (no keys, no scripts)."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """Stop the process and remove its files; safe to call twice."""
        self._reap()
        _live.discard(self)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"RedisServer(url={self.url!r}, {state})"

    # -- commands and faults ---------------------------------------------------

    def cli(self, *args: str | int | float, timeout: float = 10.0) -> str:
        """Run one command with ``redis-cli``; returns its output, raises on an error reply."""
        cmd = [cli_binary(), "-h", HOST, "-p", str(self.port)]
        if self.password:
            cmd += ["--no-auth-warning", "-a", self.password]
        if self._tls_files is not None:
            cmd += ["--tls", "--cacert", str(self._tls_files["ca"])]
        out = subprocess.run(
            [*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout
        )
        text = out.stdout.strip()
        if out.returncode != 0 or text.startswith(("ERR", "WRONGTYPE", "NOSCRIPT", "NOAUTH")):
            raise RuntimeError(
                f"redis-cli {' '.join(map(str, args))} on port {self.port} failed: "
                f"{(text + ' ' + out.stderr.strip()).strip()}"
            )
        return text

    def pause(self, seconds: float) -> None:
        """``CLIENT PAUSE`` for `seconds`: connections stay open, every command
        (even ``CLIENT UNPAUSE``) waits until the pause ends."""
        self.cli("CLIENT", "PAUSE", int(seconds * 1000), "ALL")

    def debug_sleep(self, seconds: float) -> threading.Thread:
        """``DEBUG SLEEP``: the server blocks for `seconds` (started in a thread;
        join it to wait for the end)."""

        def run() -> None:
            self.cli("DEBUG", "SLEEP", seconds, timeout=seconds + 30)

        thread = threading.Thread(target=run, name=f"redis-debug-sleep-{self.port}", daemon=True)
        thread.start()
        # the command is sent once redis-cli has connected; wait until it runs
        deadline = time.monotonic() + 5.0
        while thread.is_alive() and time.monotonic() < deadline and not self.tls:
            if not _ping(self.port, timeout=0.05):
                break
            time.sleep(0.005)
        return thread

    def suspend(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing answers."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def flushall(self) -> None:
        self.cli("FLUSHALL")
        self.cli("SCRIPT", "FLUSH")


def _parse_nodes(text: str) -> list[dict]:
    """``CLUSTER NODES`` output as dicts (id, port, flags, master_id, link, slots)."""
    nodes = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        nodes.append({
            "id": parts[0],
            "port": int(parts[1].split("@")[0].rsplit(":", 1)[1]),
            "flags": set(parts[2].split(",")),
            "master_id": parts[3],
            "link": parts[7],
            "slots": [p for p in parts[8:] if not p.startswith("[")],
        })  # fmt: skip
    return nodes


class ClusterNode:
    """One node of a RedisCluster as the cluster itself reports it."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server

    @property
    def port(self) -> int:
        return self.server.port

    def __repr__(self) -> str:
        return f"ClusterNode(port={self.port}, running={self.server.running})"


class RedisCluster:
    """Six ``redis-server`` processes joined into a Redis Cluster: three masters,
    one replica each (``redis-cli --cluster create --cluster-replicas 1``).

    ``node_timeout`` (ms) is how long a master may be silent before its replica
    takes over; small values make failover quick, but on a loaded machine a
    stalled node can be failed over spuriously, hence 2000.
    """

    def __init__(self, *, masters: int = 3, node_timeout: int = 2000) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="llmedge-cluster-"))
        self.node_timeout = node_timeout
        self.servers: list[RedisServer] = []
        try:
            for i in range(masters * 2):
                port = free_cluster_port()
                self.servers.append(
                    RedisServer(
                        port=port,
                        directory=self.dir / str(i),
                        args=[
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            f"nodes-{port}.conf",
                            "--cluster-node-timeout",
                            str(node_timeout),
                            "--cluster-replica-validity-factor",
                            "0",
                            # replicas copy their master at once (the default
                            # waits 5 s): a failover soon after a write keeps it
                            "--repl-diskless-sync-delay",
                            "0",
                        ],  # fmt: skip
                    )
                )
            subprocess.run(
                [
                    cli_binary(),
                    "--cluster",
                    "create",
                    *(f"{HOST}:{s.port}" for s in self.servers),
                    "--cluster-replicas",
                    "1",
                    "--cluster-yes",
                ],  # fmt: skip
                check=True,
                capture_output=True,
                timeout=60,
            )
            self.heal()
        except BaseException:
            self.stop()
            raise

    # -- topology --------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """Every node's URL (a client discovers the roles from any of them)."""
        return [f"redis://{HOST}:{s.port}" for s in self.servers]

    def _nodes_view(self) -> list[dict]:
        """``CLUSTER NODES`` as seen by a running node, parsed."""
        for server in self.servers:
            if not server.running:
                continue
            try:
                text = server.cli("CLUSTER", "NODES", timeout=5.0)
            except (RuntimeError, subprocess.SubprocessError):
                continue
            return _parse_nodes(text)
        raise RuntimeError("no cluster node answers CLUSTER NODES")

    def _server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def masters(self) -> list[ClusterNode]:
        """Running masters that serve slots, ordered by their first slot (a killed
        master stays out of this list even before the cluster notices)."""
        nodes = [
            n
            for n in self._nodes_view()
            if "master" in n["flags"]
            and n["slots"]
            and not n["flags"] & {"fail", "fail?"}
            and self._server(int(n["port"])).running
        ]
        nodes.sort(key=lambda n: int(str(n["slots"][0]).split("-")[0]))
        return [ClusterNode(self._server(int(n["port"]))) for n in nodes]

    def replicas(self) -> list[ClusterNode]:
        nodes = [n for n in self._nodes_view() if "slave" in n["flags"]]
        return [ClusterNode(self._server(int(n["port"]))) for n in nodes]

    def node_for_key(self, key: str) -> ClusterNode:
        """The master currently serving `key`."""
        slot = int(self._any_running().cli("CLUSTER", "KEYSLOT", key))
        for n in self._nodes_view():
            if "master" not in n["flags"] or n["flags"] & {"fail", "fail?"}:
                continue
            for r in n["slots"]:
                lo, _, hi = str(r).partition("-")
                if int(lo) <= slot <= int(hi or lo):
                    return ClusterNode(self._server(int(n["port"])))
        raise RuntimeError(f"no master serves slot {slot} of {key!r}")

    def _any_running(self) -> RedisServer:
        for s in self.servers:
            if s.running:
                return s
        raise RuntimeError("no cluster node is running")

    # -- health ----------------------------------------------------------------

    def state_ok(self) -> bool:
        """Every running node says ``cluster_state:ok`` and sees 3 healthy masters."""
        running = [s for s in self.servers if s.running]
        try:
            for s in running:
                if "cluster_state:ok" not in s.cli("CLUSTER", "INFO", timeout=5.0):
                    return False
            return len(self.masters()) == len(self.servers) // 2
        except (RuntimeError, subprocess.SubprocessError):
            return False

    def wait_until_ok(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state_ok():
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"the cluster did not become ok within {timeout} s: {self._nodes_view()}"
        )

    # -- faults ----------------------------------------------------------------

    def kill_master(self, i: int = 0) -> ClusterNode:
        """SIGKILL the `i`-th master (by slot order); returns it."""
        node = self.masters()[i]
        node.server.kill()
        return node

    def wait_for_failover(self, timeout: float = 60.0) -> float:
        """Wait until a replica has taken over every failed master's slots and the
        cluster is ok again; returns the seconds waited."""
        t0 = time.monotonic()
        self.wait_until_ok(timeout)
        return time.monotonic() - t0

    def healthy(self) -> bool:
        """Every node runs, is ok, and sees all nodes connected: the masters with
        their slots and one replica each."""
        if not all(s.running for s in self.servers) or not self.state_ok():
            return False
        for server in self.servers:
            try:
                nodes = _parse_nodes(server.cli("CLUSTER", "NODES", timeout=5.0))
            except (RuntimeError, subprocess.SubprocessError):
                return False
            if len(nodes) != len(self.servers):
                return False
            if any(n["link"] != "connected" or n["flags"] & {"fail", "fail?"} for n in nodes):
                return False
            if sum("slave" in n["flags"] for n in nodes) != len(self.servers) // 2:
                return False
        return all(self.replicas_in_sync())

    def replicas_in_sync(self) -> list[bool]:
        """Per replica: its link to its master is up (it holds the master's data)."""
        out = []
        for node in self.replicas():
            try:
                info = node.server.cli("INFO", "replication", timeout=5.0)
            except (RuntimeError, subprocess.SubprocessError):
                info = ""
            out.append("master_link_status:up" in info)
        return out

    def heal(self, timeout: float = 60.0) -> None:
        """Restart killed nodes (they rejoin, as replicas) and wait until the
        cluster is healthy again, every replica in sync with its master."""
        for s in self.servers:
            if not s.running:
                s.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return
            time.sleep(0.1)
        raise RuntimeError(f"the cluster did not heal within {timeout} s: {self._nodes_view()}")

    def flushall(self) -> None:
        for node in self.masters():
            node.server.flushall()

    def stop(self) -> None:
        for s in self.servers:
            s.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisCluster(ports={[s.port for s in self.servers]})"

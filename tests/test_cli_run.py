"""``portlease run``: the environment, renewal, signals, exit codes, and release in every case."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_portlease import LeaseInfo, PortLeaser
from pytest_portlease._config import PortRange
from pytest_portlease.cli import main

SCRIPT = Path(sys.executable).parent / "portlease"
EXAMPLE = Path(__file__).parent.parent / "examples" / "run-http-server.sh"

# CMD for the signal tests: counts the signals it gets. After the first it touches FIRST, and the
# test sends `run` the END signal, which `run` forwards after anything it sent before: `run` takes
# its signals one at a time, lowest number first, so a duplicate of the first is on its way to CMD
# before END is. CMD reports once END is here, and a duplicate cannot come later.
END = signal.SIGUSR1
COUNTER = f"""
import signal, sys, time
ready, first, report = sys.argv[1:4]
got = []
for signo in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, {int(END)}):
    signal.signal(signo, lambda signo, frame: got.append(signo))
open(ready, "w").close()
while not got:  # the test's timeout ends us if nothing comes
    time.sleep(0.01)
open(first, "w").close()
while {int(END)} not in got:
    time.sleep(0.01)
with open(report, "w") as f:
    f.write(" ".join(str(s) for s in got if s != {int(END)}))
sys.exit(3)
"""

# CMD that runs until the test creates the file named by its argument.
WAIT_FOR_FILE = """
import os, sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
"""


def wait_for(predicate: Callable[[], object], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def status(lease_dir: Path) -> list[LeaseInfo]:
    return PortLeaser(lease_dir).status() if lease_dir.exists() else []


@pytest.fixture
def common(lease_dir: Path, port_range: PortRange) -> list[str]:
    return ["--dir", os.fspath(lease_dir), "--range", str(port_range)]


@pytest.fixture
def spawn(common: list[str]) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``portlease <common> run ...`` as a process; every one is reaped at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, **kwargs: object) -> subprocess.Popen[str]:
        proc = subprocess.Popen([os.fspath(SCRIPT), *common, "run", *args], text=True, **kwargs)  # type: ignore[call-overload]
        started.append(proc)
        return proc  # type: ignore[no-any-return]

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_env_reaches_cmd_and_the_lease_is_released(
    common: list[str], lease_dir: Path, port_range: PortRange, tmp_path: Path
) -> None:
    out = tmp_path / "env.json"
    code = main([*common, "run", "-n", "3", "--label", "envtest", "--", sys.executable, "-c",
                 f"import json, os; json.dump(dict(os.environ), open({str(out)!r}, 'w'))"])
    assert code == 0
    env = json.loads(out.read_text())
    base = int(env["PORTLEASE_PORT"])
    assert port_range.low <= base <= port_range.high - 2
    assert env["PORTLEASE_PORTS"] == f"{base},{base + 1},{base + 2}"
    assert [env[f"PORTLEASE_PORT_{i}"] for i in range(3)] == [str(base + i) for i in range(3)]
    assert "PORTLEASE_PORT_3" not in env
    assert status(lease_dir) == []


def test_cmd_sees_its_lease_owned_by_itself(common: list[str], lease_dir: Path, tmp_path: Path) -> None:
    out, pid = tmp_path / "status.json", tmp_path / "pid"
    # No --dir in CMD: `run` passes PORTLEASE_DIR, so CMD's own `portlease status` sees this registry.
    code = main([*common, "run", "--", "sh", "-c",
                 f'echo $$ > {pid}; "$0" --json status > {out}', os.fspath(SCRIPT)])
    assert code == 0
    (lease,) = json.loads(out.read_text())["leases"]
    assert json.loads(out.read_text())["directory_source"] == "PORTLEASE_DIR"
    assert lease["state"] == "live"
    # CMD, not `run`: if `run` is killed, the lease lives as long as CMD does.
    assert lease["owner"]["pid"] == int(pid.read_text())
    assert lease["label"] == "portlease run sh"
    assert status(lease_dir) == []


@pytest.mark.parametrize(("cmd", "code"), [
    (["sh", "-c", "exit 7"], 7),
    (["sh", "-c", "kill -KILL $$"], 128 + signal.SIGKILL),
    (["no-such-command-anywhere"], 127),
    ([os.devnull], 126),
])
def test_exit_codes_and_release_whatever_the_outcome(
    common: list[str], lease_dir: Path, capfd: pytest.CaptureFixture[str], cmd: list[str], code: int
) -> None:
    assert main([*common, "run", "-n", "2", "--", *cmd]) == code
    assert status(lease_dir) == []
    err = capfd.readouterr().err
    if code == 127:
        assert err == "portlease: error: command not found: no-such-command-anywhere: check its name and PATH\n"
    if code == 126:
        assert err.startswith(f"portlease: error: cannot run {os.devnull} (Permission denied)")


def test_run_without_a_command_is_bad_usage(common: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*common, "run", "-n", "2", "--"]) == 2
    assert "run needs a command" in capsys.readouterr().err


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signals_sent_to_run_reach_cmd_once(
    spawn: Callable[..., subprocess.Popen[str]], lease_dir: Path, tmp_path: Path, signo: int
) -> None:
    ready, first, report = tmp_path / "ready", tmp_path / "first", tmp_path / "report"
    run = spawn("-v", "--", sys.executable, "-c", COUNTER, os.fspath(ready), os.fspath(first),
                os.fspath(report), stderr=subprocess.PIPE)
    wait_for(ready.exists)
    assert [x.state for x in status(lease_dir)] == ["live"]
    run.send_signal(signo)
    wait_for(first.exists)
    run.send_signal(END)
    _, log = run.communicate(timeout=15)
    assert run.returncode == 3  # CMD's own code
    assert report.read_text() == str(int(signo))
    # Two deliveries close together may merge into one in CMD, so check `run`'s own account too.
    assert log.count(f"forwarding signal {int(signo)} ") == 1
    assert log.count(f"forwarding signal {int(END)} ") == 1
    assert status(lease_dir) == []


def read_all(fd: int) -> str:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: every process holding the terminal side has closed it
            break
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def test_ctrl_c_at_the_terminal_reaches_cmd_exactly_once(
    common: list[str], lease_dir: Path, tmp_path: Path
) -> None:
    # The terminal sends ^C to its whole foreground process group, `run` and CMD alike: `run`
    # must not forward it again. A pseudo-terminal makes this the real thing.
    ready, first, report = tmp_path / "ready", tmp_path / "first", tmp_path / "report"
    controller, terminal = os.openpty()
    # A new session whose controlling terminal is the pty: opening it as session leader does it.
    take_tty = "import os, sys; os.close(os.open(os.ttyname(0), os.O_RDWR)); os.execv(sys.argv[1], sys.argv[1:])"
    run = subprocess.Popen(
        [sys.executable, "-c", take_tty, os.fspath(SCRIPT), "-v", *common, "run", "--",
         sys.executable, "-c", COUNTER, os.fspath(ready), os.fspath(first), os.fspath(report)],
        stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True,
    )
    try:
        wait_for(ready.exists)
        os.write(controller, b"\x03")
        wait_for(first.exists)
        run.send_signal(END)  # not the terminal's: forwarded
        assert run.wait(timeout=15) == 3
    finally:
        if run.poll() is None:
            run.kill()
        run.wait()
        os.close(terminal)
        log = read_all(controller)
        os.close(controller)
    assert report.read_text() == str(int(signal.SIGINT))
    assert "started pid" in log and f"forwarding signal {int(signal.SIGINT)} " not in log, log
    assert log.count(f"forwarding signal {int(END)} ") == 1, log
    assert status(lease_dir) == []


def test_a_long_run_with_a_short_ttl_keeps_its_lease(
    spawn: Callable[..., subprocess.Popen[str]], lease_dir: Path, tmp_path: Path
) -> None:
    done = tmp_path / "done"
    run = spawn("--ttl", "2", "--", sys.executable, "-c", WAIT_FOR_FILE, os.fspath(done))
    try:
        wait_for(lambda: status(lease_dir))
        (first,) = status(lease_dir)
        # The event itself: a renewal written after the first expiry, by run's own clock (with
        # expires = ceil(now + 2), 3 s more means now was past it). How soon it comes is the
        # scheduler's business; nothing here reads the wall clock.
        wait_for(lambda: status(lease_dir)[0].expires >= first.expires + 3)
        (info,) = status(lease_dir)
        # The same lease (its owner may have passed from run to CMD since the first read).
        assert (info.base, info.size) == (first.base, first.size) and info.pid is not None
    finally:
        done.touch()
    assert run.wait(timeout=15) == 0
    assert status(lease_dir) == []


def test_example_http_server(
    spawn: Callable[..., subprocess.Popen[str]], lease_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "hello.txt").write_text("hello from a leased port\n")
    monkeypatch.setenv("PYTHON", sys.executable)
    run = spawn("--label", "docs", "--", os.fspath(EXAMPLE), os.fspath(tmp_path),
                stderr=subprocess.PIPE)
    wait_for(lambda: status(lease_dir))
    (lease,) = status(lease_dir)
    assert lease.label == "docs"

    def fetch() -> bytes | None:
        # By hand rather than urllib: the client resets the connection, so that the server's side
        # does not sit in TIME_WAIT on the leased port for a minute, where later tests lease.
        try:
            with socket.create_connection(("127.0.0.1", lease.base), timeout=5) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.sendall(b"GET /hello.txt HTTP/1.0\r\n\r\n")
                response = b""
                while chunk := s.recv(4096):
                    response += chunk
        except OSError:
            return None
        return response.partition(b"\r\n\r\n")[2] if response.startswith(b"HTTP/1.0 200") else None

    wait_for(fetch)
    assert fetch() == b"hello from a leased port\n"
    run.terminate()
    _, err = run.communicate(timeout=15)
    assert run.returncode == 128 + signal.SIGTERM  # the server died of the forwarded SIGTERM
    assert f"on http://127.0.0.1:{lease.base}/" in err
    assert status(lease_dir) == []


def test_placeholders_name_the_ports_without_a_shell(
    common: list[str], lease_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "argv.json"
    code = main([*common, "run", "-n", "3", "--", sys.executable, "-c",
                 "import json, os, sys; json.dump([sys.argv[1:], os.environ['PORTLEASE_DIR']], "
                 f"open({str(out)!r}, 'w'))",
                 "{port}", "--peer={port2}", "{ports}", "{{port}}", "{portx}", "{}", "{port0}{port1}"])
    assert code == 0
    argv, env_dir = json.loads(out.read_text())
    base = int(argv[0])
    assert argv[1:] == [f"--peer={base + 2}", f"{base},{base + 1},{base + 2}", "{port}", "{portx}",
                        "{}", f"{base}{base + 1}"]
    assert env_dir == os.fspath(lease_dir)  # run --dir X passes PORTLEASE_DIR=X
    assert status(lease_dir) == []


def test_a_placeholder_past_the_block_is_bad_usage(
    common: list[str], lease_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*common, "run", "-n", "2", "--", "echo", "{port2}"]) == 2
    assert capsys.readouterr().err == (
        "portlease: error: invalid placeholder {port2} in CMD's arguments: -n 2 leases {port0} to "
        "{port1}; lease more ports with -n, or write {{port2}} for the literal text\n"
    )
    assert status(lease_dir) == []


def test_run_help_shows_placeholders_first() -> None:
    done = subprocess.run([os.fspath(SCRIPT), "run", "--help"], capture_output=True, text=True, check=True)
    text = " ".join(done.stdout.split())
    assert text.index("{port}") < text.index("sh -c 'exec python -m http.server $PORTLEASE_PORT'")
    assert "portlease run -n 2 -- python -m http.server {port}" in text

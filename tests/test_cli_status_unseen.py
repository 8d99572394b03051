"""``status`` and ``check`` never say "free" when they cannot see: an unreadable directory or
state is an error naming the path (exit 1), and a held lock is named, with the last state shown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _users import as_nobody, world_dir

from pytest_portlease import PortLeaser
from pytest_portlease._config import PortRange
from pytest_portlease.cli import main

SCRIPT = Path(sys.executable).parent / "portlease"


@pytest.fixture
def root_only(port_range: PortRange) -> Iterator[tuple[Path, int]]:
    """A lease directory of root's, 0o700, with a live lease in it: (directory, leased port)."""
    with world_dir() as world:
        directory = world / "leases"
        leaser = PortLeaser(directory, port_range=port_range, ttl=600)
        block = leaser.lease(2)
        os.chmod(directory, 0o700)
        try:
            yield directory, block.base + 1
        finally:
            leaser.close()


def cli(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return as_nobody(["-m", "pytest_portlease", "--dir", os.fspath(directory), *args])


@pytest.mark.parametrize("args", [["status"], ["--json", "status"], ["check", "PORT"]])
def test_another_users_private_directory_is_an_error_never_free(
    root_only: tuple[Path, int], args: list[str]
) -> None:
    directory, port = root_only
    done = cli(directory, *[str(port) if a == "PORT" else a for a in args])
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""  # not "no leases", not "free"
    assert done.stderr == (
        f"portlease: error: cannot read lease directory {directory} from --dir (Permission denied): "
        f"ask the directory's owner for access (a shared directory wants a group, see the README), "
        f"or choose a directory of your own\n"
    )


def test_a_directory_below_one_it_cannot_search(root_only: tuple[Path, int]) -> None:
    directory, _ = root_only
    below = directory / "deeper"
    done = cli(below, "status")
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert f"cannot read lease directory {below} from --dir (Permission denied)" in done.stderr


def test_a_state_file_it_cannot_read(root_only: tuple[Path, int]) -> None:
    directory, port = root_only
    os.chmod(directory, 0o755)  # the directory is open, the state file (0o600) is not
    for args in (["status"], ["check", str(port)]):
        done = cli(directory, *args)
        assert (done.returncode, done.stdout) == (1, ""), done.stderr
        assert "has an unreadable state file (Permission denied)" in done.stderr


def test_a_missing_directory_is_still_friendly(tmp_path: Path) -> None:
    done = cli(Path("/nonexistent/portlease"), "status")
    assert done.returncode == 0, done.stderr
    assert "no lease directory at /nonexistent/portlease" in done.stdout


# -- 11.5: the lock is held ---------------------------------------------------------------------

HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_status_names_the_lock_holder_and_shows_the_last_state(
    lease_dir: Path, port_range: PortRange, capsys: pytest.CaptureFixture[str]
) -> None:
    with PortLeaser(lease_dir, port_range=port_range, ttl=600) as leaser:
        block = leaser.lease(1, label="mine")
        with subprocess.Popen(
            [sys.executable, "-c", HOLD, os.fspath(lease_dir / "lock"), "holder-marker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        ) as holder:
            try:
                assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
                common = ["--dir", os.fspath(lease_dir), "--range", str(port_range)]
                assert main([*common, "status"]) == 0
                text = capsys.readouterr().out
                assert main([*common, "--json", "status"]) == 0
                doc = json.loads(capsys.readouterr().out)
            finally:
                holder.communicate("")
    (lock_line,) = [line for line in text.splitlines() if line.startswith("lock ")]
    assert f"held by pid {holder.pid} ({sys.executable} -c " in lock_line
    assert "holder-marker)" in lock_line and "read without it" in lock_line
    assert any(line.split()[:1] == [str(block.base)] and "mine" in line for line in text.splitlines())
    assert doc["lock"]["held"] is True and doc["lock"]["pid"] == holder.pid
    assert "holder-marker" in doc["lock"]["command"] and doc["lock"]["waited"] >= 1
    assert [x["base"] for x in doc["leases"]] == [block.base]


def test_status_under_a_free_lock_says_nothing_about_it(
    lease_dir: Path, port_range: PortRange, capsys: pytest.CaptureFixture[str]
) -> None:
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        leaser.lease(1)
        assert main(["--dir", os.fspath(lease_dir), "--json", "status"]) == 0
        assert json.loads(capsys.readouterr().out)["lock"] == {"held": False}
        assert main(["--dir", os.fspath(lease_dir), "status"]) == 0
        assert "\nlock " not in capsys.readouterr().out

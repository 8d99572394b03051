"""A lock holder frozen with SIGSTOP: the others time out with a LockTimeout that names the lock
and the stopped pid, status still answers, and all is well once the holder resumes."""

from __future__ import annotations

import itertools
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _reliability import check_state_bytes, child_argv

from pytest_portlease import LockTimeout, PortleaseError, PortLeaser
from pytest_portlease._config import PortRange
from pytest_portlease._state import STATE_NAME
from pytest_portlease._status import read_status
from pytest_portlease._store import LOCK_NAME

pytestmark = pytest.mark.reliability


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def test_a_frozen_lock_holder(lease_dir: Path, port_range: PortRange) -> None:
    rng = (port_range.low + 600, port_range.low + 699)
    with PortLeaser(lease_dir, port_range=rng, lock_timeout=0.3) as leaser:
        before = leaser.lease(1)
        argv = child_argv("hold-lock", directory=os.fspath(lease_dir), port_range=list(rng))
        with subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as holder:
            assert holder.stdin is not None and holder.stdout is not None
            try:
                assert holder.stdout.readline().strip() == "locked"
                os.kill(holder.pid, signal.SIGSTOP)
                while not _stopped(holder.pid):
                    time.sleep(0.001)

                with pytest.raises(LockTimeout) as info:
                    leaser.lease(1)
                error = info.value
                assert isinstance(error, TimeoutError) and isinstance(error, PortleaseError)
                assert error.holder_pid == holder.pid
                assert error.lock_path == os.fspath(lease_dir / LOCK_NAME)
                assert f"could not lock {lease_dir / LOCK_NAME} within 0.3s" in str(error)
                assert f"held by pid {holder.pid}" in str(error)
                assert str(pickle.loads(pickle.dumps(error))) == str(error)  # crosses xdist
                # A fresh leaser, and a release, wait just the same.
                with pytest.raises(LockTimeout, match=f"pid {holder.pid}"):
                    PortLeaser(lease_dir, port_range=rng, lock_timeout=0.3).lease(1)
                with pytest.raises(LockTimeout):
                    leaser.release(before)
                # Reading needs no lock for long: status gives up waiting and reads.
                assert [i.base for i in read_status(lease_dir)] == [before.base]
            finally:
                os.kill(holder.pid, signal.SIGCONT)
                out, err = holder.communicate("\n", timeout=60)  # leave the critical section
            assert holder.returncode == 0, err
        held = json.loads(out)

        # Resumed and gone: the lock is free again and nothing was lost.
        after = leaser.lease(2)
        keys = check_state_bytes((lease_dir / STATE_NAME).read_bytes())["keys"]
        assert {str(before.base), str(held["base"]), str(after.base)} <= set(keys)
        spans = sorted([(before.base, 1), (held["base"], held["size"]), (after.base, 2)])
        assert all(a + n <= b for (a, n), (b, _) in itertools.pairwise(spans)), spans
        assert leaser.release(before)


def test_a_holder_with_a_multi_line_command_is_named_on_one_line(lease_dir: Path, port_range: PortRange) -> None:
    # python -c "<script>" puts newlines in /proc/PID/cmdline: the error stays one line.
    script = ("import fcntl, sys\nfd = open(sys.argv[1], 'a')\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
              "print('locked', flush=True)\nsys.stdin.read()\n")
    lease_dir.mkdir(exist_ok=True)
    with subprocess.Popen([sys.executable, "-c", script, os.fspath(lease_dir / LOCK_NAME)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        try:
            assert holder.stdout.readline().strip() == "locked"
            rng = (port_range.low + 700, port_range.low + 709)
            with pytest.raises(LockTimeout) as info, PortLeaser(lease_dir, port_range=rng, lock_timeout=0.1) as leaser:
                leaser.lease(1)
        finally:
            holder.communicate("", timeout=60)
    message = str(info.value)
    assert "\n" not in message
    assert f"held by pid {holder.pid} ({sys.executable} -c import fcntl, sys fd = open(" in message

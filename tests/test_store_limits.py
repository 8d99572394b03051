"""The directory's files under strain: a state too big to be one, a full disk while backing up,
a big state parsed before the lock, and advice that follows the errno."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _reliability import lock_is_held
from conftest import free_window

from pytest_portlease import PortleaseError, PortLeaser, PortleaseWarning, PortUnavailable, _backups, _store
from pytest_portlease._config import PortRange
from pytest_portlease._state import STATE_NAME, _warned
from pytest_portlease._status import read_status
from pytest_portlease._store import BACKUP_PREFIX, MAX_STATE_BYTES, PREREAD_BYTES, Store, advice

FUTURE = int(time.time()) + 3600


@pytest.fixture
def port_range() -> PortRange:
    return free_window()


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    _warned.clear()


def backups(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"{BACKUP_PREFIX}*"))


# -- 9.9: a bound on the state's size ---------------------------------------------------------------

BIG = """
import sys
from pytest_portlease import PortLeaser, PortleaseError
try:
    PortLeaser(sys.argv[1], port_range=sys.argv[2]).lease(1)
except PortleaseError as e:
    print("refused:", e)
# The peak of this process's own memory (VmHWM), not getrusage's ru_maxrss: Linux carries that
# over exec from the forked parent, a pytest worker whose size depends on the tests it ran.
with open("/proc/self/status") as f:
    print("peak_kib", next(line.split()[1] for line in f if line.startswith("VmHWM:")))
"""


def test_a_sparse_300_mb_state_is_refused_not_read_or_copied(lease_dir: Path, port_range: PortRange) -> None:
    lease_dir.mkdir()
    path = lease_dir / STATE_NAME
    path.write_bytes(b'{"next": 0, "keys": {')
    os.truncate(path, 300 << 20)  # 0 bytes on disk
    done = subprocess.run(
        [sys.executable, "-c", BIG, os.fspath(lease_dir), str(port_range)],
        capture_output=True, text=True, timeout=120, check=True,
    )
    out = done.stdout
    assert f"refused: state file {path}" in out and "is 314,572,800 bytes" in out
    assert f"{MAX_STATE_BYTES:,} bytes" in out and f"mv {path} {path}.big" in out
    # Read whole, 300 MB of NULs would take 300 MB of memory at least (an independent measure).
    peak_mib = int(out.split("peak_kib ")[1]) / 1024
    assert peak_mib < 150, out
    assert backups(lease_dir) == []
    assert path.stat().st_size == 300 << 20  # left for a person to look at, never discarded
    with pytest.raises(PortleaseError, match="more than the"):
        read_status(lease_dir)


def test_backups_are_bounded_in_total_size(
    lease_dir: Path, port_range: PortRange, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_backups, "MAX_BACKUP_BYTES", 1 << 20)
    store = Store(lease_dir, "test")
    store.prepare()
    junk = [bytes([65 + i]) * (400 << 10) for i in range(4)]  # 400 KiB each, real blocks on disk
    for i, data in enumerate(junk):
        store.state_path.write_bytes(data)
        store.invalidate()
        with pytest.warns(PortleaseWarning):
            store.load()
        _warned.clear()
        # mtime orders the backups: make each one newer than the last, whatever the clock's grain.
        (newest,) = [p for p in backups(lease_dir) if p.read_bytes() == data]
        os.utime(newest, (i + 1, i + 1))
    kept = sorted(p.read_bytes() for p in backups(lease_dir))
    assert kept == sorted(junk[-2:])  # 2 x 400 KiB fit in 1 MiB, a third would not


# -- 9.10: a full disk while backing up ------------------------------------------------------------


def test_enospc_while_backing_up_warns_and_the_lease_goes_on(
    lease_dir: Path, port_range: PortRange, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(point: str) -> None:
        if point == "backup-written":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_store, "fault", full)
    lease_dir.mkdir()
    live = {str(port_range.low): {"size": 3, "expires": FUTURE}, "junk": 1}
    (lease_dir / STATE_NAME).write_text(json.dumps({"next": port_range.low, "keys": live}))
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        with pytest.warns(PortleaseWarning) as record:
            block = leaser.lease(1)
        with pytest.raises(PortUnavailable):
            leaser.lease(1, port=port_range.low + 1)
    messages = "\n".join(str(w.message) for w in record)
    assert "could not keep a backup" in messages and "No space left on device" in messages
    assert "free some space" in messages
    assert not port_range.low <= block.base <= port_range.low + 2
    assert backups(lease_dir) == []  # the partial backup is removed


# -- 9.11: a big state is parsed before the lock is taken ------------------------------------------


def _big_state(directory: Path, low: int, count: int = 6000) -> bytes:
    # fedimint's pretty layout (not ours): only the full parser reads it.
    keys = {str(low + 1000 + i): {"size": 1, "expires": FUTURE, "note": "x" * 40} for i in range(count)}
    data = json.dumps({"next": 0, "keys": keys}, indent=2).encode()
    assert len(data) >= PREREAD_BYTES
    directory.mkdir(exist_ok=True)
    (directory / STATE_NAME).write_bytes(data)
    return data


def test_a_big_unchanged_state_is_parsed_outside_the_lock(
    lease_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    window = free_window(40)
    _big_state(lease_dir, window.low)
    (lease_dir / "lock").touch()
    parses: list[bool] = []
    real = _store.parse_tolerant

    def watched(data: bytes):  # type: ignore[no-untyped-def]
        parses.append(lock_is_held(lease_dir / "lock"))
        return real(data)

    monkeypatch.setattr(_store, "parse_tolerant", watched)
    with PortLeaser(lease_dir, port_range=window) as leaser:
        leaser.lease(1)
    assert parses == [False]  # once, before the lock; reused under it


def test_a_state_changed_after_the_preread_is_parsed_again(
    lease_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    window = free_window(40)
    data = _big_state(lease_dir, window.low)
    doc = json.loads(data)
    doc["keys"] = {str(window.low + i): {"size": 1, "expires": FUTURE} for i in range(40)}  # all held
    changed = json.dumps(doc, indent=2).encode()

    def writer(point: str) -> None:
        if point == "preread":  # another writer between our preread and our lock
            (lease_dir / STATE_NAME).write_bytes(changed)

    monkeypatch.setattr(_store, "fault", writer)
    from pytest_portlease import PortRangeExhausted

    with PortLeaser(lease_dir, port_range=window) as leaser, pytest.raises(PortRangeExhausted):
        leaser.lease(1)


# -- 9.13: the advice follows the errno ------------------------------------------------------------

EMFILE = """
import os, resource, sys
from pytest_portlease import PortLeaser, PortleaseError
leaser = PortLeaser(sys.argv[1], port_range=sys.argv[2])
used = len(os.listdir("/proc/self/fd"))  # counts the listing's own descriptor too
resource.setrlimit(resource.RLIMIT_NOFILE, (used - 1, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
try:
    leaser.lease(1)
except PortleaseError as e:
    print(e)
"""


def test_too_many_open_files_says_so(lease_dir: Path, port_range: PortRange) -> None:
    done = subprocess.run(
        [sys.executable, "-c", EMFILE, os.fspath(lease_dir), str(port_range)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert "Too many open files" in done.stdout, done.stdout + done.stderr
    assert "too many open files in this process" in done.stdout and "ulimit -n" in done.stdout
    assert "make the directory writable" not in done.stdout


def test_a_directory_at_the_lock_says_remove_it(lease_dir: Path, port_range: PortRange) -> None:
    (lease_dir / "lock").mkdir(parents=True)
    with pytest.raises(PortleaseError, match=r"lock is not a regular file .*: remove it"):
        PortLeaser(lease_dir, port_range=port_range).lease(1)


_PERMISSION = "this user lacks permission: fix the permissions (ls -ld), or choose another directory"
_FULL = "the file system (or this user's quota) is full: free some space"


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (errno.EMFILE, "too many open files in this process: close some, or raise its limit (ulimit -n)"),
        (errno.ENFILE, "too many open files in the system: close some, or raise fs.file-max (sysctl)"),
        (errno.EACCES, _PERMISSION),
        (errno.EPERM, _PERMISSION),
        (errno.EROFS, "the file system is read-only: choose a directory on a writable one"),
        (errno.ENOSPC, _FULL),
        (errno.EDQUOT, _FULL),
        (errno.ENOTDIR, "a component of the path is not a directory: point it at a directory"),
        (errno.ENAMETOOLONG, "the path is too long: choose a shorter one"),
        (errno.EIO, "the default"),
    ],
)
def test_each_errno_has_its_own_advice(code: int, says: str) -> None:
    # The whole sentence: it is what a user reads, and a garbled one must fail here.
    assert advice(OSError(code, os.strerror(code)), "the default") == says
    # Naming the file changes only the advice for a file of the wrong kind.
    assert advice(OSError(code, os.strerror(code)), "the default", what=Path("/d/lock")) == says


def test_a_symlink_or_directory_is_named_when_it_is_the_cause() -> None:
    for code in (errno.EISDIR, errno.ELOOP):
        text = advice(OSError(code, os.strerror(code)), "x", what=Path("/d/lock"))
        assert text == "/d/lock is not a regular file (a directory, a link or a device): remove it"

"""Backups of an unreadable state, found by mutation testing: their names, a backup that cannot
be written (its warning, its advice, its cleanup), and what pruning keeps, byte for byte."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pytest_portlease import PortleaseWarning, _backups, _clock, _store
from pytest_portlease._state import _warned
from pytest_portlease._store import BACKUP_PREFIX, Store

#: The unix time keep_backup reads, held still: the backup's name is made of it.
STAMP = 1_700_000_000


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    _warned.clear()


@pytest.fixture
def still_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # Through the engine's one clock seam: a backup's name follows the clock the tests hold.
    monkeypatch.setattr(_clock, "now", lambda: STAMP + 0.75)


def backups(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob(f"{BACKUP_PREFIX}*"))


def load_junk(store: Store, data: bytes = b"junk") -> str:
    """Load an unreadable state (a backup is due); the warnings' text."""
    store.state_path.write_bytes(data)
    store.invalidate()
    with pytest.warns(PortleaseWarning) as record:
        store.load()
    _warned.clear()
    return "\n".join(str(w.message) for w in record)


@pytest.fixture
def store(lease_dir: Path) -> Store:
    store = Store(lease_dir, "test")
    store.prepare()
    return store


# -- names ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("still_time")
def test_a_backup_is_named_by_the_unix_second_then_numbered(store: Store, lease_dir: Path) -> None:
    first = load_junk(store, b"junk 1")
    assert backups(lease_dir) == [f"{BACKUP_PREFIX}{STAMP}"]
    assert f"the original is kept as {lease_dir / f'{BACKUP_PREFIX}{STAMP}'}" in first
    load_junk(store, b"junk 2")
    load_junk(store, b"junk 3")
    assert backups(lease_dir) == [f"{BACKUP_PREFIX}{STAMP}", f"{BACKUP_PREFIX}{STAMP}.1", f"{BACKUP_PREFIX}{STAMP}.2"]
    assert (lease_dir / f"{BACKUP_PREFIX}{STAMP}.2").read_bytes() == b"junk 3"


@pytest.mark.usefixtures("still_time")
def test_a_hundred_names_taken_in_one_second_mean_no_backup(store: Store, lease_dir: Path) -> None:
    taken = [f"{BACKUP_PREFIX}{STAMP}", *(f"{BACKUP_PREFIX}{STAMP}.{n}" for n in range(1, 100))]
    for name in taken:
        (lease_dir / name).write_bytes(b"older")
    said = load_junk(store)
    assert "the original is kept" not in said
    assert backups(lease_dir) == sorted(taken)  # no 101st name; nothing pruned either


# -- a backup that cannot be written --------------------------------------------------------


@pytest.mark.usefixtures("still_time")
def test_a_backup_that_cannot_be_created_warns_with_its_advice(tmp_path: Path) -> None:
    # A real ENAMETOOLONG at the backup's open alone: a directory path so long (through "d/..",
    # which the kernel resolves) that the state, lock and temp names fit in PATH_MAX (4096 with
    # its NUL) and the backup's longer name does not.
    (tmp_path / "d").mkdir()
    length = 4064  # + "/fm-portalloc.json.tmp-<pid of up to 7 digits>" <= 4094 < 4101 with the backup's
    hops = (length - len(os.fspath(tmp_path)) - 1 - 50) // 5
    prefix = os.fspath(tmp_path) + "/d/.." * hops + "/"
    directory = Path(prefix + "L" * (length - len(prefix)))
    assert len(os.fspath(directory)) == length
    store = Store(directory, "test")
    store.prepare()
    said = load_junk(store)
    assert (
        f"{store.state_path}: could not keep a backup of the unreadable original (File name too long); "
        f"it is repaired without one: the path is too long: choose a shorter one"
    ) in said
    assert backups(directory) == []


@pytest.mark.usefixtures("still_time")
def test_a_backup_that_fails_half_written_is_removed_and_named_by_its_strerror(
    store: Store, lease_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def eio_and_gone(point: str) -> None:
        if point == "backup-written":
            # Gone already (a prune of another process): the cleanup's unlink must not fail.
            (lease_dir / f"{BACKUP_PREFIX}{STAMP}").unlink()
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(_store, "fault", eio_and_gone)
    said = load_junk(store)
    # strerror, not "[Errno 5] ...", and EIO has no advice of its own: the default's.
    assert (
        f"{store.state_path}: could not keep a backup of the unreadable original (Input/output error); "
        f"it is repaired without one: check the directory"
    ) in said
    assert backups(lease_dir) == []


# -- pruning --------------------------------------------------------------------------------


def plant(directory: Path, name: str, data: bytes, age: int) -> int:
    """A backup ``age`` seconds old (mtime orders backups); its size on disk."""
    path = directory / f"{BACKUP_PREFIX}{name}"
    path.write_bytes(data)
    os.utime(path, (STAMP - age, STAMP - age))
    return path.stat().st_blocks * 512


def test_backups_up_to_exactly_the_byte_bound_are_kept(lease_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lease_dir.mkdir()
    newest = plant(lease_dir, "3", b"a" * (100 << 10), age=1)
    sparse = lease_dir / f"{BACKUP_PREFIX}2"
    sparse.touch()
    os.truncate(sparse, 1 << 20)  # its size on disk, which is what counts, is nothing
    os.utime(sparse, (STAMP - 2, STAMP - 2))
    assert sparse.stat().st_blocks == 0
    oldest = plant(lease_dir, "1", b"b" * (50 << 10), age=3)
    monkeypatch.setattr(_backups, "MAX_BACKUP_BYTES", newest + oldest)  # all three fit, to the byte
    _backups._prune(lease_dir)
    assert backups(lease_dir) == [f"{BACKUP_PREFIX}{n}" for n in "123"]
    monkeypatch.setattr(_backups, "MAX_BACKUP_BYTES", newest + oldest - 1)
    _backups._prune(lease_dir)
    assert backups(lease_dir) == [f"{BACKUP_PREFIX}{n}" for n in "23"]


def test_the_newest_backup_is_kept_whatever_its_size(lease_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lease_dir.mkdir()
    plant(lease_dir, "2", b"new", age=1)
    plant(lease_dir, "1", b"old", age=2)
    monkeypatch.setattr(_backups, "MAX_BACKUP_BYTES", 1)
    _backups._prune(lease_dir)
    assert backups(lease_dir) == [f"{BACKUP_PREFIX}2"]


def test_pruning_skips_what_it_cannot_remove_and_a_missing_directory(lease_dir: Path) -> None:
    lease_dir.mkdir()
    for i in range(_backups.KEEP_BACKUPS):
        plant(lease_dir, str(10 + i), b"x", age=1 + i)
    stuck = lease_dir / f"{BACKUP_PREFIX}0"
    stuck.mkdir()  # due for removal (the oldest, past the newest few), but unlink cannot
    os.utime(stuck, (0, 0))
    plant(lease_dir, "1", b"x", age=100)
    _backups._prune(lease_dir)
    assert backups(lease_dir) == sorted([stuck.name, *(f"{BACKUP_PREFIX}{10 + i}" for i in range(5))])
    _backups._prune(lease_dir / "missing")  # a directory gone meanwhile: nothing to prune, no error

"""The lease directory's files, found by mutation testing: the errors' exact text, the unlocked
read's retries, the other small files (write_file, read_file), the sweep of stale temps, the
cache that spares a parse, and the kept file's rewrite."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _reliability import unshare_works

from pytest_portlease import PortleaseError, PortleaseWarning, _store
from pytest_portlease._state import STATE_NAME, Entry, State, _warned
from pytest_portlease._store import MAX_STATE_BYTES, TEMP_PREFIX, Store


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    _warned.clear()


@pytest.fixture
def store(lease_dir: Path) -> Store:
    store = Store(lease_dir, "test")
    store.prepare()
    return store


def write(store: Store, n: int = 0) -> bool:
    """One transaction as a leaser makes it (the caller holds no lock: nobody else writes)."""
    store.load()
    return store.save(State(n, {}, {}))


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- the directory's errors ---------------------------------------------------------------------


def test_a_directory_below_a_file_cannot_be_created_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    directory = tmp_path / "file" / "leases"
    with pytest.raises(PortleaseError) as caught:
        Store(directory, "test").prepare()
    assert str(caught.value) == (
        f"lease directory {directory} from test cannot be created (Not a directory): "
        "a component of the path is not a directory: point it at a directory"
    )


# -- the unlocked read ---------------------------------------------------------------------------


def test_an_unlocked_read_of_a_missing_state_is_empty(store: Store) -> None:
    assert store.read_unlocked() == b""


def _hook_state_opens(monkeypatch: pytest.MonkeyPatch, state: Path, around: Callable[[int], None]) -> list[int]:
    """Call ``around(n)`` right after the n-th open (from 0) of the state by its name; the
    descriptors those opens returned."""
    opened = os.open
    fds: list[int] = []

    def hooked(path: object, flags: int, *args: int) -> int:
        fd = opened(path, flags, *args)  # type: ignore[arg-type]
        if path == os.fsencode(state):
            fds.append(fd)
            around(len(fds) - 1)
        return fd

    monkeypatch.setattr(os, "open", hooked)
    return fds


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_an_unlocked_read_whose_state_vanished_after_the_open_reads_the_next_one(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = store.state_path
    state.write_bytes(b'{"next": 1, "keys": {}}')
    state.with_name("new").write_bytes(b'{"next": 2, "keys": {}}')  # a writer's next state

    def vanish(n: int) -> None:
        if n == 0:  # renamed away between our open and our look at the name
            os.rename(state, state.with_name("aside"))

    real_lstat = os.lstat
    lstats = [0]

    def lstat_then_new(path: object, *args: object, **kwargs: object) -> os.stat_result:
        try:
            return real_lstat(path, *args, **kwargs)  # type: ignore[arg-type]
        finally:
            if path == os.fsencode(state) and not lstats[0]:
                lstats[0] = 1
                os.rename(state.with_name("new"), state)

    fds = _hook_state_opens(monkeypatch, state, vanish)
    monkeypatch.setattr(os, "lstat", lstat_then_new)
    assert store.read_unlocked() == b'{"next": 2, "keys": {}}'
    assert len(fds) == 2 and not any(_is_open(fd) for fd in fds)  # both closed


def test_an_unlocked_read_gives_up_on_a_state_replaced_at_every_open(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = store.state_path
    state.write_bytes(b"{}")
    new = state.with_name("new")

    def replace(n: int) -> None:
        new.write_bytes(b"{}")
        os.rename(new, state)  # another inode at the name each time, before we look at it

    fds = _hook_state_opens(monkeypatch, state, replace)
    with pytest.raises(PortleaseError) as caught:
        store.read_unlocked()
    assert str(caught.value) == (
        f"lease directory {store.directory} from test has a {STATE_NAME} that changed under each "
        "of 1000 reads: try again"
    )
    assert len(fds) == 1000 and not any(_is_open(fd) for fd in fds)


def test_a_state_too_big_that_vanished_meanwhile_says_too_big(store: Store) -> None:
    # The size is looked up for the message after the read refused the file; gone by then.
    text = str(store.too_big())
    assert text.startswith(f"state file {store.state_path} (lease directory from test) is too big, more than ")
    assert f"the {MAX_STATE_BYTES:,} bytes" in text


# -- the other small files ---------------------------------------------------------------------


def test_another_file_is_written_whole_and_read_back(store: Store) -> None:
    assert store.read_file("names.json") == b""  # missing
    store.write_file("names.json", b'{"a": 1}')
    assert (store.directory / "names.json").read_bytes() == b'{"a": 1}'
    assert store.read_file("names.json") == b'{"a": 1}'
    store.write_file("names.json", b"")
    assert store.read_file("names.json") == b""
    # The first write renamed its temp into place; the second swapped, and keeps the old file.
    assert names(store.directory) == sorted(["names.json", f"{TEMP_PREFIX}{os.getpid()}"])


@pytest.mark.parametrize("swap", ["renameat2", "os.replace"])
def test_another_file_over_a_directory_planted_at_its_name_is_refused_and_the_directory_stays(
    store: Store, swap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if swap == "os.replace":
        monkeypatch.setattr(_store, "_renameat2", False)  # as where libc lacks renameat2
    assert write(store, 1)
    planted = store.directory / "names.json"
    planted.mkdir()
    (planted / "inside").write_bytes(b"theirs")
    for _ in range(2):  # the first write has no kept file yet, the second one has
        with pytest.raises(PortleaseError) as caught:
            store.write_file("names.json", b"{}")
        assert str(caught.value) == (
            f"lease directory {store.directory} from test cannot hold names.json (Is a directory): "
            f"{planted} is not a regular file (a directory, a link or a device): remove it"
        )
        assert (planted / "inside").read_bytes() == b"theirs"  # where it was, whole
    assert write(store, 2) and write(store, 3)  # the state's writes go on
    assert store.load().next == 3
    assert sorted(p.name for p in store.directory.iterdir() if not p.name.startswith(TEMP_PREFIX)) == [
        STATE_NAME, "names.json"
    ]


def test_another_file_that_is_a_link_or_too_big_reads_as_empty(store: Store, tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"secret")
    (store.directory / "link.json").symlink_to(tmp_path / "target")
    assert store.read_file("link.json") == b""
    with open(store.directory / "big.json", "wb") as f:
        f.truncate(MAX_STATE_BYTES + 1)  # sparse: costs nothing on disk
    assert store.read_file("big.json") == b""
    with open(store.directory / "fits.json", "wb") as f:
        f.truncate(MAX_STATE_BYTES)
    assert len(store.read_file("fits.json")) == MAX_STATE_BYTES


def test_another_file_that_cannot_be_written_says_which_and_why(store: Store) -> None:
    with pytest.raises(PortleaseError) as caught:
        store.write_file("missing/names.json", b"{}")
    assert str(caught.value) == (
        f"lease directory {store.directory} from test cannot hold missing/names.json "
        "(No such file or directory): make it writable"
    )
    assert names(store.directory) == []  # the temp file is removed


# -- the sweep of stale temps -------------------------------------------------------------------


def test_the_sweep_judges_each_temp_by_the_pid_in_its_name(store: Store) -> None:
    argv = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    with subprocess.Popen(argv, stdin=subprocess.PIPE) as live, subprocess.Popen(argv, stdin=subprocess.PIPE) as other:
        try:
            for suffix in (str(live.pid), "1", "0", "-5", "abc", "", "12x"):
                (store.directory / f"{TEMP_PREFIX}{suffix}").write_bytes(b"{}")
            # Not a regular file: stale whatever its name (that process lives).
            (store.directory / f"{TEMP_PREFIX}{other.pid}").symlink_to(store.directory / "names.json")
            store.write_file("names.json", b"{}")  # no sweep: only a state's write sweeps
            assert len(names(store.directory)) == 9
            assert store.save(State(0, {}, {}))
        finally:
            for child in (live, other):
                assert child.stdin is not None
                child.stdin.close()
                assert child.wait() == 0  # alive until we let it end, and never signalled
    # Live writers' temps stay (pid 1 lives in every PID namespace); the rest is removed.
    assert names(store.directory) == sorted(
        [STATE_NAME, "names.json", f"{TEMP_PREFIX}{live.pid}", f"{TEMP_PREFIX}1"]
    )


# -- the directory under races, and another user's view -----------------------------------------


def test_a_lease_directory_that_is_a_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "leases").write_bytes(b"")
    with pytest.raises(PortleaseError) as caught:
        Store(tmp_path / "leases", "test").prepare()
    assert str(caught.value) == (
        f"lease directory {tmp_path / 'leases'} from test is not a directory (File exists): "
        "point it at a directory"
    )


def _mkdir_then(monkeypatch: pytest.MonkeyPatch, after: Callable[[Path], None]) -> None:
    """Another process acts on the directory right after our mkdir returns."""
    real = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        real(self, *args, **kwargs)  # type: ignore[arg-type]
        after(self)

    monkeypatch.setattr(Path, "mkdir", mkdir)


def test_a_directory_removed_right_after_its_creation_cannot_be_read(
    lease_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _mkdir_then(monkeypatch, Path.rmdir)
    with pytest.raises(PortleaseError) as caught:
        Store(lease_dir, "test").prepare()
    assert str(caught.value) == (
        f"lease directory {lease_dir} from test cannot be read (No such file or directory): "
        "check its permissions"
    )


def test_a_directory_replaced_by_a_file_right_after_its_creation_is_refused(
    lease_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def replace(path: Path) -> None:
        path.rmdir()
        path.write_bytes(b"")

    _mkdir_then(monkeypatch, replace)
    with pytest.raises(PortleaseError) as caught:
        Store(lease_dir, "test").prepare()
    assert str(caught.value) == f"lease directory {lease_dir} from test is not a directory: point it at a directory"
    assert lease_dir.is_file()


@pytest.mark.parametrize("mode", [0o444, 0o555, 0o400])
def test_a_state_with_no_write_bit_is_refused(lease_dir: Path, mode: int) -> None:
    lease_dir.mkdir()
    (lease_dir / STATE_NAME).write_bytes(b"{}")
    (lease_dir / STATE_NAME).chmod(mode)
    with pytest.raises(PortleaseError) as caught:
        Store(lease_dir, "test").prepare()
    assert str(caught.value) == (
        f"lease directory {lease_dir} from test holds a read-only {STATE_NAME}: "
        "make it writable (chmod u+w), or remove it"
    )


@pytest.mark.parametrize("mode", [0o644, 0o200, 0o020, 0o002])
def test_a_state_with_any_write_bit_is_taken(lease_dir: Path, mode: int) -> None:
    lease_dir.mkdir()
    (lease_dir / STATE_NAME).write_bytes(b"{}")
    (lease_dir / STATE_NAME).chmod(mode)
    store = Store(lease_dir, "test")
    store.prepare()
    assert store.read_bytes() == b"{}"


def test_a_read_only_link_target_is_not_the_states_business(lease_dir: Path, tmp_path: Path) -> None:
    # A symlink at the state's name is replaced at the next write, whatever it points to.
    lease_dir.mkdir()
    (tmp_path / "target").write_bytes(b"{}")
    (tmp_path / "target").chmod(0o444)
    (lease_dir / STATE_NAME).symlink_to(tmp_path / "target")
    store = Store(lease_dir, "test")
    store.prepare()
    with pytest.warns(PortleaseWarning, match=r"is a symbolic link; it is ignored and will be replaced"):
        assert store.read_bytes() == b""
    assert store.save(State(0, {}, {}))
    assert not (lease_dir / STATE_NAME).is_symlink()
    assert (tmp_path / "target").read_bytes() == b"{}"


def test_a_state_that_is_a_directory_says_remove_it(store: Store) -> None:
    store.state_path.mkdir()
    with pytest.raises(PortleaseError) as caught:
        store.read_bytes()
    assert str(caught.value) == (
        f"lease directory {store.directory} from test holds a {STATE_NAME} that is not a file: remove it"
    )


NOBODY = 65534


def _as_nobody(work: Callable[[], str]) -> str:
    """``work()`` in a forked child that dropped to uid and gid 65534; what it returned, or the
    text of the PortleaseError it raised."""
    import ctypes  # noqa: F401  # the engine's lazy imports, done here: the child, as nobody,
    import traceback  # cannot read this interpreter's install to import them itself

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                out, code = work(), 0
            except PortleaseError as e:
                out, code = f"PortleaseError: {e}", 0
            except BaseException:
                out = traceback.format_exc()
            os.write(w, out.encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return out


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory every uid can reach (pytest's tmp_path lives under a 0o700 directory)."""
    if os.geteuid() != 0:
        pytest.skip("dropping to another uid needs root")
    path = Path(tempfile.mkdtemp(prefix="portlease-mut-store-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_a_directory_another_user_cannot_write_says_so(world_dir: Path) -> None:
    lease_dir = world_dir / "leases"
    lease_dir.mkdir(mode=0o755)  # root's
    out = _as_nobody(lambda: str(Store(lease_dir, "test").prepare()))
    assert out == (
        f"PortleaseError: lease directory {lease_dir} from test is not writable: "
        "make it writable for this user, or choose another"
    )


def test_another_users_lock_and_state_cannot_be_opened_and_say_why(world_dir: Path) -> None:
    lease_dir = world_dir / "leases"
    root = Store(lease_dir, "test")
    root.prepare()
    os.close(root.open_lock())
    assert root.save(State(0, {}, {}))
    lease_dir.chmod(0o777)  # anyone may create files here, but ours are private (0o600)

    def open_lock() -> str:
        store = Store(lease_dir, "test")
        store.prepare()
        return str(store.open_lock())

    def read_state() -> str:
        store = Store(lease_dir, "test")
        store.prepare()
        return repr(store.read_bytes())

    lacks = "this user lacks permission: fix the permissions (ls -ld), or choose another directory"
    assert _as_nobody(open_lock) == (
        f"PortleaseError: lease directory {lease_dir} from test cannot open its lock file "
        f"(Permission denied): {lacks}"
    )
    assert _as_nobody(read_state) == (
        f"PortleaseError: lease directory {lease_dir} from test has an unreadable state file "
        f"(Permission denied): {lacks}"
    )


def test_the_sweeps_of_nobody_and_of_root_keep_a_temp_of_a_live_process_of_another_user(world_dir: Path) -> None:
    # Signalling pid 1 is not allowed to nobody (EPERM): that writer is alive, its temp stays.
    lease_dir = world_dir / "leases"
    lease_dir.mkdir()
    lease_dir.chmod(0o777)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    for pid in ("1", dead.stdout.strip()):
        (lease_dir / f"{TEMP_PREFIX}{pid}").write_bytes(b"{}")

    def save() -> str:
        store = Store(lease_dir, "test")
        store.prepare()
        return str(store.save(State(0, {}, {})))

    assert _as_nobody(save) == "True"
    assert names(lease_dir) == sorted([STATE_NAME, f"{TEMP_PREFIX}1"])
    root = Store(lease_dir, "test")  # root may signal pid 1: alive to it too
    root.prepare()
    assert write(root, 1)
    assert names(lease_dir) == sorted([STATE_NAME, f"{TEMP_PREFIX}1", f"{TEMP_PREFIX}{os.getpid()}"])


class _Monotonic:
    """Stands in for the time module _store reads its sweep's clock from: held still, stepped."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_stale_temps_are_looked_for_at_the_first_write_then_every_ten_seconds(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Monotonic()
    monkeypatch.setattr(_store, "time", clock)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = store.directory / f"{TEMP_PREFIX}{dead.stdout.strip()}"
    stale.write_bytes(b"{}")
    assert write(store, 0)
    assert not stale.exists()  # the first write sweeps
    stale.write_bytes(b"{}")
    clock.now += 9.999
    assert write(store, 1)
    assert stale.exists()  # not looked for again yet
    clock.now = 1010.0
    assert write(store, 2)
    assert not stale.exists()  # ten seconds after the last sweep
    stale.write_bytes(b"{}")
    clock.now = 1019.5
    assert write(store, 3)
    assert stale.exists()
    clock.now = 1020.0
    assert write(store, 4)
    assert not stale.exists()


def test_the_sweep_reads_past_other_files_in_any_order(store: Store) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    others = [f"other-{i}" for i in range(40)]
    for name in others:
        (store.directory / name).write_bytes(b"")
    stale = [f"{TEMP_PREFIX}{dead.stdout.strip()}", f"{TEMP_PREFIX}x{{}}", f"{TEMP_PREFIX}0"]
    for name in stale:
        (store.directory / name).write_bytes(b"{}")
    assert write(store, 0)
    assert names(store.directory) == sorted([*others, STATE_NAME])


# -- our files' modes in a directory shared by a group -------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("directory_mode", [0o2775, 0o2770, 0o750, 0o700])
def test_our_files_take_the_groups_bits_of_the_directory(lease_dir: Path, directory_mode: int) -> None:
    lease_dir.mkdir()
    lease_dir.chmod(directory_mode)
    expected = 0o600 | (directory_mode & 0o060)
    old = os.umask(0o077)
    try:
        store = Store(lease_dir, "test")
        store.prepare()
        os.close(store.open_lock())
        for n in range(3):  # a rename, an exchange with a new file, then a rewrite of the kept one
            assert write(store, n)
            assert _mode(store.state_path) == expected
        assert _mode(store.lock_path) == expected
        assert _mode(lease_dir / f"{TEMP_PREFIX}{os.getpid()}") == expected
    finally:
        os.umask(old)


def test_a_kept_file_is_given_the_groups_bits_when_the_directory_became_shared(store: Store) -> None:
    assert write(store, 0)
    assert write(store, 1)
    kept = store.directory / f"{TEMP_PREFIX}{os.getpid()}"
    inode = os.lstat(kept).st_ino
    assert _mode(kept) == 0o600
    store.directory.chmod(0o2770)
    store.prepare(again=True)
    assert write(store, 2)
    assert os.lstat(store.state_path).st_ino == inode  # rewritten in place
    assert _mode(store.state_path) == 0o660


# -- the write's failures ---------------------------------------------------------------------


OTHER_WRITER = """
import sys
from pathlib import Path
from pytest_portlease._state import State
from pytest_portlease._store import Store
store = Store(Path(sys.argv[1]), "other")
store.prepare()
store.load()
assert store.save(State(7, {}, {}))
"""


def other_writer(directory: Path) -> None:
    """Another process writes the state (next = 7)."""
    subprocess.run([sys.executable, "-c", OTHER_WRITER, os.fspath(directory)], check=True)


def test_a_write_over_a_state_it_did_not_read_puts_that_state_back(lease_dir: Path) -> None:
    ours = Store(lease_dir, "test")
    ours.prepare()
    assert write(ours, 1) and write(ours, 2)  # ours keeps a file under its temp name
    ours.load()
    # Another writer (under a lock file that replaced ours) writes meanwhile: its file is not
    # the one we read.
    other_writer(lease_dir)
    written = ours.state_path.read_bytes()
    assert ours.save(State(3, {}, {})) is False
    assert ours.state_path.read_bytes() == written  # theirs, put back
    assert ours.loaded_bytes is None  # nothing cached stays: the next load reads the file
    assert ours.load().next == 7


def test_a_state_removed_under_the_write_says_it_vanished(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    assert write(store, 1) and write(store, 2)
    store.load()
    other_writer(store.directory)

    def remove(point: str) -> None:
        if point == "after-replace":
            os.unlink(store.state_path)  # ours swapped in, then gone before we could put theirs back

    monkeypatch.setattr(_store, "fault", remove)
    with pytest.raises(PortleaseError) as caught:
        store.save(State(3, {}, {}))
    assert str(caught.value) == (
        f"lease directory {store.directory} from test cannot be written (the state file vanished): "
        "make it and its state file writable"
    )


def test_a_failed_write_says_why_and_leaves_no_temp(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    assert write(store, 1)
    before = store.state_path.read_bytes()

    def full(point: str) -> None:
        if point == "temp-written":
            raise OSError(28, os.strerror(28))

    monkeypatch.setattr(_store, "fault", full)
    with pytest.raises(PortleaseError) as caught:
        write(store, 2)
    assert str(caught.value) == (
        f"lease directory {store.directory} from test cannot be written (No space left on device): "
        "make it and its state file writable"
    )
    assert names(store.directory) == [STATE_NAME]
    assert store.state_path.read_bytes() == before
    assert store.loaded_bytes is None
    monkeypatch.setattr(_store, "fault", None)
    assert write(store, 3)
    assert store.load().next == 3


def test_an_exchange_refused_for_another_reason_is_an_error(store: Store) -> None:
    store.write_file("names.json", b"{}")
    with pytest.raises(PortleaseError) as caught:
        store.write_file("names.json/below", b"{}")  # a component that is a file
    assert str(caught.value) == (
        f"lease directory {store.directory} from test cannot hold names.json/below "
        "(Not a directory): a component of the path is not a directory: point it at a directory"
    )
    assert names(store.directory) == ["names.json"]


# -- the lock file, and the file a write keeps ----------------------------------------------------


def test_the_lock_file_is_opened_close_on_exec_and_never_through_a_link(store: Store, tmp_path: Path) -> None:
    fd = store.open_lock()
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    finally:
        os.close(fd)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    store.lock_path.unlink()
    store.lock_path.symlink_to(target)  # planted after prepare() looked
    with pytest.raises(PortleaseError) as caught:
        store.open_lock()
    assert str(caught.value) == (
        f"lease directory {store.directory} from test cannot open its lock file "
        f"(Too many levels of symbolic links): {store.lock_path} is not a regular file "
        "(a directory, a link or a device): remove it"
    )


def test_a_lock_file_that_cannot_be_opened_for_another_reason_says_make_the_directory_writable(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def failing(path: object, flags: int, mode: int = 0o777) -> int:
        if os.fsencode(path) == os.fsencode(store.lock_path):  # type: ignore[arg-type]
            raise OSError(errno.EIO, os.strerror(errno.EIO))  # a disk error: no advice of its own
        return real_open(path, flags, mode)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", failing)
    with pytest.raises(PortleaseError) as caught:
        store.open_lock()
    assert str(caught.value) == (
        f"lease directory {store.directory} from test cannot open its lock file "
        "(Input/output error): make the directory writable"
    )


def _kept(store: Store) -> Path:
    return store.directory / f"{TEMP_PREFIX}{os.getpid()}"


def test_discarding_the_kept_file_removes_it_and_the_next_write_still_takes(store: Store) -> None:
    assert write(store, 1) and write(store, 2)
    assert _kept(store).exists()
    store.discard_temp()
    assert names(store.directory) == [STATE_NAME]
    store.discard_temp()  # nothing kept: nothing to do
    assert write(store, 3)  # not taken for a file swapped out from under us
    assert store.load().next == 3
    assert write(store, 4) and _kept(store).exists()
    _kept(store).unlink()  # removed by someone else meanwhile
    store.discard_temp()
    assert names(store.directory) == [STATE_NAME]


def test_a_forked_child_does_not_discard_its_parents_kept_file(store: Store) -> None:
    assert write(store, 1) and write(store, 2)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            store.discard_temp()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _kept(store).exists()  # the parent's, named with its pid
    store.discard_temp()
    assert not _kept(store).exists()


_AS_PID_1 = """
import os, sys
from pathlib import Path
from pytest_portlease._state import State
from pytest_portlease._store import Store
assert os.getpid() == 1, os.getpid()  # a container's first process, pytest run as its command
store = Store(Path(sys.argv[1]), "pid 1")
store.prepare()
for n in (1, 2, 3):
    store.load()
    assert store.save(State(n, {}, {}))
assert os.path.exists(Path(sys.argv[1]) / "fm-portalloc.json.tmp-1")  # the kept file
store.discard_temp()
print(store.load().next)
"""


def test_a_writer_that_is_pid_1_of_its_namespace_writes_and_discards_its_temp(store: Store) -> None:
    if not unshare_works():
        pytest.skip("unshare --pid --fork is refused here")
    argv = ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-c", _AS_PID_1, os.fspath(store.directory)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "3\n", "")
    assert names(store.directory) == [STATE_NAME]
    assert store.load().next == 3


def test_without_renameat2_in_libc_writes_replace_the_state_and_keep_no_temp(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ctypes

    class OldLibc:  # a C library without renameat2 (glibc before 2.28)
        def __init__(self, name: object, use_errno: bool = False) -> None:
            pass

    monkeypatch.setattr(_store, "_renameat2", None)  # not looked up yet
    monkeypatch.setattr(ctypes, "CDLL", OldLibc)
    for n in (1, 2, 3):
        assert write(store, n)
        assert names(store.directory) == [STATE_NAME]  # os.replace: nothing kept to rewrite
    assert _store._renameat2 is False  # looked up once
    assert store.load().next == 3


def test_a_write_over_its_own_read_file_rewritten_in_place_by_another_writer_is_refused(lease_dir: Path) -> None:
    # Two writers under two lock files (the lock file was removed between them). A reads the
    # state; B writes twice: its second write rewrites in place the very file A read (B kept it
    # under its temp name) and swaps it back. The file A's write takes out is then the one A
    # read by inode, but not by content: A must not write over B's ranges.
    a, b = Store(lease_dir, "a"), Store(lease_dir, "b")
    a.prepare()
    b.prepare()
    assert write(a, 1)
    read = os.stat(a.state_path).st_ino
    a.load()
    for n, base in ((2, 100), (3, 200)):
        state = b.load()
        state.add(Entry(base, 2, 4_000_000_000))
        state.next = n
        assert b.save(state)
    assert os.stat(a.state_path).st_ino == read  # the same inode, other bytes
    written = a.state_path.read_bytes()
    assert a.save(State(9, {}, {})) is False
    assert a.state_path.read_bytes() == written  # B's, put back
    assert sorted(a.load().entries) == [100, 200]

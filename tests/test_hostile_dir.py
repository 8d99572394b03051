"""Hostile lease directories: planted symlinks, a file instead of a directory, missing
permissions, and a directory that two users share through their group.

The suite runs as root here and in CI, and root ignores permission bits. The permission tests
therefore run their leasers in child processes that drop to other uids (``subprocess`` with
``user``/``group``/``extra_groups``): 65534 (nobody) and 65533, which need no passwd entry. The
child needs an interpreter those uids may execute (a venv's python often links into /root, which
is 0o700): the first of ours, its base, or the system's of the same version, with the package and
its pure-Python dependencies on PYTHONPATH; with none, these tests skip and say why. Run as an
ordinary user, the chmod variants below run instead.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _reliability import CHILD, check_state_bytes, child_argv

import pytest_portlease
from pytest_portlease import PortleaseError, PortLeaser, PortleaseWarning, _state
from pytest_portlease._config import PortRange
from pytest_portlease._state import STATE_NAME
from pytest_portlease._status import read_status
from pytest_portlease._store import BACKUP_PREFIX, LOCK_NAME, TEMP_PREFIX

pytestmark = pytest.mark.reliability

ROOT = os.geteuid() == 0
NOBODY, OTHER, SHARED_GID = 65534, 65533, 4242
VICTIM = b"precious: must never be written through a link\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_bytes(VICTIM)
    path.chmod(0o644)
    return path


def _unchanged(victim: Path) -> None:
    assert victim.read_bytes() == VICTIM
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


def _plant(directory: Path, names: list[str], target: Path) -> None:
    for name in names:
        (directory / name).unlink(missing_ok=True)
        (directory / name).symlink_to(target)


def _small(port_range: PortRange) -> tuple[int, int]:
    return (port_range.low + 400, port_range.low + 499)


# -- symlinks ------------------------------------------------------------------------------------


def test_symlinks_at_our_names_are_replaced_never_followed(
    lease_dir: Path, port_range: PortRange, victim: Path
) -> None:
    lease_dir.mkdir()
    temps = [f"{TEMP_PREFIX}{os.getpid()}", f"{TEMP_PREFIX}1"]  # ours, and a "dead writer's"
    _plant(lease_dir, [LOCK_NAME, STATE_NAME, *temps], victim)
    _state._warned.clear()
    with PortLeaser(lease_dir, port_range=_small(port_range)) as leaser:
        with pytest.warns(PortleaseWarning, match="symbolic link"):
            block = leaser.lease(2)
        leaser.release(leaser.lease(1))
    _unchanged(victim)
    for name in (LOCK_NAME, STATE_NAME):
        assert not (lease_dir / name).is_symlink() and (lease_dir / name).is_file(), name
    assert [p.name for p in lease_dir.iterdir() if p.name.startswith(TEMP_PREFIX)] == []
    assert check_state_bytes((lease_dir / STATE_NAME).read_bytes())["keys"] == {}
    assert block.size == 2


def test_symlinks_planted_while_a_leaser_lives(
    lease_dir: Path, port_range: PortRange, victim: Path
) -> None:
    rng = _small(port_range)
    with PortLeaser(lease_dir, port_range=rng) as leaser:
        kept = leaser.lease(2)
        _plant(lease_dir, [STATE_NAME, f"{TEMP_PREFIX}{os.getpid()}"], victim)
        _state._warned.clear()
        with pytest.warns(PortleaseWarning, match="symbolic link"):
            leaser.lease(1)
        with PortLeaser(lease_dir, port_range=rng) as other:
            other.lease(3)
        _unchanged(victim)
        assert not (lease_dir / STATE_NAME).is_symlink()
        # The link took the state's name and so its ranges: renewal writes ours back.
        assert leaser.renew() == []
        assert str(kept.base) in check_state_bytes((lease_dir / STATE_NAME).read_bytes())["keys"]
    _unchanged(victim)


def test_symlinked_backup_names_are_skipped(
    lease_dir: Path, port_range: PortRange, victim: Path
) -> None:
    lease_dir.mkdir()
    garbage = b"\x00 not json \xff"
    (lease_dir / STATE_NAME).write_bytes(garbage)
    now = int(time.time())
    # Every name a backup could take in the next few seconds is a link to the victim.
    names = [f"{BACKUP_PREFIX}{t}" for t in range(now, now + 5)]
    names += [f"{BACKUP_PREFIX}{t}.{n}" for t in range(now, now + 5) for n in range(1, 3)]
    _plant(lease_dir, names, victim)
    _state._warned.clear()
    with (
        PortLeaser(lease_dir, port_range=_small(port_range)) as leaser,
        pytest.warns(PortleaseWarning, match="original is kept"),
    ):
        leaser.lease(1)
    _unchanged(victim)
    kept = [p for p in lease_dir.glob(f"{BACKUP_PREFIX}*") if not p.is_symlink()]
    assert [p.read_bytes() for p in kept] == [garbage]


# -- not a directory -------------------------------------------------------------------------


def test_a_lease_directory_that_is_a_file(tmp_path: Path, port_range: PortRange) -> None:
    path = tmp_path / "leases"
    path.write_bytes(b"a file\n")
    with pytest.raises(PortleaseError, match=r"is not a directory") as info:
        PortLeaser(path, port_range=_small(port_range)).lease(1)
    assert str(path) in str(info.value) and "from argument" in str(info.value)
    with pytest.raises(PortleaseError, match=r"cannot be created \(Not a directory\)"):
        PortLeaser(path / "below", port_range=_small(port_range)).lease(1)
    assert path.read_bytes() == b"a file\n"


def test_a_state_file_that_is_a_directory(lease_dir: Path, port_range: PortRange) -> None:
    (lease_dir / STATE_NAME).mkdir(parents=True)
    with pytest.raises(PortleaseError, match=f"holds a {STATE_NAME} that is not a file: remove it"):
        PortLeaser(lease_dir, port_range=_small(port_range)).lease(1)
    with pytest.raises(PortleaseError, match="not a file"):
        read_status(lease_dir)


@pytest.mark.parametrize("name", [STATE_NAME, LOCK_NAME])
def test_a_fifo_at_our_names_never_hangs(lease_dir: Path, port_range: PortRange, name: str) -> None:
    # Opening a FIFO for reading waits for a writer: in a child, so a hang fails, not stalls.
    lease_dir.mkdir()
    os.mkfifo(lease_dir / name)
    args = {"directory": os.fspath(lease_dir), "port_range": list(_small(port_range))}
    with subprocess.Popen(child_argv("lease", **args), stdout=subprocess.PIPE, text=True) as child:
        try:
            out, _ = child.communicate(timeout=30)
        finally:
            child.kill()
    answer = json.loads(out)
    if name == STATE_NAME:
        assert answer["error"] == "PortleaseError" and "not a file" in answer["message"]
    else:
        # flock works on a FIFO's inode as on a file's: the lock still excludes.
        assert "base" in answer, answer
        assert read_status(lease_dir)[0].base == answer["base"]


def test_a_read_only_state_file_is_a_clear_error(lease_dir: Path, port_range: PortRange) -> None:
    lease_dir.mkdir()
    state = lease_dir / STATE_NAME
    state.write_text('{"next": 0, "keys": {}}')
    state.chmod(0o444)
    with pytest.raises(PortleaseError, match=rf"read-only {STATE_NAME}.*chmod u\+w") as info:
        PortLeaser(lease_dir, port_range=_small(port_range)).lease(1)
    assert str(lease_dir) in str(info.value)
    assert state.read_text() == '{"next": 0, "keys": {}}'


# -- permissions, with real users ------------------------------------------------------------


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory every uid can reach: pytest's tmp_path lives under a 0o700 directory."""
    path = Path(tempfile.mkdtemp(prefix="portlease-perm-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def _interpreters() -> list[str]:
    """Interpreters of our Python version, ours first. A venv's python often links to a build
    under a home directory that other users cannot enter (/root is 0o700 here)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = [sys.executable, getattr(sys, "_base_executable", sys.executable)]
    found += [w for w in (shutil.which(version, path="/usr/local/bin:/usr/bin:/bin"),) if w]
    return list(dict.fromkeys(found))


@functools.cache
def _readable_copy() -> Path:
    """The package, its pure-Python dependencies (filelock, platformdirs) and the child script,
    copied where any user can read them: the checkout may sit in a private directory (CI clones
    into a 0700 temporary directory) and the venv under /root. Removed at exit."""
    import atexit

    import filelock
    import platformdirs

    root = Path(tempfile.mkdtemp(prefix="portlease-readable-"))
    atexit.register(shutil.rmtree, root, True)
    for module in (pytest_portlease, filelock, platformdirs):
        source = Path(module.__file__ or "").parent
        shutil.copytree(source, root / source.name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(CHILD, root / CHILD.name)
    for path in (root, *root.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def _child_env() -> dict[str, str]:
    # Whichever interpreter runs the child, it imports from the readable copy.
    return {**os.environ, "PYTHONPATH": os.fspath(_readable_copy()), "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/"}


def _as_user(
    mode: str, uid: int, gid: int, groups: list[int], python: str | None = None, **args: Any
) -> dict[str, Any]:
    """Run a child mode as ``uid``/``gid`` with umask 022; return its JSON answer."""
    argv = child_argv(mode, **args)
    argv[0] = python or _nobody_python()
    argv[1] = os.fspath(_readable_copy() / CHILD.name)
    with subprocess.Popen(
        [argv[0], "-s", *argv[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
        env=_child_env(),
        umask=0o022,
        user=uid,
        group=gid,
        extra_groups=groups,
    ) as child:
        out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err.decode()
    answer: dict[str, Any] = json.loads(out)
    return answer


def _starts_as(python: str, uid: int) -> str | None:
    """Why ``python`` cannot start as ``uid`` (None when it can). The oracle runs no code of ours,
    so a broken package fails the tests below instead of skipping them."""
    try:
        done = subprocess.run(
            [python, "-S", "-c", "pass"], capture_output=True, cwd="/", user=uid, group=uid,
            extra_groups=[], timeout=60, check=False,
        )
    except OSError as e:
        return str(e)
    return None if done.returncode == 0 else (done.stderr.decode().strip().splitlines() or ["?"])[-1]


@functools.cache
def _nobody_python() -> str:
    problems = []
    for python in _interpreters():
        if (problem := _starts_as(python, NOBODY)) is not None:
            problems.append(f"{python}: {problem}")
            continue
        # It starts: from here on, a failure is the package's (or the readable copy's) to answer.
        assert _as_user("hello", NOBODY, NOBODY, [], python=python)["uid"] == NOBODY
        return python
    pytest.skip(f"no interpreter starts as uid {NOBODY}: {'; '.join(problems)}")


@pytest.fixture
def as_nobody() -> None:
    if not ROOT:
        pytest.skip("dropping to other uids needs root; the chmod variants cover this user")
    _nobody_python()


@pytest.mark.usefixtures("as_nobody")
def test_an_unwritable_directory_as_another_user(world_dir: Path, port_range: PortRange) -> None:
    # Owned by root, 0o755: nobody may read it but not create anything in it.
    lease_dir = world_dir / "leases"
    lease_dir.mkdir(mode=0o755)
    args: dict[str, Any] = {"directory": os.fspath(lease_dir), "port_range": list(_small(port_range))}
    answer = _as_user("lease", NOBODY, NOBODY, [], **args)
    assert answer["error"] == "PortleaseError"
    assert f"lease directory {lease_dir} from argument is not writable" in answer["message"]
    # Missing, under a parent it may not write to: it cannot be created.
    args["directory"] = os.fspath(lease_dir / "below")
    answer = _as_user("lease", NOBODY, NOBODY, [], **args)
    assert answer["error"] == "PortleaseError"
    assert "cannot be created (Permission denied)" in answer["message"]
    assert sorted(lease_dir.iterdir()) == []


@pytest.mark.skipif(ROOT, reason="root ignores permission bits: see the test as another user")
def test_an_unwritable_directory(lease_dir: Path, port_range: PortRange) -> None:
    lease_dir.mkdir(mode=0o555)
    try:
        with pytest.raises(PortleaseError, match="is not writable"):
            PortLeaser(lease_dir, port_range=_small(port_range)).lease(1)
    finally:
        lease_dir.chmod(0o755)


def _group_dir(path: Path, mode: int) -> Path:
    """A directory owned by root and the shared group, with ``mode``."""
    path.mkdir()
    os.chown(path, 0, SHARED_GID)
    path.chmod(mode)
    return path


def _group_rw(path: Path, gid: int) -> None:
    st = path.lstat()
    assert stat.S_ISREG(st.st_mode), path
    assert st.st_gid == gid, (path, st.st_gid)
    assert st.st_mode & 0o660 == 0o660, (path, oct(st.st_mode))


@pytest.mark.usefixtures("as_nobody")
def test_a_setgid_directory_shared_by_two_users(world_dir: Path, port_range: PortRange) -> None:
    # The documented set-up: group-owned by the shared group, setgid, group-writable (2770).
    lease_dir = _group_dir(world_dir / "shared", 0o2770)
    args: dict[str, Any] = {"directory": os.fspath(lease_dir), "port_range": list(_small(port_range)), "size": 3}
    first = _as_user("lease", NOBODY, NOBODY, [SHARED_GID], **args)
    second = _as_user("lease", OTHER, OTHER, [SHARED_GID], **args)
    assert "error" not in first and "error" not in second, (first, second)
    assert first["base"] + 3 <= second["base"] or second["base"] + 3 <= first["base"]
    keys = check_state_bytes((lease_dir / STATE_NAME).read_bytes())["keys"]
    assert {str(first["base"]), str(second["base"])} <= set(keys)
    # Created by one user under umask 022, rewritten by the other: group rw survives both.
    for name in (LOCK_NAME, STATE_NAME):
        _group_rw(lease_dir / name, SHARED_GID)
    assert (lease_dir / LOCK_NAME).stat().st_uid == NOBODY  # the first user made it


@pytest.mark.usefixtures("as_nobody")
def test_a_sticky_shared_directory_is_a_clear_error(world_dir: Path, port_range: PortRange) -> None:
    # The sticky bit (as on /tmp) lets only a file's owner rename over it: the second user cannot
    # replace the state the first one wrote. The documented mode is 2770, not 3770.
    lease_dir = _group_dir(world_dir / "sticky", 0o3770)
    args: dict[str, Any] = {"directory": os.fspath(lease_dir), "port_range": list(_small(port_range))}
    assert "base" in _as_user("lease", NOBODY, NOBODY, [SHARED_GID], **args)
    answer = _as_user("lease", OTHER, OTHER, [SHARED_GID], **args)
    assert answer["error"] == "PortleaseError"
    assert "cannot be written (Operation not permitted)" in answer["message"]


@pytest.mark.usefixtures("as_nobody")
def test_a_shared_directory_without_group_write_is_a_clear_error(
    world_dir: Path, port_range: PortRange
) -> None:
    # What happens without the documented mode: 0o777, but our files are private (0o600).
    lease_dir = world_dir / "open"
    lease_dir.mkdir()
    lease_dir.chmod(0o777)
    args: dict[str, Any] = {"directory": os.fspath(lease_dir), "port_range": list(_small(port_range))}
    assert "base" in _as_user("lease", NOBODY, NOBODY, [], **args)
    answer = _as_user("lease", OTHER, OTHER, [], **args)
    assert answer["error"] == "PortleaseError"
    assert "cannot open its lock file (Permission denied)" in answer["message"]


def test_a_setgid_directory_gives_our_files_its_group(
    lease_dir: Path, port_range: PortRange
) -> None:
    # The same guarantee for one user, also when not root: every file we create is group rw
    # whatever the umask, and takes the directory's group.
    lease_dir.mkdir()
    lease_dir.chmod(0o2770)
    gid = lease_dir.stat().st_gid
    (lease_dir / STATE_NAME).write_bytes(b"garbage")  # so that a backup is written too
    old = os.umask(0o077)
    try:
        _state._warned.clear()
        with PortLeaser(lease_dir, port_range=_small(port_range)) as leaser, pytest.warns(PortleaseWarning):
            leaser.lease(2)
    finally:
        os.umask(old)
    names = [p.name for p in lease_dir.iterdir()]
    assert LOCK_NAME in names and STATE_NAME in names
    assert any(n.startswith(BACKUP_PREFIX) for n in names)
    for name in names:
        _group_rw(lease_dir / name, gid)

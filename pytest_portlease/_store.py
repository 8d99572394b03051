"""The lease directory's files: the lock file, atomic writes of the state, backups, caches.

Writes go to a temp file in the same directory and are swapped in atomically, so that at every
instant the state file is complete; a symlink planted at one of our names is replaced, never
followed. The file the swap takes out stays under the writer's temp name and is rewritten in
place by its next write, which so creates no inode, but only while the kernel shows that nobody
else has it open (see ``Store._open_kept``): a reader outside the lock, ours or ``cat``, never
sees a file change under it. Reads reuse what the last read or write already knows (see
``Store.load``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._backups import BACKUP_PREFIX as BACKUP_PREFIX  # re-exported: other modules and tests name it here
from ._backups import KEEP_BACKUPS as KEEP_BACKUPS
from ._backups import keep_backup
from ._files import MAX_STATE_BYTES, advice, open_regular, read_all
from ._layout import Lines
from ._parse import parse_tolerant
from ._state import STATE_NAME, State, _warn_once
from .errors import PortleaseError

LOCK_NAME = "lock"
TEMP_PREFIX = f"{STATE_NAME}.tmp-"
#: A state at least this big is read and parsed before the lock is taken, and the parse reused
#: when the bytes under the lock are the same: the lock is then held for one lease's work, not
#: for a parse of megabytes that every waiter would repeat in turn.
PREREAD_BYTES = 256 << 10
SWEEP_INTERVAL = 10.0

# Test seam: the crash tests set this in a child process to SIGKILL it at a named point.
fault: Callable[[str], None] | None = None


def inject(point: str) -> None:
    if fault is not None:
        fault(point)


class Store:
    """The lease directory's files: reads and writes the state, with caches for the hot path.

    The caller holds the lock around ``load`` .. ``save``.
    """

    def __init__(self, directory: Path, source: str) -> None:
        self.directory = directory
        self.source = source
        self.state_path = directory / STATE_NAME
        self.lock_path = directory / LOCK_NAME
        # The hot path works on bytes paths: pathlib's joins and conversions cost more than
        # the system calls they feed.
        self._state_b = os.fsencode(self.state_path)
        self._temp_b = b""
        self._temp_pid = 0
        self._temp_kept = False  # the last write left the swapped-out file under our temp name
        self._read_id: _Identity | None = None  # the state file last read (see _identity)
        self.file_mode = 0o600
        self._prepared = False
        self._bytes: bytes | None = None
        self._state: State | None = None
        self._lines = Lines()
        self._next_sweep = 0.0
        # The cached state is exactly the range lines of the cached bytes (our layout): the
        # next load then applies only the lines that changed.
        self._exact = False

    # -- the directory ---------------------------------------------------------------------

    def _fail(self, what: str, fix: str, error: OSError | None = None) -> PortleaseError:
        detail = f" ({error.strerror})" if error is not None and error.strerror else ""
        return PortleaseError(
            f"lease directory {self.directory} from {self.source} {what}{detail}: {fix}"
        )

    def prepare(self, *, again: bool = False) -> None:
        """Create the directory (0o700) if needed, and make sure the lock is a regular file.

        ``again``: the lock file was found removed or replaced, and the directory may be gone too.
        """
        if self._prepared and not again:
            return
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError as e:
            raise self._fail("is not a directory", "point it at a directory", e) from None
        except OSError as e:
            raise self._fail("cannot be created", advice(e, "choose a writable location"), e) from None
        try:
            mode = self.directory.stat().st_mode
        except OSError as e:
            raise self._fail("cannot be read", "check its permissions", e) from None
        if not stat.S_ISDIR(mode):
            raise self._fail("is not a directory", "point it at a directory")
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise self._fail("is not writable", "make it writable for this user, or choose another")
        # In a directory shared by a group (setgid, group-writable), every process of the group
        # must be able to rewrite what another one created: give our files the group's rw bits.
        self.file_mode = 0o600 | (mode & 0o060)
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.state_path)
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o222 == 0:
                raise self._fail(
                    f"holds a read-only {STATE_NAME}", "make it writable (chmod u+w), or remove it"
                )
        if self.lock_path.is_symlink():
            # Never lock or write through a link planted at a name of ours: replace the link.
            self._write_new(self.lock_path, b"")
        self._prepared = True

    def open_lock(self) -> int:
        """A descriptor of the lock file, created if missing; it is never unlinked or truncated,
        because another process (fedimint-portalloc too) may be blocked on this very inode."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                fd = os.open(self.lock_path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return os.open(self.lock_path, flags)
            os.fchmod(fd, self.file_mode)  # the umask must not take the group's bits away
            return fd
        except OSError as e:
            fix = advice(e, "make the directory writable", what=self.lock_path)
            raise self._fail("cannot open its lock file", fix, e) from None

    def _remove_stale_temps(self) -> None:
        # A live writer keeps the file its last exchange took out under its temp name, to
        # rewrite it next time; a dead writer's temp (SIGKILL at any point, torn or not) is
        # stale, and so is anything at such a name that is not a regular file. Every writer
        # writes under the lock, so no temp changes while we look. Looked for at the first write
        # and then every few seconds, to keep a directory scan off the hot path.
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL
        with contextlib.suppress(OSError), os.scandir(self.directory) as it:
            for item in it:
                name = item.name
                if not name.startswith(TEMP_PREFIX) or name == self._temp_name():
                    continue
                with contextlib.suppress(OSError):
                    if not item.is_file(follow_symlinks=False) or not _alive(name[len(TEMP_PREFIX) :]):
                        os.unlink(item.path)

    def discard_temp(self) -> None:
        """Remove the file our last write left under our temp name (the caller holds the lock)."""
        if self._temp_kept and self._temp_pid == os.getpid():
            self._temp_kept = False
            with contextlib.suppress(OSError):
                os.unlink(self._temp_b)

    def _temp_name(self) -> str:
        return f"{TEMP_PREFIX}{os.getpid()}"

    # -- reading ---------------------------------------------------------------------------

    def read_bytes(self) -> bytes:
        """The state file's bytes; b"" when it is missing. A symlink is not followed."""
        fd = self._open_state()
        if fd is None:
            self._read_id = _identity(self._state_b)  # a symlink ignored is still what we saw
            return b""
        st = os.fstat(fd)
        self._read_id = _identity_of(st)
        return self._read_bounded(fd)

    def _read_bounded(self, fd: int) -> bytes:
        """Read and close ``fd``; a file too big to be a state is refused, never read whole."""
        data = read_all(fd, MAX_STATE_BYTES)
        if data is None:
            raise self.too_big()
        return data

    def _open_state(self) -> int | None:
        try:
            return open_regular(self._state_b)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                _warn_once(f"{self.state_path} is a symbolic link; it is ignored and will be replaced")
                return None
            if e.errno == errno.EISDIR:  # what _open_regular says of any other kind of file
                raise self._fail(f"holds a {STATE_NAME} that is not a file", "remove it") from None
            raise self._fail("has an unreadable state file", advice(e, "check its permissions"), e) from None

    def read_unlocked(self) -> bytes:
        """The state file's bytes for a reader that may not hold the lock (``status``).

        A writer rewrites a file in place only when nobody else has it open, and only a file the
        state's name no longer names (see ``_open_kept``). So a file we hold open, and that the
        state's name still names, is complete and stays so until we close it. One the state's
        name no longer names was swapped out before our open completed, and a writer killed
        while it rewrote that file can have left it torn: open the new state.
        """
        for _ in range(_READ_ATTEMPTS):
            if (fd := self._open_state()) is None:
                return b""
            try:
                opened, named = os.fstat(fd), os.lstat(self._state_b)
            except OSError:  # ENOENT: renamed away since the open
                os.close(fd)
                continue
            if (opened.st_ino, opened.st_dev) == (named.st_ino, named.st_dev):
                return self._read_bounded(fd)
            os.close(fd)
        raise self._fail(
            f"has a {STATE_NAME} that changed under each of {_READ_ATTEMPTS} reads", "try again"
        )

    def too_big(self) -> PortleaseError:
        try:
            size = f"{os.lstat(self.state_path).st_size:,} bytes"
        except OSError:
            size = "too big"
        return PortleaseError(
            f"state file {self.state_path} (lease directory from {self.source}) is {size}, more than "
            f"the {MAX_STATE_BYTES:,} bytes that 65,535 ranges need at most, so neither portlease "
            f"nor fedimint-portalloc wrote it; it is not read: move it aside "
            f"(mv {self.state_path} {self.state_path}.big) and the next lease starts a new state"
        )

    def preread(self) -> None:
        """Outside the lock: read and parse a big state so that ``load`` under the lock can reuse
        the parse when the bytes are still the same. Anything unusual is left to ``load``."""
        try:
            st = os.stat(self._state_b, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or not PREREAD_BYTES <= st.st_size <= MAX_STATE_BYTES:
                return
            data = self.read_bytes()
        except (OSError, PortleaseError):
            return
        if self._state is not None and data == self._bytes:
            return
        state = self._parse_lines(data)
        if state is None:
            loaded = parse_tolerant(data)
            if loaded.problems:  # the backup and the warnings belong under the lock
                self.invalidate()
                return
            state, self._exact = loaded.state, False
        state.lines()  # each range's line is cached now: the save under the lock reuses them
        self._bytes, self._state = data, state

    def load(self, *, repair: bool = True) -> State:
        """The current state. ``repair``: back up and warn about what had to be dropped."""
        data = self.read_bytes()
        if self._state is not None and data == self._bytes:
            return self._state  # nobody wrote since we last read (or preread) or wrote
        state = self._parse_lines(data)
        if state is None:
            self._exact = False
            loaded = parse_tolerant(data)
            state = loaded.state
            if loaded.problems:
                kept = ""
                if repair and loaded.lossy:
                    backup = keep_backup(self, data)
                    kept = f"; the original is kept as {backup}" if backup else ""
                for problem in loaded.problems:
                    _warn_once(f"{self.state_path}: {problem}", kept)
        self._bytes, self._state = data, state
        return state

    def _parse_lines(self, data: bytes) -> State | None:
        """Parse our own layout, reusing what is already known; None for any other layout.

        When we hold the state of the bytes we last saw, only the lines that differ are applied
        to it (``_layout``): another writer usually changed one or two ranges, and rebuilding a
        state of thousands would cost more than the rest of the lease.
        """
        known = None
        if self._exact and self._bytes is not None and self._state is not None:
            known = (self._bytes, self._state)
        state = self._lines.read(data, known)
        if state is None and known is not None:
            self.invalidate()  # the cached state may be patched half-way: the full parser replaces it
        self._exact = state is not None
        return state

    # -- writing ---------------------------------------------------------------------------

    def save(self, state: State) -> bool:
        """Write the state so that no reader and no crash ever sees it torn.

        False when the file our write swapped out is not the one we last read: another writer's,
        written since (under a lock file that replaced ours). That file is put back, and nothing
        of ours stays written: a write never erases one it did not read.
        """
        lines = state.lines()
        data = state.encode(lines)
        self._remove_stale_temps()
        try:
            self._write_new(self._state_b, data)
            if self._temp_kept and _identity(self._temp_b) != self._read_id:
                self.invalidate()
                if not _exchange(self._temp_b, self._state_b):
                    raise OSError(errno.ENOENT, "the state file vanished", self.state_path)
                return False
        except OSError as e:
            self.invalidate()
            raise self._fail("cannot be written", "make it and its state file writable", e) from None
        self._bytes, self._state, self._exact = data, state, True
        return True

    def write_file(self, name: str, data: bytes) -> None:
        """Atomically replace another small file of ours in the directory (caller holds the lock).

        A directory at ``name`` is refused, as os.replace refuses it: the exchange swaps one out
        as readily as a file, and at our temp name no unlink could remove it again.
        """
        path = self.directory / name
        try:
            self._write_new(path, data)
            if self._temp_kept and stat.S_ISDIR(os.lstat(self._temp_b).st_mode):
                _exchange(self._temp_b, os.fsencode(path))  # put it back; ours stays kept
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        except OSError as e:
            raise self._fail(f"cannot hold {name}", advice(e, "make it writable", what=path), e) from None

    def read_file(self, name: str) -> bytes:
        """Another small file of ours; b"" when missing, unreadable or a symlink."""
        try:
            fd = open_regular(self.directory / name)
        except OSError:
            return b""
        return read_all(fd, MAX_STATE_BYTES) or b""  # too big: no preference, never fatal

    @property
    def loaded_bytes(self) -> bytes | None:
        """The bytes of the state as last read or written, None when nothing is cached."""
        return self._bytes

    def invalidate(self) -> None:
        """Forget the cached state (after a failure left it out of step with the file)."""
        self._bytes = self._state = None
        self._exact = False

    def _write_new(self, path: Path | bytes, data: bytes) -> None:
        # A complete file under our temp name in the same directory, then an atomic swap: at
        # every instant ``path`` names either the old complete file or the new one, and a crash
        # leaves at worst a stale temp file that the next writer's sweep removes.
        #
        # Speed: when rename(2) replaces an existing file, ext4 (auto_da_alloc) starts writeback
        # of the new file's data first, costing 150-220 us here. renameat2(RENAME_EXCHANGE)
        # swaps the two names atomically without that flush (about 35 us). The old file, now
        # under the temp name, is kept and rewritten by our next write: creating an inode costs
        # 7-17 us, and 0.1-15 ms in an ext4 block group where a neighbour churns files (its
        # allocator searches for a free inode), which is most of a lease in /tmp on CI.
        # Where the call is missing or refused (not Linux, or a file system without it),
        # os.replace gives the same guarantee, more slowly, and leaves nothing to keep.
        if self._temp_pid != os.getpid():  # named with our pid: recomputed in a forked child
            self._temp_b = os.fsencode(self.directory / self._temp_name())
            self._temp_pid = os.getpid()
            self._temp_kept = False
        temp, path = self._temp_b, os.fsencode(path)
        fd = self._open_kept(temp)
        reused = fd is not None
        if fd is None:
            fd = self._create(temp, replace=True)
        self._temp_kept = False
        try:
            try:
                if reused:
                    inject("rewrite-started")
                self._fill(fd, data, truncate=reused)
            finally:
                os.close(fd)  # ends the lease _open_kept took: the file is complete
            inject("temp-written")
            inject("before-replace")
            self._temp_kept = _exchange(temp, path)
            if not self._temp_kept:
                os.replace(temp, path)
            inject("after-replace")
        finally:
            if not self._temp_kept:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)

    def _open_kept(self, temp: bytes) -> int | None:
        """The file our last exchange left under ``temp``, opened to be rewritten, when nobody
        can be reading it; None when there is none or it is not safe to rewrite.

        The file was the state until that exchange, so any reader outside the lock (``status``,
        ``cat``, an editor) may still hold it open, and one whose open raced the exchange may
        still be opening it. A Linux write lease (fcntl F_SETLEASE) settles both: the kernel
        grants it only while no other descriptor anywhere has the file open, and until the
        lease ends (at our close, when the file is complete again) any open of the file waits.
        Where there is no lease (another user's file, a file system without leases), write a
        new file instead. A second link (someone's hard link to the state) is another way to
        read it: leave that file alone.
        """
        if not self._temp_kept:
            return None
        try:
            # O_NONBLOCK: a FIFO planted at our name must not hang the writer (ENXIO instead).
            fd = os.open(temp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None  # gone (a sweep of a process in another PID namespace), or a symlink
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and _lease_alone(fd):
                if stat.S_IMODE(st.st_mode) != self.file_mode:
                    os.fchmod(fd, self.file_mode)  # the directory became group-shared since
                return fd
        except OSError:
            pass
        os.close(fd)
        return None

    def _fill(self, fd: int, data: bytes, *, truncate: bool = False) -> None:
        if not truncate and self.file_mode != 0o600:
            os.fchmod(fd, self.file_mode)  # the umask must not take the group's bits away
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if truncate:
            # After the write, not before: the file's blocks stay allocated, and what is cut
            # off is only the old tail.
            os.ftruncate(fd, len(data))

    @staticmethod
    def _create(path: Path | bytes, *, replace: bool) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(path, flags, 0o600)
        except FileExistsError:
            if not replace:
                raise
            # Ours from an earlier crash of a process with our pid, a file a reader still holds,
            # or a planted symlink: unlink removes the name, never what a link points to.
            os.unlink(path)
            return os.open(path, flags, 0o600)

_READ_ATTEMPTS = 1000


def _lease_alone(fd: int) -> bool:
    """Take a write lease on ``fd``: True when no other descriptor has its file open.

    The kernel tells the holder of a lease that an open is waiting with a signal, SIGIO by
    default, whose default action kills the process. We end the lease within microseconds
    anyway, so we ask for SIGURG instead, which is ignored unless the process handles it;
    where it does (or a handler we cannot see was installed from C), no lease is taken.
    """
    import signal  # only a writer that kept a file needs it; keeps the first lease cheap

    if signal.getsignal(signal.SIGURG) not in (signal.SIG_DFL, signal.SIG_IGN):
        return False
    try:
        # Set on this fresh descriptor before the lease: ending a lease resets it.
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except OSError:  # EAGAIN: open elsewhere; EACCES: another user's; EINVAL: no leases here
        return False
    return True


def _alive(pid_text: str) -> bool:
    """Whether the pid a temp file is named with is a live process here."""
    if not pid_text.isdecimal() or int(pid_text) <= 0:
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: alive, another user's
    return True


_RENAME_EXCHANGE = 2
_renameat2: Any = None


#: Which file, and which bytes: another writer may rewrite in place the very inode we read (the
#: file it kept under its temp name) and swap it back, and an inode alone would not tell. A
#: rewrite changes the size or, past the file system's timestamp tick, the modification time; a
#: rename changes neither. (A same-size rewrite within one tick still passes: only the bytes tell.)
_Identity = tuple[int, int, int, int]


def _identity_of(st: os.stat_result) -> _Identity:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _identity(path: bytes) -> _Identity | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return _identity_of(st)


def _exchange(src: bytes, dst: bytes) -> bool:
    """Atomically swap ``src`` and ``dst`` (Linux renameat2); False where that is not possible."""
    global _renameat2
    if _renameat2 is None:
        import ctypes  # only writers need it; keeps importing the plugin cheap

        try:
            _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
        except (AttributeError, OSError):
            _renameat2 = False
    if _renameat2 is False:
        return False
    at_fdcwd = -100
    if _renameat2(at_fdcwd, src, at_fdcwd, dst, _RENAME_EXCHANGE) == 0:
        return True
    import ctypes

    err = ctypes.get_errno()
    if err in (errno.ENOENT, errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.EOPNOTSUPP):
        return False  # no file to swap with yet, or a kernel or file system without it
    raise OSError(err, os.strerror(err), os.fsdecode(dst))

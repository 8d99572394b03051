"""Low-level reads of the directory's files: never through a symlink, never unbounded, and
the advice for an OSError by its errno."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

#: The largest state we read. 65,535 ranges (every port its own) at our longest line, about
#: 1 KiB with a long label, is 64 MiB; fedimint's pretty JSON is ~60 bytes a range. The 17 MB
#: state of 59,900 labelled ranges seen in the wild fits; a sparse 300 MB file (0 bytes on disk)
#: is refused instead of read whole (711 MB of memory) or copied as a 300 MB backup.
MAX_STATE_BYTES = 64 << 20


def open_regular(path: Path | bytes) -> int:
    """Open a regular file for reading, never through a symlink; EISDIR for any other kind.

    O_NONBLOCK: opening a FIFO planted at one of our names would otherwise wait forever for a
    writer; on a regular file it changes nothing.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    os.close(fd)
    raise IsADirectoryError(errno.EISDIR, "not a regular file", os.fspath(path))


def read_all(fd: int, limit: int) -> bytes | None:
    """Read and close ``fd``; None when it holds more than ``limit`` bytes (never read whole)."""
    try:
        if os.fstat(fd).st_size > limit:
            return None
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > limit:  # it grew after the fstat
                return None
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def advice(error: OSError, default: str, *, what: Path | None = None) -> str:
    """The fix for ``error``, by its errno: the same advice for every errno misleads."""
    code = error.errno
    if code == errno.EMFILE:
        return "too many open files in this process: close some, or raise its limit (ulimit -n)"
    if code == errno.ENFILE:
        return "too many open files in the system: close some, or raise fs.file-max (sysctl)"
    if code in (errno.EISDIR, errno.ELOOP, errno.ENXIO) and what is not None:
        return f"{what} is not a regular file (a directory, a link or a device): remove it"
    if code in (errno.EACCES, errno.EPERM):
        return "this user lacks permission: fix the permissions (ls -ld), or choose another directory"
    if code == errno.EROFS:
        return "the file system is read-only: choose a directory on a writable one"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "the file system (or this user's quota) is full: free some space"
    if code == errno.ENOTDIR:
        return "a component of the path is not a directory: point it at a directory"
    if code == errno.ENAMETOOLONG:
        return "the path is too long: choose a shorter one"
    return default

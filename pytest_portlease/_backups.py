"""Backups of a state that could not be read whole: the original bytes, the newest few, bounded
in total size; a backup that cannot be written warns and never stops the lease."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from . import _clock
from ._files import MAX_STATE_BYTES, advice
from ._state import STATE_NAME, _warn_once

if TYPE_CHECKING:
    from ._store import Store

BACKUP_PREFIX = f"{STATE_NAME}.corrupt-"
KEEP_BACKUPS = 5
#: Backups together stay within this; the newest is always kept (it is at most MAX_STATE_BYTES).
MAX_BACKUP_BYTES = MAX_STATE_BYTES


def keep_backup(store: Store, data: bytes) -> Path | None:
    """Keep the original bytes before we overwrite what we could not read (newest few).

    A backup that cannot be written (ENOSPC, EDQUOT, EIO) warns and is removed: the lease
    goes on, since the repaired state is small and losing the lease helps nobody.
    """
    from . import _store  # for its fault seam (_store imports this module)

    stamp = int(_clock.now())
    for n in range(100):
        path = store.directory / f"{BACKUP_PREFIX}{stamp}" if n == 0 else \
            store.directory / f"{BACKUP_PREFIX}{stamp}.{n}"
        try:
            fd = store._create(path, replace=False)
        except FileExistsError:
            continue
        except OSError as e:
            _no_backup(store, e)
            return None
        try:
            try:
                store._fill(fd, data)
                _store.inject("backup-written")
            finally:
                os.close(fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(path)
            _no_backup(store, e)
            return None
        _prune(store.directory)
        return path
    return None

def _no_backup(store: Store, error: OSError) -> None:
    _warn_once(
        f"{store.state_path}: could not keep a backup of the unreadable original "
        f"({error.strerror or error}); it is repaired without one",
        f": {advice(error, 'check the directory')}",
    )

def _prune(directory: Path) -> None:
    found = []
    with contextlib.suppress(OSError), os.scandir(directory) as it:
        for item in it:
            if item.name.startswith(BACKUP_PREFIX) and not item.is_symlink():
                with contextlib.suppress(OSError):
                    st = item.stat(follow_symlinks=False)
                    # st_blocks: a sparse backup costs only what it holds on disk.
                    found.append((st.st_mtime_ns, item.name, max(st.st_blocks * 512, 0), item.path))
    found.sort(reverse=True)  # newest first
    total = 0
    for i, (_, _, size, path) in enumerate(found):
        total += size
        if i == 0 or (i < KEEP_BACKUPS and total <= MAX_BACKUP_BYTES):
            continue
        with contextlib.suppress(OSError):
            os.unlink(path)

"""The JSON state: tolerant load, atomic save, fedimint-portalloc's schema.

The file is fedimint-portalloc's ``{"next": N, "keys": {"<base>": {"size": S, "expires": T}}}``
plus our optional ``owner``. We write one range per line, sorted by base, so that a reader can
reuse the ranges it already parsed: only lines it has not seen go through ``json.loads``. Any
other layout (fedimint's, a hand edit) goes through the full tolerant parser.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import json
import logging
import math
import os
import re
import stat
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ._owner import Owner, Process
from .errors import PortleaseError, PortleaseWarning

STATE_NAME = "fm-portalloc.json"
LOCK_NAME = "lock"
TEMP_PREFIX = f"{STATE_NAME}.tmp-"
BACKUP_PREFIX = f"{STATE_NAME}.corrupt-"
KEEP_BACKUPS = 5
_LINE_CACHE_MAX = 50_000
SWEEP_INTERVAL = 10.0

# Test seam: the crash tests set this in a child process to SIGKILL it at a named point.
fault: Callable[[str], None] | None = None


def inject(point: str) -> None:
    if fault is not None:
        fault(point)


@dataclass(frozen=True)
class Entry:
    """One leased range: ``base`` .. ``base + size - 1``, live while now < ``expires``."""

    base: int
    size: int
    expires: float
    owner: Owner | None = None
    extra: tuple[tuple[str, Any], ...] = field(default=(), compare=False)

    @property
    def end(self) -> int:
        return self.base + self.size - 1

    @property
    def process(self) -> Process | None:
        return None if self.owner is None else self.owner.process

    @cached_property
    def line(self) -> bytes:
        """The entry as one line of our layout. fedimint reads ``expires`` as a u64: write an int."""
        value: dict[str, Any] = {"size": self.size, "expires": math.ceil(self.expires)}
        value.update(self.extra)
        if self.owner is not None:
            value["owner"] = self.owner.to_json()
        return f'"{self.base}": {json.dumps(value)}'.encode("ascii")


class State:
    """The ranges of the state file, indexed by base for O(log n) overlap checks."""

    def __init__(self, next_port: int, entries: dict[int, Entry], extra: dict[str, Any]) -> None:
        self.next = next_port
        self.entries = entries
        self.extra = extra
        self.bases = sorted(entries)
        self.overlapping = self._find_overlap() is not None
        self.dirty = False  # changed since loaded: the transaction saves it
        # What reclaim needs without a pass over every range: the owning processes (with how
        # many ranges each holds), and a bound no range expires before.
        self.processes: Counter[Process] = Counter(p for e in entries.values() if (p := e.process))
        self.soonest = min((e.expires for e in entries.values()), default=math.inf)

    def _find_overlap(self) -> tuple[Entry, Entry] | None:
        # Runs on every state loaded that another writer changed: at 1,000 ranges the plain
        # version (``Entry.end`` through the property, twice a range) cost a quarter of a lease.
        reach: Entry | None = None
        reach_end = -1
        entries = self.entries
        for base in self.bases:
            entry = entries[base]
            if reach is not None and base <= reach_end:
                return reach, entry
            end = base + entry.size - 1
            if end > reach_end:
                reach, reach_end = entry, end
        return None

    def add(self, entry: Entry) -> None:
        if entry.base in self.entries:
            self._forget(self.entries[entry.base])
        else:
            bisect.insort(self.bases, entry.base)
        self.entries[entry.base] = entry
        if entry.process:
            self.processes[entry.process] += 1
        self.soonest = min(self.soonest, entry.expires)
        self.dirty = True

    def remove(self, base: int) -> Entry | None:
        entry = self.entries.pop(base, None)
        if entry is not None:
            del self.bases[bisect.bisect_left(self.bases, base)]
            self._forget(entry)
            self.dirty = True
            if self.overlapping:
                self.overlapping = self._find_overlap() is not None
        return entry

    def _forget(self, entry: Entry) -> None:
        if entry.process and (left := self.processes[entry.process] - 1):
            self.processes[entry.process] = left
        elif entry.process:
            del self.processes[entry.process]

    def conflict(self, low: int, high: int) -> Entry | None:
        """An entry overlapping ``low..high``: the one reaching furthest, so a scan may jump past it."""
        i = bisect.bisect_right(self.bases, high)
        if not self.overlapping:
            # Without overlaps, ends grow with bases: only the last base <= high can reach low.
            if i and (entry := self.entries[self.bases[i - 1]]).end >= low:
                return entry
            return None
        hits = [e for e in (self.entries[b] for b in self.bases[:i]) if e.end >= low]
        return max(hits, key=lambda e: e.end, default=None)

    def lines(self) -> list[bytes]:
        """The ranges as lines of our layout, by base."""
        entries = self.entries
        return [entries[b].line for b in self.bases]

    def encode(self, lines: list[bytes] | None = None) -> bytes:
        head = json.dumps({"next": self.next, **self.extra})[:-1] + ', "keys": {'
        lines = self.lines() if lines is None else lines
        parts = [head.encode("ascii"), b",\n".join(lines), b"}}\n"] if lines else [head.encode("ascii"), b"}}\n"]
        return b"\n".join(parts)


@dataclass
class Loaded:
    state: State
    problems: list[str]
    lossy: bool  # something was dropped or changed: the original bytes deserve a backup
    size: int = 0  # of the bytes parsed


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(key: object, value: object, problems: list[str]) -> Entry | None:
    if not (isinstance(key, str) and key.isascii() and key.isdecimal() and 1 <= int(key) <= 65535):
        problems.append(f"dropped range {key!r}: the key is not a port number from 1 to 65535")
        return None
    base = int(key)
    if not isinstance(value, dict):
        problems.append(f"dropped range {key}: expected an object, found {type(value).__name__}")
        return None
    size, expires = value.get("size"), value.get("expires")
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 65536 - base:
        problems.append(f"dropped range {key}: size {size!r} is not a whole number of ports that fits")
        return None
    if not isinstance(expires, int | float) or isinstance(expires, bool) or not math.isfinite(expires):
        problems.append(f"dropped range {key}: expires {expires!r} is not a number of unix seconds")
        return None
    owner = None
    if "owner" in value:
        owner = Owner.from_json(value["owner"])
        if owner is None:
            problems.append(f"range {key}: malformed owner {value['owner']!r} removed, range kept")
    extra = tuple((k, v) for k, v in value.items() if k not in ("size", "expires", "owner"))
    if extra and not _is_json(dict(extra)):
        problems.append(f"range {key}: fields that are not JSON (NaN, Infinity) removed, range kept")
        extra = tuple((k, v) for k, v in extra if _is_json(v))
    return Entry(base, size, expires, owner, extra)


def _is_json(value: object) -> bool:
    # Python's json reads NaN and Infinity, serde_json (fedimint-portalloc) refuses the whole
    # file: never write them back.
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, RecursionError):
        return False
    return True


_SALVAGE_KEY = re.compile(r'"(\d{1,5})"\s*:\s*(?=\{)')
_SALVAGE_NEXT = re.compile(r'"next"\s*:\s*(\d{1,5})\b')


def _salvage(text: str) -> dict[str, Any]:
    """Recover what ranges we can from a file that is not JSON (truncated, torn, hand-mangled)."""
    decoder = json.JSONDecoder()
    keys: dict[str, Any] = {}
    for match in _SALVAGE_KEY.finditer(text):
        with contextlib.suppress(ValueError, RecursionError):
            keys[match.group(1)] = decoder.raw_decode(text, match.end())[0]
    doc: dict[str, Any] = {"keys": keys}
    if found := _SALVAGE_NEXT.search(text):
        doc["next"] = int(found.group(1))
    return doc


def parse_tolerant(data: bytes) -> Loaded:
    """Parse any bytes; keep every valid range and describe everything that was not."""
    loaded = _parse_tolerant(data)
    loaded.size = len(data)
    return loaded


def _parse_tolerant(data: bytes) -> Loaded:
    problems: list[str] = []
    if not data.strip():
        return Loaded(State(0, {}, {}), problems, lossy=False)
    try:
        doc: Any = json.loads(data)
    # UnicodeDecodeError is a ValueError too; RecursionError: thousands of nested brackets.
    except (ValueError, RecursionError) as e:
        doc = _salvage(data.decode("utf-8", "replace"))
        problems.append(f"not valid JSON ({e}); salvaged {len(doc['keys'])} range(s)")
    if not isinstance(doc, dict):
        problems.append(f"the top level is {type(doc).__name__}, not an object")
        doc = {}
    next_port = doc.get("next", 0)
    if not _is_int(next_port) or not 0 <= next_port <= 65535:
        problems.append(f"'next' {next_port!r} is not a port number; reset")
        next_port = 0
    keys = doc.get("keys", {})
    if not isinstance(keys, dict):
        problems.append(f"'keys' is {type(keys).__name__}, not an object; no range could be read")
        keys = {}
    entries: dict[int, Entry] = {}
    for key, value in keys.items():
        if (entry := _entry(key, value, problems)) is not None:
            entries[entry.base] = entry
    extra = {k: v for k, v in doc.items() if k not in ("next", "keys")}
    if extra and not _is_json(extra):
        problems.append("top-level fields that are not JSON (NaN, Infinity) removed")
        extra = {k: v for k, v in extra.items() if _is_json(v)}
    lossy = bool(problems)
    state = State(next_port, entries, extra)
    if (pair := state._find_overlap()) is not None:
        a, b = pair
        problems.append(f"ranges {a.base}-{a.end} and {b.base}-{b.end} overlap; both are kept")
    return Loaded(state, problems, lossy)


def _split_layout(data: bytes) -> tuple[dict[str, Any], list[bytes]] | None:
    """The head (``next`` and any other top-level fields) and the range lines of our layout:
    ``{"next": N, "keys": {`` / one ``"base": {...}`` per line, comma-terminated but the last /
    ``}}``. None for any other layout."""
    head_end = data.find(b"\n")
    if head_end < 0 or not data.endswith(b"\n}}\n") or not data[:head_end].endswith(b'"keys": {'):
        return None
    try:
        head = json.loads(data[:head_end] + b"}}")
    except (ValueError, RecursionError):
        return None
    next_port = head.get("next")
    if head.pop("keys", None) != {} or not _is_int(next_port) or not 0 <= next_port <= 65535:
        return None
    if len(head) > 1 and not _is_json(head):
        return None  # NaN or Infinity among the other fields: the full parser drops them
    inner = data[head_end + 1 : -4]
    if not inner:
        return head, []
    # A raw newline cannot occur inside a JSON string: every one here ends a line.
    raws = inner.split(b",\n")
    return (head, raws) if inner.count(b"\n") == len(raws) - 1 else None


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
        self.file_mode = 0o600
        self._prepared = False
        self._bytes: bytes | None = None
        self._state: State | None = None
        self._lines: dict[bytes, Entry] = {}
        self._next_sweep = 0.0
        # The range lines of the cached bytes, when the cached state is exactly those lines
        # (our layout): the next load then applies only the lines that changed.
        self._lines_of_state: set[bytes] | None = None

    # -- the directory ---------------------------------------------------------------------

    def _fail(self, what: str, fix: str, error: OSError | None = None) -> PortleaseError:
        detail = f" ({error.strerror})" if error is not None and error.strerror else ""
        return PortleaseError(
            f"lease directory {self.directory} from {self.source} {what}{detail}: {fix}"
        )

    def prepare(self) -> None:
        """Create the directory (0o700) if needed, and make sure the lock is a regular file."""
        if self._prepared:
            return
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError as e:
            raise self._fail("is not a directory", "point it at a directory", e) from None
        except OSError as e:
            raise self._fail("cannot be created", "choose a writable location", e) from None
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
            raise self._fail("cannot open its lock file", "make the directory writable", e) from None

    def _remove_stale_temps(self) -> None:
        # Every writer writes under the lock, so any temp file seen while we hold it is left
        # over from a writer that died (SIGKILL between writing and renaming). Looked for at
        # the first write and then every few seconds, to keep a directory scan off the hot path.
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL
        with contextlib.suppress(OSError), os.scandir(self.directory) as it:
            for item in it:
                if item.name.startswith(TEMP_PREFIX) and item.name != self._temp_name():
                    with contextlib.suppress(OSError):
                        os.unlink(item.path)

    def _temp_name(self) -> str:
        return f"{TEMP_PREFIX}{os.getpid()}"

    # -- reading ---------------------------------------------------------------------------

    def read_bytes(self) -> bytes:
        """The state file's bytes; b"" when it is missing. A symlink is not followed."""
        try:
            fd = _open_regular(self._state_b)
        except FileNotFoundError:
            return b""
        except OSError as e:
            if e.errno == errno.ELOOP:
                _warn_once(f"{self.state_path} is a symbolic link; it is ignored and will be replaced")
                return b""
            if e.errno == errno.EISDIR:  # what _open_regular says of any other kind of file
                raise self._fail(f"holds a {STATE_NAME} that is not a file", "remove it") from None
            raise self._fail("has an unreadable state file", "check its permissions", e) from None
        return _read_all(fd)

    def load(self, *, repair: bool = True) -> State:
        """The current state. ``repair``: back up and warn about what had to be dropped."""
        data = self.read_bytes()
        if self._state is not None and data == self._bytes:
            return self._state  # nobody wrote since we last read or wrote: skip the parse
        state = self._parse_lines(data)
        if state is None:
            self._lines_of_state = None
            loaded = parse_tolerant(data)
            state = loaded.state
            if loaded.problems:
                backup = self._backup(data) if repair and loaded.lossy else None
                kept = f"; the original is kept as {backup}" if backup else ""
                for problem in loaded.problems:
                    _warn_once(f"{self.state_path}: {problem}", kept)
        self._bytes, self._state = data, state
        return state

    def _parse_lines(self, data: bytes) -> State | None:
        """Parse our own layout, reusing what is already known; None for any other layout.

        When we hold the state of the bytes we last saw, only the lines that differ are applied
        to it: another writer usually changed one or two ranges, and rebuilding a state of
        thousands would cost more than the rest of the lease.
        """
        layout = _split_layout(data)
        if layout is None:
            return None
        head, raws = layout
        if len(self._lines) > _LINE_CACHE_MAX:
            self._lines.clear()
        lines = set(raws)
        if self._state is not None and self._lines_of_state is not None:
            state = self._patch(self._state, self._lines_of_state, lines, len(raws))
        else:
            state = self._build(raws)
        if state is None:
            return None
        self._lines_of_state = lines
        state.next = head.pop("next")
        state.extra = head
        state.dirty = False
        return state

    def _entry_of(self, raw: bytes) -> Entry | None:
        entry = self._lines.get(raw)
        if entry is None and (entry := self._parse_line(raw)) is not None:
            self._lines[raw] = entry
        return entry

    def _build(self, raws: list[bytes]) -> State | None:
        entries: dict[int, Entry] = {}
        for raw in raws:
            if (entry := self._entry_of(raw)) is None or entry.base in entries:
                return None
            entries[entry.base] = entry
        return State(0, entries, {})

    def _patch(self, state: State, before: set[bytes], now: set[bytes], count: int) -> State | None:
        added = []
        for raw in now - before:
            if (entry := self._entry_of(raw)) is None:
                return None
            added.append(entry)
        replaced = {entry.base for entry in added}
        for raw in before - now:
            # Our lines start with the quoted base: '"20000": {...}'.
            if (base := int(raw[1 : raw.index(b'"', 1)])) not in replaced:
                state.remove(base)
        for entry in added:
            other = state.entries.get(entry.base)
            if state.conflict(entry.base, entry.end) not in (None, other):
                return None  # overlapping ranges: let the full parser report them
            state.add(entry)
        # Two lines with one base would leave fewer ranges than lines: the full parser decides.
        return state if len(state.entries) == count else None

    @staticmethod
    def _parse_line(raw: bytes) -> Entry | None:
        try:
            member = json.loads(b"{" + raw + b"}")
        except (ValueError, RecursionError):
            return None
        if not isinstance(member, dict) or len(member) != 1:
            return None
        problems: list[str] = []
        ((key, value),) = member.items()
        entry = _entry(key, value, problems)
        return None if problems else entry

    # -- writing ---------------------------------------------------------------------------

    def save(self, state: State) -> None:
        """Write the state so that no reader and no crash ever sees it torn."""
        lines = state.lines()
        data = state.encode(lines)
        self._remove_stale_temps()
        try:
            self._write_new(self._state_b, data)
        except OSError as e:
            self.invalidate()
            raise self._fail("cannot be written", "make it and its state file writable", e) from None
        self._bytes, self._state, self._lines_of_state = data, state, set(lines)

    def write_file(self, name: str, data: bytes) -> None:
        """Atomically replace another small file of ours in the directory (caller holds the lock)."""
        try:
            self._write_new(self.directory / name, data)
        except OSError as e:
            raise self._fail(f"cannot hold {name}", "make it writable", e) from None

    def read_file(self, name: str) -> bytes:
        """Another small file of ours; b"" when missing, unreadable or a symlink."""
        try:
            fd = _open_regular(self.directory / name)
        except OSError:
            return b""
        return _read_all(fd)

    def invalidate(self) -> None:
        """Forget the cached state (after a failure left it out of step with the file)."""
        self._bytes = self._state = self._lines_of_state = None

    def _write_new(self, path: Path | bytes, data: bytes) -> None:
        # A temp file in the same directory, then an atomic rename: at every instant ``path``
        # names either the old complete file or the new one, and a crash leaves at worst a
        # stale temp file that the next writer removes.
        #
        # Speed: when rename(2) replaces an existing file, ext4 (auto_da_alloc) starts writeback
        # of the new file's data first, costing 150-220 us here. renameat2(RENAME_EXCHANGE)
        # swaps the two names atomically without that flush (about 35 us); the old file, now
        # under the temp name, is then unlinked. Where the call is missing or refused (not
        # Linux, or a file system without it), os.replace gives the same guarantee, more slowly.
        if self._temp_pid != os.getpid():  # named with our pid: recomputed in a forked child
            self._temp_b = os.fsencode(self.directory / self._temp_name())
            self._temp_pid = os.getpid()
        temp, path = self._temp_b, os.fsencode(path)
        fd = self._create(temp, replace=True)
        try:
            try:
                self._fill(fd, data)
            finally:
                os.close(fd)
            inject("temp-written")
            inject("before-replace")
            if not _exchange(temp, path):
                os.replace(temp, path)
            inject("after-replace")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    def _fill(self, fd: int, data: bytes) -> None:
        if self.file_mode != 0o600:
            os.fchmod(fd, self.file_mode)  # the umask must not take the group's bits away
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    @staticmethod
    def _create(path: Path | bytes, *, replace: bool) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(path, flags, 0o600)
        except FileExistsError:
            if not replace:
                raise
            # Ours from an earlier crash of a process with our pid, or a planted symlink:
            # unlink removes the name, never what a link points to.
            os.unlink(path)
            return os.open(path, flags, 0o600)

    def _backup(self, data: bytes) -> Path | None:
        """Keep the original bytes before we overwrite what we could not read (newest few)."""
        stamp = int(time.time())
        for n in range(100):
            path = self.directory / f"{BACKUP_PREFIX}{stamp}" if n == 0 else \
                self.directory / f"{BACKUP_PREFIX}{stamp}.{n}"
            try:
                fd = self._create(path, replace=False)
            except FileExistsError:
                continue
            except OSError:
                return None
            try:
                self._fill(fd, data)
            finally:
                os.close(fd)
            self._prune_backups()
            return path
        return None

    def _prune_backups(self) -> None:
        backups = sorted(
            (p for p in self.directory.glob(f"{BACKUP_PREFIX}*") if not p.is_symlink()),
            key=lambda p: p.stat().st_mtime_ns,
        )
        for old in backups[:-KEEP_BACKUPS]:
            with contextlib.suppress(OSError):
                old.unlink()


def _open_regular(path: Path | bytes) -> int:
    """Open a regular file for reading, never through a symlink; EISDIR for any other kind.

    O_NONBLOCK: opening a FIFO planted at one of our names would otherwise wait forever for a
    writer; on a regular file it changes nothing.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    os.close(fd)
    raise IsADirectoryError(errno.EISDIR, "not a regular file", os.fspath(path))


def _read_all(fd: int) -> bytes:
    """Read and close ``fd``."""
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_renameat2: Any = None


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


_warned: set[str] = set()
_thread = threading.local()


def log_warnings_in_this_thread() -> None:
    """Make ``_warn_once`` log instead of warn in the calling (background) thread."""
    _thread.log = True


def _warn_once(problem: str, detail: str = "") -> None:
    """Warn once per process for each distinct problem (the detail may differ between times)."""
    if getattr(_thread, "log", False):
        logging.getLogger("pytest_portlease").warning("%s%s", problem, detail)
        return  # not marked as warned: the next lease in the foreground still warns
    if problem in _warned:
        return
    _warned.add(problem)
    warnings.warn(f"{problem}{detail}", PortleaseWarning, stacklevel=outside_package())


def outside_package() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside this package (and
    outside contextlib, whose context managers the engine runs in)."""
    package = os.path.dirname(__file__)
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and (
        frame.f_code.co_filename.startswith(package) or frame.f_code.co_filename == contextlib.__file__
    ):
        frame, level = frame.f_back, level + 1
    return level


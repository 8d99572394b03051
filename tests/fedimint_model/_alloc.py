"""fedimint-portalloc's ``port_alloc(range_size)``, step by step, as a test double.

Modelled on the crate's behaviour (``utils/portalloc`` in fedimint, with its ``next`` cursor):

1. ``create_dir_all(dir)``; open ``<dir>/lock`` read + append + create (0o666 & ~umask).
2. ``fs2::try_lock_exclusive``, and on failure the blocking ``lock_exclusive``: a blocking
   ``flock(LOCK_EX)``, so the process waits in the kernel's queue of the lock.
3. Load: a missing ``fm-portalloc.json`` is ``RootData::default()`` (``next`` = 0, no keys:
   derive(Default) ignores serde's default); otherwise serde_json's rules (``_serde``). A file
   it cannot read fails the call (``Err``), it never repairs it. Then reclaim: keep the ranges
   with ``now < expires`` (``now`` = unix seconds, truncated).
4. From ``base = next``: if ``HIGH < base``, reclaim again and restart at ``LOW`` (there is no
   other reset, and no end: a full window spins forever); ``range = base..base + size`` in u16;
   ``contains``: the first key in order whose ``start < range.end && range.start < start + size``
   (``start + size`` computed for every key it passes, in u16) gives ``base = start + size``;
   else bind ``127.0.0.1:port`` for TCP (Rust's ``TcpListener::bind``: SO_REUSEADDR, listen)
   for each port, and on a failure ``base = port + 1``.
5. Insert ``{size, expires: now + 120}`` at ``base`` and set ``next = range.end``.
6. Store: ``fm-portalloc.tmp`` (``path.with_extension("tmp")``, opened create + truncate,
   following symlinks), serde_json's pretty layout, flush, ``sync_data``, rename over the state.
7. Unlock. There is no release: ranges end by their TTL only.

u16 arithmetic: a debug build (the profile fedimint's test suites run in) panics on overflow,
"attempt to add with overflow", exit code 101; a release build wraps silently.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._serde import Range, RootData, parse

LOW = 10000
HIGH = 32000
ALLOCATION_TIME_SECS = 120
STATE_NAME = "fm-portalloc.json"
TEMP_NAME = "fm-portalloc.tmp"
LOCK_NAME = "lock"
#: A test double must not hang a suite where the real crate would spin forever (a full window):
#: after this many restarts at LOW it gives up with ``Livelock``.
MAX_RESTARTS = 3


class Panic(Exception):
    """What a debug build of the crate panics with (the process exits with code 101)."""


class Livelock(Exception):
    """The window is full: the real crate would loop forever here."""


def add16(a: int, b: int, *, debug: bool) -> int:
    total = a + b
    if total > 0xFFFF:
        if debug:
            raise Panic(f"attempt to add with overflow ({a} + {b} in u16)")
        return total & 0xFFFF
    return total


def now_ts() -> int:
    return int(time.time())  # Duration::as_secs truncates


@dataclass
class Allocator:
    """``port_alloc`` on one data directory. ``debug``: u16 overflow panics (else it wraps);
    ``hold``: the least time, in seconds, each allocation keeps the lock (the model pads its own
    work up to it after the fsync: the real crate holds the lock about 23 ms on a CI disk, most
    of it in the fsync); ``on_grant``: called with (base, size) under the lock,
    after the state was stored (a test's instrument: the crate has no such hook)."""

    directory: Path
    debug: bool = True
    hold: float = 0.0
    now: Callable[[], int] = now_ts
    on_grant: Callable[[int, int], None] | None = None

    def alloc(self, size: int) -> int:
        if size == 0:
            raise ValueError("Can't allocate range of 0 bytes")
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fcntl.flock(fd, fcntl.LOCK_EX)  # waits in the kernel, like fs2's lock_exclusive
            locked_at = time.monotonic()
            try:
                return self._locked(size, locked_at)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _locked(self, size: int, locked_at: float) -> int:
        data = reclaim(self.load(), self.now())
        base = data.next
        restarts = 0
        while True:
            if base > HIGH:
                restarts += 1
                if restarts > MAX_RESTARTS:
                    raise Livelock(f"no free block of {size} in {LOW}..{HIGH}: the crate spins here")
                data = reclaim(data, self.now())
                base = LOW
            end = add16(base, size, debug=self.debug)
            if (next_port := self.contains(data, base, end)) is not None:
                base = next_port
                continue
            busy = first_unbindable(base, end)
            if busy is not None:
                base = add16(busy, 1, debug=self.debug)
                continue
            self.insert(data, base, end, self.now() + ALLOCATION_TIME_SECS)
            self.store(data)
            if (pad := self.hold - (time.monotonic() - locked_at)) > 0:
                time.sleep(pad)  # emulates the fsync of a real disk, inside the lock
            if self.on_grant is not None:
                self.on_grant(base, size)
            return base

    def contains(self, data: RootData, start: int, end: int) -> int | None:
        # A linear search over the keys in order (BTreeMap::iter().find), computing each key's
        # end in u16: one key ending past 65535 makes every call panic in a debug build.
        for key, value in data.keys.items():
            key_end = add16(key, value.size, debug=self.debug)
            if key < end and start < key_end:
                return key_end
        return None

    def insert(self, data: RootData, start: int, end: int, expires: int) -> None:
        if self.contains(data, start, end) is not None:  # the crate's assert!
            raise Panic("assertion failed: self.contains(&range).is_none()")
        data.keys[start] = Range((end - start) & 0xFFFF, expires)
        data.keys = dict(sorted(data.keys.items()))  # a BTreeMap iterates in key order
        data.next = end

    def load(self) -> RootData:
        try:
            with open(self.directory / STATE_NAME, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return RootData(next=0)  # RootData::default(): derive(Default), not serde's default
        return parse(raw)

    def store(self, data: RootData) -> None:
        temp = self.directory / TEMP_NAME
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            view = memoryview(pretty(data))
            while view:
                view = view[os.write(fd, view) :]
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.rename(temp, self.directory / STATE_NAME)


def reclaim(data: RootData, now: int) -> RootData:
    return RootData(data.next, {k: v for k, v in data.keys.items() if now < v.expires})


def pretty(data: RootData) -> bytes:
    """serde_json::to_writer_pretty of RootData: two-space indent, fields in declaration order,
    keys in numeric order, no newline at the end (json.dumps(indent=2) lays out the same)."""
    doc = {
        "next": data.next,
        "keys": {str(k): {"size": v.size, "expires": v.expires} for k, v in sorted(data.keys.items())},
    }
    return json.dumps(doc, indent=2).encode("ascii")


def first_unbindable(start: int, end: int) -> int | None:
    """The first port of ``start..end`` that a Rust ``TcpListener::bind(("127.0.0.1", port))``
    refuses, or None. Rust's std sets SO_REUSEADDR before bind on Unix, then listens; the
    listener is dropped at once."""
    for port in range(start, end):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                s.listen(128)
            except OSError:
                return port
    return None

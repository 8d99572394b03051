"""The low-level reads, found by mutation testing: the bound is inclusive, a stream that grows
past it is cut off, a big file comes back byte for byte, and a refused file says why."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from pathlib import Path

import pytest

from pytest_portlease._files import open_regular, read_all


def test_a_file_of_exactly_the_limit_is_read_and_one_byte_more_is_not(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_bytes(b"x" * 1000)
    assert read_all(open_regular(path), 1000) == b"x" * 1000
    assert read_all(open_regular(path), 999) is None


def test_a_file_of_several_reads_comes_back_byte_for_byte(tmp_path: Path) -> None:
    data = bytes(range(256)) * (6 << 10)  # 1.5 MiB: two reads of at most 1 MiB
    path = tmp_path / "state"
    path.write_bytes(data)
    assert read_all(open_regular(path), len(data)) == data


def _piped(data: bytes, limit: int) -> bytes | None:
    """``read_all`` of a pipe fed ``data`` a page at a time: fstat says 0 bytes, so only the
    count of what was read can stop it."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)  # every read returns at most a page

    def feed() -> None:
        try:
            os.write(w, data)  # blocks while the reader drains the pipe
        except BrokenPipeError:
            pass  # the reader stopped at its limit and closed its end
        finally:
            os.close(w)

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        return read_all(r, limit)
    finally:
        writer.join()


def test_a_stream_that_outgrows_the_limit_is_cut_off() -> None:
    assert _piped(b"y" * (64 << 10), 64 << 10) == b"y" * (64 << 10)
    assert _piped(b"y" * (128 << 10), 64 << 10) is None


def _open_regular_unless_it_waits(path: Path) -> BaseException | None:
    """What ``open_regular(path)`` raises; a FIFO it waits on (no O_NONBLOCK) is released after
    a minute by opening its other end, and then fails the test instead of hanging it."""
    raised: list[BaseException] = []

    def opening() -> None:
        try:
            os.close(open_regular(path))
        except BaseException as e:
            raised.append(e)

    opener = threading.Thread(target=opening)
    opener.start()
    opener.join(60)
    if opener.is_alive():
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # the reader waits: this succeeds
        opener.join()
        pytest.fail(f"opening {path} waited for a writer")
    return raised[0] if raised else None


def test_what_is_not_a_regular_file_is_refused_and_named(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # planted at a name of ours, it must not make the reader wait for a writer
    for path in (tmp_path, fifo):
        refused = _open_regular_unless_it_waits(path)
        assert isinstance(refused, IsADirectoryError)
        assert (refused.errno, refused.strerror, refused.filename) == (
            errno.EISDIR,
            "not a regular file",
            os.fspath(path),
        )

"""Readers outside the lock never see a torn state, while writers that rewrite kept files in
place (see ``_store.Store._write_new``) are SIGKILLed at random points of their writes.

Writers lease and release in a loop, each write rewriting the file its previous exchange took
out; the test kills one at a random instant every few writes and starts another. Readers read
the state without the lock as fast as they can, a page at a time, and parse every read strictly:
one as ``portlease status`` does (``Store.read_unlocked``), one as ``cat`` does (open and read,
no lock, no check). Run as a script, this file is the writers and readers.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.fspath(Path(__file__).resolve().parent))
from _reliability import check_state_bytes

STATE_NAME = "fm-portalloc.json"
TEMP_PREFIX = f"{STATE_NAME}.tmp-"

pytestmark = pytest.mark.reliability


def _argv(mode: str, **args: Any) -> list[str]:
    return [sys.executable, os.fspath(Path(__file__).resolve()), mode, json.dumps(args)]


def _seed(directory: Path, port_range: tuple[int, int], count: int) -> None:
    """``count`` live leases that only their TTL ends, with long labels: a state of many pages."""
    from pytest_portlease import PortLeaser

    with PortLeaser(directory, port_range=port_range, ttl=3600, owner_pid=None, label="seed " + "x" * 80) as seeder:
        for _ in range(count):
            seeder.detach(seeder.lease(1))


@pytest.mark.parametrize("seed", [1])
def test_no_reader_sees_a_torn_state_while_writers_die(lease_dir: Path, port_range: Any, seed: int) -> None:
    rnd = random.Random(seed)
    rng = (port_range.low + 1000, port_range.low + 1999)
    _seed(lease_dir, rng, 300)
    kills, writers_at_once = 8, 3
    readers = [
        subprocess.Popen(_argv("reader", directory=os.fspath(lease_dir), how=how), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
        for how in ("status", "plain")
    ]
    writers: list[subprocess.Popen[bytes]] = []

    def start_writer() -> None:
        argv = _argv("writer", directory=os.fspath(lease_dir), port_range=rng, seed=rnd.random())
        writers.append(subprocess.Popen(argv, stdout=subprocess.PIPE))

    killed: list[int] = []
    try:
        for reader in readers:
            assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"
        for _ in range(writers_at_once):
            start_writer()
        while len(killed) < kills:
            victim = writers.pop(rnd.randrange(len(writers)))
            assert victim.stdout is not None
            # Each line is one finished write: kill after a random number of them, then a
            # random fraction of a write more, which lands anywhere in the write path.
            for _ in range(rnd.randint(2, 30)):
                assert victim.stdout.readline() == b"w\n", "a writer died on its own"
            time.sleep(rnd.uniform(0, 0.0005))
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            victim.stdout.close()
            killed.append(victim.pid)
            start_writer()
            for w in writers:  # drain the others' progress so that none blocks on its pipe
                assert w.stdout is not None
                while select.select([w.stdout], [], [], 0)[0] and w.stdout.read1(65536):
                    pass
        results = []
        for reader in readers:
            assert reader.stdin is not None and reader.stdout is not None
            reader.stdin.close()  # EOF: stop and report
            results.append(json.loads(reader.stdout.readline()))
    finally:
        for proc in [*writers, *readers]:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()

    reads = sum(r["reads"] for r in results)
    torn = [t for r in results for t in r["torn"]]
    print(f"{reads} unlocked reads of files from {sum(r['inodes'] for r in results)} inodes during "
          f"the writes of {len(killed)} killed writers: {len(torn)} torn")
    assert torn == []
    assert all(r["reads"] > 0 for r in results)
    keys = check_state_bytes((lease_dir / STATE_NAME).read_bytes())["keys"]
    assert len(keys) >= 300  # the seeded leases live on; the killed writers' may be there too

    # The dead writers' temps, torn or whole, are stale: the next writer's sweep removes them.
    from pytest_portlease import PortLeaser

    with PortLeaser(lease_dir, port_range=rng) as last:
        last.lease(1)
    dead = {f"{TEMP_PREFIX}{pid}" for pid in killed}
    assert dead.isdisjoint(os.listdir(lease_dir))


def _mode_writer(args: dict[str, Any]) -> None:
    from pytest_portlease import PortLeaser

    rnd = random.Random(args["seed"])
    with PortLeaser(args["directory"], port_range=tuple(args["port_range"]), ttl=600,
                    label="writer " + "y" * rnd.randint(0, 120)) as leaser:
        held = []
        while True:
            held.append(leaser.lease(rnd.randint(1, 3)))
            os.write(1, b"w\n")  # one write(2): the line is whole when the test reads it
            if len(held) > 3 or rnd.random() < 0.4:
                leaser.release(held.pop(rnd.randrange(len(held))))
                os.write(1, b"w\n")


def _mode_reader(args: dict[str, Any]) -> None:
    from pytest_portlease import _store

    def slow_read_all(fd: int, limit: int = 0) -> bytes:
        # The engine reads a file in one read(2); here a page at a time with a yield between,
        # so that each read spans many of the writers' steps and a rewrite under it would show.
        try:
            chunks = []
            while chunk := os.read(fd, 4096):
                chunks.append(chunk)
                os.sched_yield()
            return b"".join(chunks)
        finally:
            os.close(fd)

    store = _store.Store(Path(args["directory"]), "test")
    if args["how"] == "status":
        _store.read_all = slow_read_all
        read = store.read_unlocked
    else:
        def read() -> bytes:
            return slow_read_all(os.open(store.state_path, os.O_RDONLY))
    reads, torn, inodes = 0, [], set()
    print("ready", flush=True)
    while not select.select([sys.stdin], [], [], 0)[0]:
        data = read()
        reads += 1
        try:
            check_state_bytes(data)
        except ValueError as e:
            torn.append(f"{e} in {len(data)} bytes: {data[:80]!r}...{data[-80:]!r}")
        with contextlib.suppress(OSError):
            inodes.add(os.stat(store.state_path).st_ino)
    print(json.dumps({"reads": reads, "torn": torn[:5], "inodes": len(inodes)}), flush=True)


if __name__ == "__main__":
    {"writer": _mode_writer, "reader": _mode_reader}[sys.argv[1]](json.loads(sys.argv[2]))

"""Many processes starting at once on a big state: how long each waits for the lock.

A 17 MB state (59,900 labelled ranges, fedimint's pretty layout) and N processes that each
create a leaser and lease one block at the same moment. Before the parse moved out of the lock,
every process parsed the whole file under it, so the last one waited N parses. Prints a table and
exits 0 (figures move with the host's load: compare runs side by side).

    python benchmarks/bench_big_state.py [--procs 8] [--ranges 59900]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

from pytest_portlease import PortLeaser
from pytest_portlease._state import STATE_NAME


def make_state(directory: Path, ranges: int, layout: str = "ours") -> int:
    expires = int(time.time()) + 3600
    label = "pytest bigproject gw3 tests/test_servers.py::test_with_a_rather_long_parametrized_id[case-17]"
    keys = {
        str(1 + i): {"size": 1, "expires": expires, "owner": {"host": "ci-1", "ns": "x", "label": label}}
        for i in range(ranges)
    }
    if layout == "ours":  # one range per line, as every writer of ours leaves it
        lines = [f'"{k}": {json.dumps(v)}' for k, v in keys.items()]
        data = ('{"next": 0, "keys": {\n' + ",\n".join(lines) + "\n}}\n").encode()
    else:  # fedimint-portalloc's pretty JSON
        data = json.dumps({"next": 0, "keys": keys}, indent=2).encode()
    (directory / STATE_NAME).write_bytes(data)
    return len(data)


def one(directory: str, port_range: str, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    start.wait()
    began = time.perf_counter()
    with PortLeaser(directory, port_range=port_range, lock_timeout=300) as leaser:
        leaser.lease(1)
        out.put((time.perf_counter() - began, leaser.stats.lock_wait))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--procs", type=int, default=8)
    parser.add_argument("--ranges", type=int, default=59_900)
    parser.add_argument("--layout", choices=["ours", "fedimint"], default="ours")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        size = make_state(directory, args.ranges, args.layout)
        ctx = multiprocessing.get_context("spawn")
        start, out = ctx.Event(), ctx.Queue()
        port_range = f"{args.ranges + 1000}-{args.ranges + 3000}"
        os.environ["PYTHONWARNINGS"] = "ignore::UserWarning"  # the ephemeral-range warning, per child
        work = (os.fspath(directory), port_range, start, out)
        procs = [ctx.Process(target=one, args=work) for _ in range(args.procs)]
        for p in procs:
            p.start()
        time.sleep(2)  # let every child import before the start: this is a benchmark, not a test
        start.set()
        results = [out.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
    totals = sorted(r[0] for r in results)
    waits = sorted(r[1] for r in results)
    print(f"state: {size / 1e6:.1f} MB, {args.ranges} ranges, {args.layout} layout; {args.procs} processes at once")
    print(f"{'':>22}{'min':>9}{'median':>9}{'max':>9}")
    print(f"{'lease (s)':>22}{totals[0]:9.2f}{statistics.median(totals):9.2f}{totals[-1]:9.2f}")
    print(f"{'waiting for lock (s)':>22}{waits[0]:9.2f}{statistics.median(waits):9.2f}{waits[-1]:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

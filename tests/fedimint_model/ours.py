"""The other side of the interop tests: this project's PortLeaser in a child process.

Not part of the model (the model never imports pytest_portlease); it lives beside it because
the interop tests and ``benchmarks/bench_fedimint.py`` run the two side by side.

``python -m tests.fedimint_model.ours MODE JSON-ARGS``; each mode prints one JSON line per event
on stdout (flushed), then a last line ``{"done": ...}``.

- ``load``: ``count`` times lease a block (size from ``sizes`` in turn) from ``range``, then
  release it. Prints ``{"base", "size", "start", "end"}`` per grant, monotonic ns taken right
  after ``lease`` returned and right before ``release`` was called (so the true holding time
  contains [start, end]). Every state file this process writes is checked with the model's
  ``parses`` while the lock is still held (the store's fault seam at ``after-replace``), and
  again after each lease and release.
- ``turns``: ``count`` leases of one port, each bracketed by a count of the lines of the
  model's ``--grants-log``: prints ``{"turns": N}``, how many allocations fedimint made while
  this lease was in progress, as each lease ends.
- ``latency``: ``count`` lease + release pairs; prints the leases' and the releases' seconds (perf_counter) and
  the monotonic ns the loop started and ended at. With ``gate``, it prints ``{"ready": true}``
  and waits for a line on stdin first, so that a parent can start many at once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from pytest_portlease import PortLeaser, _store

from ._serde import parses


def _emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _mode_load(args: dict[str, Any]) -> None:
    directory = Path(args["dir"])
    state = directory / "fm-portalloc.json"
    sizes: list[int] = args["sizes"]
    bad: list[str] = []
    seam_checks = 0

    def fault(point: str) -> None:
        nonlocal seam_checks
        if point == "after-replace":
            seam_checks += 1
            if not parses(state):
                bad.append(f"after our write: {state.read_bytes()[:300]!r}")

    _store.fault = fault
    with PortLeaser(directory, port_range=tuple(args["range"]), label=args.get("label", "ours")) as leaser:
        for i in range(args["count"]):
            block = leaser.lease(sizes[i % len(sizes)])
            start = time.monotonic_ns()
            if not parses(state):
                bad.append(f"after lease: {state.read_bytes()[:300]!r}")
            end = time.monotonic_ns()
            leaser.release(block)
            if not parses(state):
                bad.append(f"after release: {state.read_bytes()[:300]!r}")
            _emit({"base": block.base, "size": block.size, "start": start, "end": end})
    _emit({"done": True, "seam_checks": seam_checks, "bad": bad, "pid": os.getpid()})


def _mode_turns(args: dict[str, Any]) -> None:
    log = Path(args["log"])
    with PortLeaser(args["dir"], port_range=tuple(args["range"]), label="turns") as leaser:
        for _ in range(args["count"]):
            before = _lines(log)
            leaser.lease(1)
            _emit({"turns": _lines(log) - before})
    _emit({"done": True})


def _mode_latency(args: dict[str, Any]) -> None:
    seconds, release_seconds = [], []
    with PortLeaser(args["dir"], port_range=tuple(args["range"]), label="latency") as leaser:
        if args.get("gate"):
            _emit({"ready": True})
            sys.stdin.readline()  # the parent starts every process at once
        start = time.monotonic_ns()
        for _ in range(args["count"]):
            t0 = time.perf_counter()
            block = leaser.lease(1)
            t1 = time.perf_counter()
            leaser.release(block)
            seconds.append(t1 - t0)
            release_seconds.append(time.perf_counter() - t1)
        end = time.monotonic_ns()
    _emit({"done": True, "seconds": seconds, "release_seconds": release_seconds, "start": start, "end": end})


def main(argv: list[str]) -> int:
    mode, raw = argv
    {"load": _mode_load, "turns": _mode_turns, "latency": _mode_latency}[mode](json.loads(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

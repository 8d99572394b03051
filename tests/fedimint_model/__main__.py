"""``python -m tests.fedimint_model alloc --dir D --count N --size S [--hold-ms MS]``

Calls ``port_alloc(S)`` N times on directory D, as one Rust process of fedimint's test suite
would (``--hold-ms``: each call keeps the lock at least that long, as the crate's fsync does),
and prints each granted base port on a line of its own (flushed at once, so a parent can
follow). ``--timestamps`` adds the size and ``time.monotonic_ns()`` taken inside the lock
after the state was stored; ``--grants-log F`` appends ``base size`` to F inside the lock (one
``write`` of an O_APPEND file per grant), so that another process can count the lock turns the
model took. ``--release`` models a release build (u16 arithmetic wraps instead of panicking).

Exit codes: 0 done; 1 ``port_alloc`` returned an error (a state file serde cannot read, say);
101 a panic (u16 overflow in a debug build); 70 the window is full (the crate would spin).

``python -m tests.fedimint_model parses PATH``: exit 0 when the crate can read PATH, else 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import EXIT_ERROR, EXIT_LIVELOCK, EXIT_PANIC
from ._alloc import Allocator, Livelock, Panic
from ._serde import SerdeError, parses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fedimint_model")
    sub = parser.add_subparsers(dest="command", required=True)
    alloc = sub.add_parser("alloc", help="call port_alloc(SIZE) COUNT times")
    alloc.add_argument("--dir", required=True, type=Path)
    alloc.add_argument("--count", type=int, default=1)
    alloc.add_argument("--size", type=int, default=1)
    alloc.add_argument("--hold-ms", type=float, default=0.0, help="least time inside the lock per allocation")
    alloc.add_argument("--release", action="store_true", help="u16 overflow wraps (release build)")
    alloc.add_argument("--timestamps", action="store_true")
    alloc.add_argument("--grants-log", type=Path)
    check = sub.add_parser("parses", help="exit 0 when fedimint-portalloc can read PATH")
    check.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    if args.command == "parses":
        return 0 if parses(args.path) else 1
    return _alloc(args)


def _alloc(args: argparse.Namespace) -> int:
    log_fd = None
    if args.grants_log is not None:
        log_fd = os.open(args.grants_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    stamps: list[int] = []

    def on_grant(base: int, size: int) -> None:
        stamps.append(time.monotonic_ns())
        if log_fd is not None:
            os.write(log_fd, f"{base} {size}\n".encode())

    allocator = Allocator(args.dir, debug=not args.release, hold=args.hold_ms / 1000, on_grant=on_grant)
    try:
        for _ in range(args.count):
            base = allocator.alloc(args.size)
            line = f"{base} {args.size} {stamps[-1]}" if args.timestamps else str(base)
            print(line, flush=True)
    except Panic as e:
        print(f"thread 'main' panicked: {e}", file=sys.stderr, flush=True)
        return EXIT_PANIC
    except Livelock as e:
        print(f"livelock: {e}", file=sys.stderr, flush=True)
        return EXIT_LIVELOCK
    except (SerdeError, ValueError, OSError) as e:
        print(f"Error: {e}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    finally:
        if log_fd is not None:
            os.close(log_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())

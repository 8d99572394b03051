"""Wall time of ``portlease status`` as a whole process on a directory holding 1,000 leases.

The target is a median of at most 150 ms. Each command runs as a fresh process, as a person or
a script would run it, so interpreter start-up and imports count. For scale, the table also
times a bare interpreter and ``portlease --version`` (start-up and imports, no state read).

The state is written directly (fedimint-portalloc's layout plus our owners) rather than leased,
so building it takes milliseconds and probes no port. Its leases are a realistic mix: most live
(owned by this benchmark process), some foreign (no owner, as fedimint-portalloc writes them),
some expired, some whose owner is dead.

Run: ``python benchmarks/bench_status.py [--leases 1000] [--runs 15] [--check]``; it exits 0
whatever the figures, and 1 with ``--check`` when the target is missed.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytest_portlease._owner import Owner, owner_for
from pytest_portlease._state import STATE_NAME, Entry, State

TARGET_MS = 150.0


def dead_owner() -> Owner:
    """The owner record of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        owner = owner_for(child.pid, "bench dead")
    finally:
        child.kill()
        child.wait()
    return owner


def write_state(directory: Path, leases: int) -> None:
    now = time.time()
    live = owner_for(os.getpid(), "bench live")
    dead = dead_owner()
    entries = {}
    for i in range(leases):
        base = 20000 + 3 * i
        kind = i % 10
        if kind == 0:
            entry = Entry(base, 3, math.ceil(now + 600))  # foreign: fedimint-portalloc's, no owner
        elif kind == 1:
            entry = Entry(base, 3, math.floor(now - 60), live)  # expired
        elif kind == 2:
            entry = Entry(base, 3, math.ceil(now + 600), dead)  # dead owner
        else:
            entry = Entry(base, 3, math.ceil(now + 600), live)
        entries[base] = entry
    state = State(20000 + 3 * leases, entries, {})
    directory.mkdir(mode=0o700, exist_ok=True)
    (directory / "lock").touch()
    (directory / STATE_NAME).write_bytes(state.encode())


def time_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) milliseconds of one run of ``argv``.

    CPU time is the steadier figure on a busy machine: waiting for a core counts in wall time only.
    """
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False)
    wall = (time.perf_counter() - started) * 1000
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{argv} failed with {done.returncode}: {done.stderr.decode()}")
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime + cpu_after.ru_stime - cpu_before.ru_stime) * 1000
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=1000)
    parser.add_argument("--target-ms", type=float, default=TARGET_MS, help="the median to meet")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed (else always 0)")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    script = Path(sys.executable).parent / "portlease"
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "leases"
        write_state(directory, args.leases)
        size = (directory / STATE_NAME).stat().st_size
        before = (directory / STATE_NAME).read_bytes()
        common = ["--dir", str(directory), "--range", "20000-29999"]
        cases = [
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ("portlease --version", [str(script), "--version"]),
            (f"portlease status ({args.leases} leases)", [str(script), *common, "status"]),
            (f"portlease --json status ({args.leases} leases)", [str(script), *common, "--json", "status"]),
            ("python -m pytest_portlease status", [sys.executable, "-m", "pytest_portlease", *common, "status"]),
        ]
        # An installed package has its bytecode compiled at install time. Give the runs a bytecode
        # cache of their own (outside the source tree) even where PYTHONDONTWRITEBYTECODE is set,
        # or every run would compile the package from source, which is not what users see.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
        for _ in range(2):
            for _, argv in cases:
                time_once(argv, env)  # warm the page cache and the bytecode cache
        # Round-robin, so that a burst of load on the machine hits every command alike.
        times: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in cases}
        for _ in range(args.runs):
            for name, argv in cases:
                times[name].append(time_once(argv, env))
        print(f"state file: {size} bytes, {args.leases} leases; {args.runs} runs each; "
              f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n")
        print(f"{'command':<40} {'wall median':>11} {'wall min':>8} {'wall max':>8} {'cpu median':>10}")
        medians = {}
        for name, _ in cases:
            wall = [w for w, _ in times[name]]
            cpu = statistics.median(c for _, c in times[name])
            medians[name] = statistics.median(wall)
            print(f"{name:<40} {medians[name]:>8.1f} ms {min(wall):>5.1f} ms {max(wall):>5.1f} ms "
                  f"{cpu:>7.1f} ms")
        if (directory / STATE_NAME).read_bytes() != before:
            raise SystemExit("status changed the state file")
    status = medians[cases[2][0]]
    verdict = "meets" if status <= args.target_ms else "misses"
    print(f"\nportlease status: median {status:.1f} ms, {verdict} the {args.target_ms:g} ms target")
    return 1 if args.check and status > args.target_ms else 0  # a benchmark reports; --check judges


if __name__ == "__main__":
    sys.exit(main())

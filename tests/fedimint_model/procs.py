"""Running the model and our leaser as processes, for the interop tests and the benchmark.

Every child started here is reaped before the context that started it ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
STATE_NAME = "fm-portalloc.json"


def model_argv(directory: Path, *, count: int, size: int = 1, hold_ms: float = 0.0,
               timestamps: bool = False, grants_log: Path | None = None) -> list[str]:
    argv = [sys.executable, "-m", "tests.fedimint_model", "alloc", "--dir", os.fspath(directory),
            "--count", str(count), "--size", str(size), "--hold-ms", str(hold_ms)]
    if timestamps:
        argv.append("--timestamps")
    if grants_log is not None:
        argv += ["--grants-log", os.fspath(grants_log)]
    return argv


def ours_argv(mode: str, **args: Any) -> list[str]:
    return [sys.executable, "-m", "tests.fedimint_model.ours", mode, json.dumps(args)]


def spawn(argv: list[str]) -> subprocess.Popen[str]:
    # cwd: `-m tests.fedimint_model` resolves from the repository root.
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str, str]:
    """Wait for ``proc`` and return (exit code, stdout, stderr)."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def last_json(out: str) -> dict[str, Any]:
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert lines and lines[-1].get("done"), f"no final line in {out[-500:]!r}"
    final: dict[str, Any] = lines[-1]
    return final


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def seed_state(directory: Path, next_port: int, keys: dict[str, dict[str, int]] | None = None) -> None:
    """A state file as fedimint-portalloc writes it (serde_json's pretty layout)."""
    directory.mkdir(parents=True, exist_ok=True)
    doc = {"next": next_port, "keys": keys or {}}
    (directory / STATE_NAME).write_bytes(json.dumps(doc, indent=2).encode())


@contextlib.contextmanager
def back_to_back_writers(directory: Path, writers: int, *, hold_ms: float,
                         grants_log: Path | None = None) -> Iterator[list[subprocess.Popen[str]]]:
    """``writers`` model processes allocating one port after another until the block ends.

    Yields once each of them has made its first grant (read from its stdout: a pipe, no
    polling), so the caller's measurement starts with all of them in the lock's queue.
    """
    procs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(writers):
            procs.append(spawn(model_argv(directory, count=10**6, hold_ms=hold_ms, grants_log=grants_log)))
        for proc in procs:
            assert proc.stdout is not None
            if not proc.stdout.readline():
                raise AssertionError(f"a model writer ended at once: {proc.communicate()[1]}")
        yield procs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            # communicate() drains the pipes (a writer blocked on a full pipe could not die
            # otherwise) and reaps the child.
            proc.communicate()

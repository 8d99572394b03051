"""The engine's wall clock: every reading of unix time goes through ``now()``, the one seam a
test (or a test's child process) replaces to step the clock."""

from __future__ import annotations

import time


def now() -> float:
    return time.time()

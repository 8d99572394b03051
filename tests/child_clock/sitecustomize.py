"""The engine's clock held in a test's child Python: with this directory on PYTHONPATH and
PORTLEASE_TEST_NOW set (``conftest.child_clock_env``), ``_clock.now`` reads that instant, so that
a console script run as a real process sees the very clock of the test that started it."""

from __future__ import annotations

import os

_now = os.environ.get("PORTLEASE_TEST_NOW")
if _now:
    from pytest_portlease import _clock

    _clock.now = lambda: float(_now)

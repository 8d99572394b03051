"""Bookkeeping for .ci/realservers.sh: one JSON line per server start, failed start and stop.

Not part of the example: it lets the script count the servers that ran and the port conflicts,
across workers and across the two concurrent pytest processes. A conflict shows as a failed
start: the server could not bind ("Address already in use", in the server's own log, which
pytest-postgresql deletes on cleanup, hence the copy here), or mirakuru found something already
answering on the port before starting it (``AlreadyRunning``). Active only when
REALSERVERS_RECORD names the file to append to.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RECORD = os.environ.get("REALSERVERS_RECORD")


def _record(**fields: Any) -> None:
    assert RECORD is not None
    fields.update(
        t=time.time(),
        pid=os.getpid(),
        worker=os.environ.get("PYTEST_XDIST_WORKER", "-"),
        run=os.environ.get("REALSERVERS_RUN", "-"),
    )
    # One write of one short line with O_APPEND: lines from concurrent writers never interleave.
    with open(RECORD, "a", encoding="utf-8") as f:
        f.write(json.dumps(fields) + "\n")


def record(**fields: Any) -> None:
    """Record an event of a server this suite runs itself (the asyncio servers)."""
    if RECORD:
        _record(**fields)


def _log_tail(executor: Any) -> str:
    path = getattr(executor, "logfile", None) or getattr(executor, "logfile_path", None)  # PostgreSQL, MySQL
    parts = list(getattr(executor, "command_parts", []))
    if path is None and "--logfile" in parts:  # RedisExecutor
        path = parts[parts.index("--logfile") + 1]
    try:
        return Path(path).read_text(errors="replace")[-2000:] if path else ""
    except OSError:
        return ""


def _wrap(cls: type, server: str) -> None:
    start: Callable[..., Any] = cls.start  # type: ignore[attr-defined]
    stop: Callable[..., Any] = cls.stop  # type: ignore[attr-defined]

    @functools.wraps(start)
    def recorded_start(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = start(self, *args, **kwargs)
        except BaseException as e:
            _record(event="failed", server=server, port=self.port, error=type(e).__name__,
                    message=str(e)[:500], log=_log_tail(self))
            raise
        _record(event="started", server=server, port=self.port)
        return result

    @functools.wraps(stop)
    def recorded_stop(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = stop(self, *args, **kwargs)
        _record(event="stopped", server=server, port=self.port)
        return result

    cls.start = recorded_start  # type: ignore[attr-defined]
    cls.stop = recorded_stop  # type: ignore[attr-defined]


if RECORD:
    try:
        from pytest_postgresql.executors import PostgreSQLExecutor
        from pytest_redis.executor import RedisExecutor
    except ImportError:
        pass
    else:
        _wrap(PostgreSQLExecutor, "postgresql")
        _wrap(RedisExecutor, "redis")
    try:
        from pytest_mysql.executor import MySQLExecutor
    except ImportError:
        pass
    else:
        _wrap(MySQLExecutor, "mysql")

"""pytest-postgresql's and pytest-redis's own fixtures, used as their documentation shows.

With --portlease-patch=all (or its alias --portlease-patch-port-for) their servers run on
leased ports: nothing here changes.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from pytest_portlease import PortLeaser
from pytest_portlease.plugin import get_session


@pytest.mark.parametrize("n", range(8))  # a few per xdist worker: each worker starts its own
def test_postgresql_and_redis(postgresql: Any, redisdb: Any, n: int) -> None:
    with postgresql.cursor() as cur:
        cur.execute("CREATE TABLE numbers (n integer)")
        cur.execute("INSERT INTO numbers VALUES (%s)", (n,))
        cur.execute("SELECT n FROM numbers")
        assert cur.fetchone() == (n,)
    redisdb.set("n", n)
    assert redisdb.get("n") == str(n).encode()


def test_the_ports_are_this_sessions_leases(
    postgresql_proc: Any, redis_proc: Any, port_leaser: PortLeaser, pytestconfig: pytest.Config
) -> None:
    if not get_session(pytestconfig).patch_port_for:
        pytest.skip("port-for chose these ports: run with --portlease-patch=all")
    mine = {info.base for info in port_leaser.status() if info.pid == os.getpid()}
    assert {postgresql_proc.port, redis_proc.port} <= mine

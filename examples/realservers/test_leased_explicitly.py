"""The explicit way, without --portlease-patch-port-for: lease a port with ``port_block`` and
start the server on it. The plugins' client factories take the name of any process fixture."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_portlease.plugin import PortBlockFactory

pg_factories = pytest.importorskip("pytest_postgresql.factories")
redis_factories = pytest.importorskip("pytest_redis.factories")


@pytest.fixture(scope="session")
def postgresql_server(
    port_block: PortBlockFactory, tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[Any]:
    from pytest_postgresql.executors import PostgreSQLExecutor
    from pytest_postgresql.janitor import DatabaseJanitor

    port = port_block(1, name="postgresql")[0]  # the same port for every call this session
    tmp = tmp_path_factory.mktemp("postgresql")
    server = PostgreSQLExecutor(
        executable=pytestconfig.getoption("postgresql_exec"),
        host="127.0.0.1",
        port=port,
        datadir=str(tmp / "data"),
        unixsocketdir=str(tmp),
        logfile=str(tmp / "postgresql.log"),
        startparams="-w",
        dbname="explicit",
    )
    with server:
        server.wait_for_postgres()
        # The client factory copies each test's database from this template.
        DatabaseJanitor(
            user=server.user, host=server.host, port=port, dbname=server.template_dbname,
            as_template=True,
        ).init()
        yield server


@pytest.fixture(scope="session")
def redis_server(
    port_block: PortBlockFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    from pytest_redis.executor import RedisExecutor

    server = RedisExecutor(
        executable=shutil.which("redis-server") or "redis-server",
        databases=4,
        redis_timeout=30,
        loglevel="notice",
        host="127.0.0.1",
        port=port_block(1, name="redis")[0],
        datadir=tmp_path_factory.mktemp("redis"),
    )
    with server:
        yield server


postgresql_client = pg_factories.postgresql("postgresql_server")
redis_client = redis_factories.redisdb("redis_server")


@pytest.mark.parametrize("n", range(4))
def test_explicitly_leased_servers(postgresql_client: Any, redis_client: Any, n: int) -> None:
    with postgresql_client.cursor() as cur:
        cur.execute("SELECT %s::integer + 1", (n,))
        assert cur.fetchone() == (n + 1,)
    redis_client.set("n", n)
    assert redis_client.get("n") == str(n).encode()

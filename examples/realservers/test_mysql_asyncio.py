"""pytest-mysql's own fixtures (MariaDB), a pinned Redis factory, and asyncio servers on
pytest-asyncio's ``unused_tcp_port``, used as their documentation shows.

With --portlease-patch=all every port here is a lease: nothing in this file changes for it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bookkeeping import record


@pytest.mark.parametrize("n", range(4))
def test_mariadb(mysql: Any, n: int) -> None:
    with mysql.cursor() as cur:
        cur.execute("SELECT %s", (n,))
        assert cur.fetchone() == (n,)


@pytest.mark.parametrize("n", range(4))
def test_a_pinned_redis_factory(redisdb_pinned: Any, n: int) -> None:
    redisdb_pinned.set("n", n)
    assert redisdb_pinned.get("n") == str(n).encode()


async def _echo_once(port: int) -> bytes:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    try:
        # asyncio sets SO_REUSEADDR on POSIX, as a real service would.
        server = await asyncio.start_server(echo, "127.0.0.1", port)
    except OSError as e:
        record(event="failed", server="asyncio", port=port, error=type(e).__name__, message=str(e), log="")
        raise
    record(event="started", server="asyncio", port=port)
    try:
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"ping\n")
            await writer.drain()
            answer = await reader.readline()
            writer.close()
            await writer.wait_closed()
    finally:
        record(event="stopped", server="asyncio", port=port)
    return answer


@pytest.mark.parametrize("n", range(8))
def test_an_asyncio_server_on_unused_tcp_port(unused_tcp_port: int, n: int) -> None:
    assert asyncio.run(_echo_once(unused_tcp_port)) == b"ping\n"

"""A docker compose service on a leased port: ``block.env("PG")`` fills ``${PG_PORT}``.

Needs a Docker engine (skipped without one):  pytest examples/test_docker_compose.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_portlease.plugin import PortBlockFactory

COMPOSE_FILE = Path(__file__).with_name("docker-compose.yml")


def docker_missing() -> str | None:
    if shutil.which("docker") is None:
        return "no Docker: docker is not on PATH"
    for check, what in ((["compose", "version"], "compose plugin"), (["info"], "engine")):
        if subprocess.run(["docker", *check], capture_output=True).returncode != 0:
            return f"no Docker {what} here (docker {' '.join(check)} failed)"
    return None


@pytest.fixture(scope="session")
def postgres_url(port_block: PortBlockFactory) -> Iterator[str]:
    if reason := docker_missing():
        pytest.skip(reason)
    block = port_block(1, name="compose-postgres")
    env = {**os.environ, **block.env("PG")}  # PG_PORT, PG_PORT_0, PG_PORTS
    # One compose project per lease, so that two runs at once get two containers.
    compose = ["docker", "compose", "-p", f"pg{block.base}", "-f", str(COMPOSE_FILE)]
    subprocess.run([*compose, "up", "-d", "--wait"], env=env, check=True)
    try:
        yield f"postgresql://postgres:test@127.0.0.1:{block.base}/postgres"
    finally:
        subprocess.run([*compose, "down", "-v"], env=env, check=True)


def test_postgres_in_compose_answers(postgres_url: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

"""The port-for patch: pytest-postgresql's and pytest-redis's port choice goes through our leases.

No server is started here (examples/realservers does that): these tests call the very functions
the two plugins' process fixtures call to pick a port, and check that the port is leased.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import port_for
import pytest

from pytest_portlease import PortLeaser, PortUnavailable, get_port
from pytest_portlease._config import PortRange
from pytest_portlease._state import STATE_NAME
from pytest_portlease.patches import port_for as _portfor
from pytest_portlease.patches._hook import use_session_leaser
from pytest_portlease.patches.port_for import select_random

pg_process = pytest.importorskip("pytest_postgresql.factories.process")
redis_proc = pytest.importorskip("pytest_redis.factories.proc")

pytestmark = pytest.mark.filterwarnings(
    "ignore:port range .* overlaps this host's ephemeral range:pytest_portlease.PortleaseWarning"
)


def patch_port_for() -> Callable[[], None]:
    patch = _portfor.install()
    assert patch is not None
    return patch.undo


@pytest.fixture
def session(lease_dir: Path, port_range: PortRange) -> Iterator[PortLeaser]:
    """What the plugin provides: the session's leaser behind get_port, and the patch."""
    with PortLeaser(lease_dir, port_range=port_range, label="pytest gw0") as leaser:
        restore = use_session_leaser(lambda: leaser)
        undo = patch_port_for()
        try:
            yield leaser
        finally:
            undo()
            restore()


def leased(lease_dir: Path) -> set[int]:
    return {int(base) for base in json.loads((lease_dir / STATE_NAME).read_text())["keys"]}


def test_the_names_the_plugins_imported_are_ours(session: PortLeaser) -> None:
    assert pg_process.get_port is get_port
    assert redis_proc.get_port is get_port
    assert port_for.get_port is get_port
    assert port_for.api.get_port is get_port
    assert port_for.select_random is select_random


def test_the_plugins_get_leased_ports_by_default(
    session: PortLeaser, lease_dir: Path, port_range: PortRange
) -> None:
    # The process fixtures' default: port=-1 (no factory port), then the configured port, None.
    pg = pg_process._pg_port(-1, SimpleNamespace(port=None), set())
    redis = redis_proc._redis_port(-1, SimpleNamespace(port=None), set())
    assert pg != redis
    assert {pg, redis} <= leased(lease_dir)
    assert pg in port_range and redis in port_range
    assert sorted(block.base for block in session.held) == sorted([pg, redis])
    assert all(block.label == "pytest gw0 get_port" for block in session.held)


def test_the_plugins_retry_with_their_used_ports_excluded(session: PortLeaser) -> None:
    # pytest-postgresql asks again, excluding what it tried, when its .port file exists.
    first = pg_process._pg_port(None, SimpleNamespace(port=None), set())
    second = pg_process._pg_port(None, SimpleNamespace(port=None), {first})
    assert second != first


def test_a_factory_range_is_leased_from_that_range(session: PortLeaser, port_range: PortRange) -> None:
    low = port_range.low + 1000
    ports = {redis_proc._redis_port((low, low + 1), SimpleNamespace(port=None), set()) for _ in range(2)}
    assert ports == {low, low + 1}


def test_an_exact_configured_port_held_by_another_run_names_it(
    session: PortLeaser, lease_dir: Path, port_range: PortRange
) -> None:
    port = port_range.low + 2000
    with PortLeaser(lease_dir, label="pytest gw3 of the other checkout") as other:
        other.lease(1, port=port)
        with pytest.raises(PortUnavailable, match="other checkout"):
            redis_proc._redis_port(-1, SimpleNamespace(port=port), set())


def test_undo_restores_port_for(lease_dir: Path) -> None:
    original = port_for.get_port
    undo = patch_port_for()
    undo()
    assert pg_process.get_port is original
    assert redis_proc.get_port is original
    assert port_for.get_port is original


def test_nested_patches_undo_in_order() -> None:
    original = port_for.get_port
    outer = patch_port_for()
    inner = patch_port_for()
    inner()
    assert port_for.get_port is get_port  # the outer patch still holds
    outer()
    assert port_for.get_port is original


def test_block_env_fills_the_compose_file() -> None:
    """examples/docker-compose.yml takes its port from ${PG_PORT}: block.env("PG") provides
    every variable it names. (Compose's own substitution is not run: no Docker engine here.)"""
    from pytest_portlease import PortBlock

    compose = (Path(__file__).parents[1] / "examples" / "docker-compose.yml").read_text()
    env = PortBlock(20000, 1).env("PG")
    # ${NAME}, ${NAME:?message}, ${NAME:-default}: compose's interpolation forms.
    pattern = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(?::?[?-])[^}]*)?\}")
    used = set(pattern.findall(compose))
    assert used == {"PG_PORT"}
    assert pattern.sub(lambda m: env[m.group(1)], compose).count('"127.0.0.1:20000:5432"') == 1

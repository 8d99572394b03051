"""Real PostgreSQL, Redis and MariaDB servers, one of each per xdist worker, on leased ports,
and asyncio servers on pytest-asyncio's ``unused_tcp_port``.

pytest-postgresql's ``postgresql_proc``, pytest-redis's ``redis_proc`` and pytest-mysql's
``mysql_proc`` pick their ports with port-for, and pytest-asyncio's ``unused_tcp_port`` binds
port 0 and closes it: nothing is shared between processes. One switch routes all of them
through portlease, with no other change to how their fixtures are used:

    pytest examples/realservers -n 4 --portlease-patch=all

test_leased_explicitly.py shows the explicit way, without the switch: lease a port with
``port_block`` and start the server on it. .ci/realservers.sh runs this suite twice at the same
time on one lease directory, as an unprivileged user: PostgreSQL refuses to run as root.

Settings read from the environment:
  REALSERVERS_PORTS=LOW-HIGH  give both process fixtures ``port=(LOW, HIGH)``, so that port-for
                              (switch off) and portlease (switch on) choose from the same ports
  REALSERVERS_PINNED=LOW-HIGH a second Redis factory, ``redis_pinned``, pinned to these ports
                              (default 15090-15099): a small pinned range, as suites write them
  REALSERVERS_RECORD=FILE     append one JSON line per server start, failure and stop
"""

from __future__ import annotations

import glob
import os
import shutil
from types import ModuleType

import pytest

pg_factories: ModuleType | None
redis_factories: ModuleType | None
try:
    from pytest_postgresql import factories as pg_factories
    from pytest_redis import factories as redis_factories
except ImportError:  # the skips below say what to install
    pg_factories = redis_factories = None
mysql_factories: ModuleType | None
try:
    from pytest_mysql import factories as mysql_factories
except ImportError:
    mysql_factories = None

pytest_plugins = ["bookkeeping"]

POSTGRESQL_FIXTURES = {"postgresql", "postgresql_proc", "postgresql_server", "postgresql_client"}
REDIS_FIXTURES = {"redisdb", "redis_proc", "redis_server", "redis_client", "redis_pinned", "redisdb_pinned"}
MYSQL_FIXTURES = {"mysql", "mysql_proc"}
#: Debian installs mysqld (MariaDB's) in /usr/sbin, which an unprivileged PATH leaves out.
_SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


def find_pg_ctl() -> str | None:
    """pg_ctl on PATH, or the newest of Debian's /usr/lib/postgresql/<version>/bin/pg_ctl
    (Debian keeps it off PATH; pytest-postgresql's default names version 14 only)."""
    if found := shutil.which("pg_ctl"):
        return found
    versions = glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")
    return max(versions, key=lambda p: int(p.split("/")[4]), default=None)


def postgresql_missing(config: pytest.Config) -> str | None:
    if pg_factories is None:
        return "pytest-postgresql is not installed (pip install 'pytest-portlease[test]')"
    if config.getoption("postgresql_exec") is None:
        return "PostgreSQL is not installed: no pg_ctl (Debian: apt-get install postgresql)"
    if os.geteuid() == 0:
        return (
            "PostgreSQL refuses to run as root: run this suite as an unprivileged user "
            "(.ci/realservers.sh runs it as 'postgres')"
        )
    return None


def redis_missing(config: pytest.Config) -> str | None:
    if redis_factories is None:
        return "pytest-redis is not installed (pip install 'pytest-portlease[test]')"
    if not config.getini("redis_exec") and not config.getoption("redis_exec"):
        return "Redis is not installed: no redis-server (Debian: apt-get install redis-server)"
    return None


def mysql_missing(config: pytest.Config) -> str | None:
    if mysql_factories is None:
        return "pytest-mysql is not installed (pip install 'pytest-portlease[realservers]')"
    if not shutil.which(str(config.getoption("mysql_mysqld") or "mysqld"), path=_SBIN):
        return "MariaDB is not installed: no mysqld (Debian: apt-get install mariadb-server)"
    return None


@pytest.hookimpl(trylast=True)  # after the portlease plugin's own configure
def pytest_configure(config: pytest.Config) -> None:
    if pg_factories is not None and config.getoption("postgresql_exec") is None:
        config.option.postgresql_exec = find_pg_ctl()
    if mysql_factories is not None and config.getoption("mysql_mysqld") is None:
        config.option.mysql_mysqld = shutil.which("mysqld", path=_SBIN)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = {"postgresql": postgresql_missing(config), "redis": redis_missing(config),
               "mysql": mysql_missing(config)}
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for server, fixtures in (("postgresql", POSTGRESQL_FIXTURES), ("redis", REDIS_FIXTURES),
                                 ("mysql", MYSQL_FIXTURES)):
            if names & fixtures and (reason := missing[server]):
                item.add_marker(pytest.mark.skip(reason=reason))


# Both process fixtures choose from REALSERVERS_PORTS when it is set; the client fixtures
# (postgresql, redisdb) look the process fixture up by name, so they follow.
if (_ports := os.environ.get("REALSERVERS_PORTS")) and pg_factories and redis_factories:
    _low, _, _high = _ports.partition("-")
    postgresql_proc = pg_factories.postgresql_proc(port=(int(_low), int(_high)))
    redis_proc = redis_factories.redis_proc(port=(int(_low), int(_high)))
    if mysql_factories is not None:
        mysql_proc = mysql_factories.mysql_proc(port=(int(_low), int(_high)))

# A factory pinned to a small range, as suites write them: with the switch, a lease inside it.
if redis_factories is not None:
    _pinned_low, _, _pinned_high = os.environ.get("REALSERVERS_PINNED", "15090-15099").partition("-")
    redis_pinned = redis_factories.redis_proc(port=(int(_pinned_low), int(_pinned_high)))
    redisdb_pinned = redis_factories.redisdb("redis_pinned")

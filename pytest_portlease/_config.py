"""One resolver for the settings: option > env > ini > default, each value tagged with its source.

The pytest plugin, the CLI and ``PortLeaser()`` all resolve through here, so a value is validated
once, in one way, and every error names where the bad value came from
(pytest-timeout ``_validate_timeout(value, where)`` is the model).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, NamedTuple, TypeVar

from .errors import InvalidArgument

T = TypeVar("T")

DEFAULT_RANGE_TEXT = "10000-32000"
DEFAULT_TTL = 120.0
MAX_TTL = 10 * 365 * 24 * 3600.0
#: The last port a block may use: fedimint-portalloc computes ``base + size`` in u16, so a block
#: that includes 65535 makes its debug builds panic and its release builds wrap.
LAST_PORT = 65534

DEFAULT_LOCK_TIMEOUT = 30.0
MAX_LOCK_TIMEOUT = 24 * 3600.0

#: Ports of services that developers commonly run on their own machines, inside the default
#: range. Leases from the default range skip them, so that a test suite neither takes a port from
#: a local service (and fails it) nor fails to start because one runs; port-for skips registered
#: ports for the same reason. An explicit range, and an exact port, are taken as given.
WELL_KNOWN_PORTS: dict[int, str] = {
    10250: "Kubernetes kubelet",
    11211: "memcached",
    11434: "Ollama",
    15672: "RabbitMQ management",
    16379: "Redis Cluster bus",
    19999: "Netdata",
    24224: "Fluentd forward",
    25672: "RabbitMQ distribution",
    26257: "CockroachDB",
    26379: "Redis Sentinel",
    27017: "MongoDB",
    27018: "MongoDB shard",
    27019: "MongoDB config server",
    28015: "RethinkDB",
}

DIR_HELP = (
    "directory of the shared lease state (lock + fm-portalloc.json); "
    "env PORTLEASE_DIR, then FM_PORTALLOC_DATA_DIR; default <user cache dir>/fm-portalloc"
)
RANGE_HELP = f"ports to lease from, LOW-HIGH inclusive; env PORTLEASE_RANGE; default {DEFAULT_RANGE_TEXT}"
TTL_HELP = (
    "seconds a lease lives without renewal (a pytest session and `portlease run` renew every "
    f"ttl/3); env PORTLEASE_TTL; default {DEFAULT_TTL:g}"
)
LOCK_TIMEOUT_HELP = (
    "seconds to wait for the lease directory's lock before failing with LockTimeout; "
    f"env PORTLEASE_LOCK_TIMEOUT; default {DEFAULT_LOCK_TIMEOUT:g}"
)


class PortRange(NamedTuple):
    """An inclusive range of ports, ``low <= port <= high``."""

    low: int
    high: int

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"


@dataclass(frozen=True)
class Resolved(Generic[T]):
    """A setting's value and where it came from (an option, an env var, an ini key, default)."""

    value: T
    source: str


def check_port(value: object, name: str, source: str) -> int:
    """Return ``value`` as a port number, or raise ``InvalidArgument`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidArgument(
            f"invalid {name} {value!r} from {source}: expected a port number from 1 to 65535"
        )
    return value


def parse_port_range(raw: object, name: str, source: str) -> PortRange:
    """Parse ``"LOW-HIGH"`` or a ``(low, high)`` pair into a ``PortRange``."""
    expected = (
        f"expected LOW-HIGH with 1 <= LOW <= HIGH <= 65535 and LOW <= {LAST_PORT}, such as 20000-20999 "
        f"(port 65535 is never leased: fedimint-portalloc computes base + size in 16 bits)"
    )
    bounds: tuple[object, ...]
    if isinstance(raw, str):
        parts = raw.strip().split("-")
        if len(parts) != 2 or not all(p.strip().isdecimal() for p in parts):
            raise InvalidArgument(f"invalid {name} {raw!r} from {source}: {expected}")
        bounds = (int(parts[0]), int(parts[1]))
    elif isinstance(raw, tuple | list) and len(raw) == 2:
        bounds = tuple(raw)
    else:
        raise InvalidArgument(f"invalid {name} {raw!r} from {source}: {expected}")
    low, high = bounds
    if (
        any(isinstance(b, bool) or not isinstance(b, int) for b in bounds)
        or not 1 <= low <= high <= 65535  # type: ignore[operator]
        or low > LAST_PORT  # type: ignore[operator]
    ):
        raise InvalidArgument(f"invalid {name} {raw!r} from {source}: {expected}")
    return PortRange(low, high)  # type: ignore[arg-type]


def _seconds(raw: object, name: str, source: str, expected: str, *, zero: bool, most: float) -> float:
    value: float
    if isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            raise InvalidArgument(f"invalid {name} {raw!r} from {source}: {expected}") from None
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    else:
        raise InvalidArgument(f"invalid {name} {raw!r} from {source}: {expected}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero) or value > most:
        raise InvalidArgument(f"invalid {name} {raw!r} from {source}: {expected}")
    return value


def parse_ttl(raw: object, name: str, source: str) -> float:
    """Parse a positive, finite number of seconds."""
    expected = f"expected a number of seconds greater than 0 and at most {MAX_TTL:.0f}, such as 120"
    return _seconds(raw, name, source, expected, zero=False, most=MAX_TTL)


def parse_lock_timeout(raw: object, name: str, source: str) -> float:
    """Parse a finite number of seconds >= 0 (0: fail at once when the lock is held)."""
    expected = (
        f"expected a number of seconds from 0 to {MAX_LOCK_TIMEOUT:.0f}, such as 30 "
        f"(0 fails at once when the lock is held)"
    )
    return _seconds(raw, name, source, expected, zero=True, most=MAX_LOCK_TIMEOUT)


def parse_directory(raw: object, name: str, source: str) -> Path:
    """Accept any non-empty path; whether it is usable is found out when it is first used."""
    if isinstance(raw, str | os.PathLike) and os.fspath(raw):
        return Path(os.path.expanduser(os.fspath(raw)))
    raise InvalidArgument(f"invalid {name} {raw!r} from {source}: expected a directory path")


def default_directory() -> Path:
    # fedimint-portalloc's default on Linux and macOS, so Python and Rust tests share one registry.
    import platformdirs

    return Path(platformdirs.user_cache_dir()) / "fm-portalloc"


Layer = tuple[object, str]


def resolve_layers(
    layers: list[Layer],
    parse: Callable[[object, str, str], T],
    name: str,
    default: Callable[[], T],
) -> Resolved[T]:
    for raw, source in layers:
        if raw is None or raw == "":
            continue  # an empty environment variable counts as unset
        return Resolved(parse(raw, name, source), source)
    return Resolved(default(), "default")


def _env(var: str) -> Layer:
    return (os.environ.get(var), var)


def resolve_directory(
    option: object = None,
    *,
    name: str = "directory",
    option_source: str = "argument",
    ini: object = None,
    ini_source: str = "ini portlease_dir",
) -> Resolved[Path]:
    if option == "":
        # An empty environment variable counts as unset, but `--portlease-dir=` typed out is a
        # mistake (an unset shell variable, most often): silently using the default would hide it.
        raise InvalidArgument(
            f"invalid {name} '' from {option_source}: expected a directory path; "
            f"leave {option_source} out to use the default"
        )
    layers = [
        (option, option_source),
        _env("PORTLEASE_DIR"),
        (ini, ini_source),
        _env("FM_PORTALLOC_DATA_DIR"),
    ]
    return resolve_layers(layers, parse_directory, name, default_directory)


def check_directory(setting: Resolved[Path], option: str) -> None:
    """Raise ``InvalidArgument`` when the lease directory cannot be used: a path that is not a
    directory, or one this process may not write in (or, when missing, may not create).

    Reads only (stat and access(2)): nothing is created before the first lease.
    """
    path, source = setting.value, setting.source
    fix = f"set {source} to a directory you can write in" + (
        "" if source == option else f", or pass {option}=DIR"
    )
    existing = path
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    uid = os.geteuid() if hasattr(os, "geteuid") else None
    who = "this user" if uid is None else f"uid {uid}"
    if existing == path:
        if not path.is_dir():
            what = "is not a directory" if path.exists() else "is a dangling symlink"
            raise InvalidArgument(f"lease directory {path} from {source} {what}: {fix}")
        # Creating the lock and state files needs write and search permission on the directory.
        if not os.access(path, os.W_OK | os.X_OK):
            raise InvalidArgument(f"lease directory {path} from {source} is not writable by {who}: {fix}")
        return
    if not existing.is_dir():
        raise InvalidArgument(
            f"lease directory {path} from {source} cannot be created: {existing} is not a directory: {fix}"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidArgument(
            f"lease directory {path} from {source} cannot be created: {existing} is not writable "
            f"by {who}: {fix}"
        )


def resolve_range(
    option: object = None,
    *,
    name: str = "port_range",
    option_source: str = "argument",
    ini: object = None,
    ini_source: str = "ini portlease_range",
) -> Resolved[PortRange]:
    layers = [(option, option_source), _env("PORTLEASE_RANGE"), (ini, ini_source)]
    return resolve_layers(
        layers, parse_port_range, name, lambda: parse_port_range(DEFAULT_RANGE_TEXT, name, "default")
    )


def resolve_ttl(
    option: object = None,
    *,
    name: str = "ttl",
    option_source: str = "argument",
    ini: object = None,
    ini_source: str = "ini portlease_ttl",
) -> Resolved[float]:
    layers = [(option, option_source), _env("PORTLEASE_TTL"), (ini, ini_source)]
    return resolve_layers(layers, parse_ttl, name, lambda: DEFAULT_TTL)


def resolve_lock_timeout(
    option: object = None,
    *,
    name: str = "lock_timeout",
    option_source: str = "argument",
    ini: object = None,
    ini_source: str = "ini portlease_lock_timeout",
) -> Resolved[float]:
    layers = [(option, option_source), _env("PORTLEASE_LOCK_TIMEOUT"), (ini, ini_source)]
    return resolve_layers(layers, parse_lock_timeout, name, lambda: DEFAULT_LOCK_TIMEOUT)


# -- the patch switch ----------------------------------------------------------------------------

#: The tools ``--portlease-patch`` can route through leases, in the order they are installed.
PATCH_NAMES = ("port-for", "portpicker", "asyncio")
PATCH_HELP = (
    "comma-separated tools whose port choice leases from portlease for this session: "
    f"{', '.join(PATCH_NAMES)} or all; env PORTLEASE_PATCH; default none"
)
PATCH_PORT_FOR_HELP = (
    "alias of --portlease-patch=port-for; env PORTLEASE_PATCH_PORT_FOR; default false"
)


def parse_flag(raw: object, name: str, source: str) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise InvalidArgument(
        f"invalid {name} {raw!r} from {source}: expected 1, true, yes, on, 0, false, no or off"
    )


def parse_patches(raw: object, name: str, source: str) -> tuple[str, ...]:
    """Parse ``"port-for,asyncio"`` (or ``"all"``) into patch names, in ``PATCH_NAMES`` order."""
    accepted = f"expected a comma-separated choice of {', '.join(PATCH_NAMES)}, or all"
    if not isinstance(raw, str):
        raise InvalidArgument(f"invalid {name} {raw!r} from {source}: {accepted}")
    asked = {part.strip().lower() for part in raw.split(",")}
    asked.discard("")
    unknown = sorted(asked - {*PATCH_NAMES, "all"})
    if unknown or not asked:
        bad = f" ({', '.join(map(repr, unknown))} unknown)" if unknown else ""
        raise InvalidArgument(f"invalid {name} {raw!r} from {source}{bad}: {accepted}")
    return PATCH_NAMES if "all" in asked else tuple(p for p in PATCH_NAMES if p in asked)


def resolve_patches(
    option: object = None,
    *,
    option_source: str = "--portlease-patch",
    ini: object = None,
    alias: Resolved[bool] | None = None,
) -> Resolved[tuple[str, ...]]:
    """The switch, with the ``port-for`` alias added where it is on: both sources are named."""
    layers = [(option, option_source), _env("PORTLEASE_PATCH"), (ini, "ini portlease_patch")]
    chosen = resolve_layers(layers, parse_patches, option_source, lambda: ())
    if alias is None or not alias.value or "port-for" in chosen.value:
        return chosen
    names = tuple(p for p in PATCH_NAMES if p in {*chosen.value, "port-for"})
    source = alias.source if chosen.source == "default" else f"{chosen.source} and {alias.source}"
    return Resolved(names, source)

"""A port-for compatible ``get_port`` whose ports are leased, and the switch that routes
port-for's users (pytest-postgresql, pytest-redis) through it.

port-for picks a port that is free *now* and records it nowhere, so two processes can pick the
same port between the check and the server's bind (pytest-postgresql's own ``.port`` files only
guard one pytest run). Here every port handed out is a lease in the shared directory: for the
pytest session when a session leaser is installed (the plugin does it), otherwise for the
configured TTL, which is enough for the caller's server to bind it.
"""

from __future__ import annotations

import bisect
import contextlib
import importlib
import importlib.util
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, NamedTuple, TypeAlias

from ._config import (
    PortRange,
    check_port,
    parse_port_range,
    resolve_directory,
    resolve_range,
    resolve_ttl,
)
from ._leaser import PortBlock, PortLeaser
from .errors import InvalidArgument, PortRangeExhausted, PortUnavailable

PortItem: TypeAlias = int | str | tuple[int, int] | set[int] | frozenset[int]
#: What ``get_port`` accepts: port-for's ``PortType``, plus text such as ``"8000-8100,9000"``.
PortSpec: TypeAlias = PortItem | list[PortItem] | None

LABEL: Final = "get_port"
#: Up to this many unwanted ports inside a request's span are leased and held for a moment so
#: that the next-fit scan steps past them; beyond it each run of candidates is tried in turn.
_MAX_SKIPPED: Final = 64
_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")
_EXPECTED = (
    "expected -1, None, a port, text such as '8000-8100,9000', a (low, high) tuple, "
    "a set of ports, or a list of those"
)
WarningsSink: TypeAlias = Callable[[list[warnings.WarningMessage]], None]


class _Spec(NamedTuple):
    kind: Literal["none", "any", "exact", "candidates"]
    port: int = 0
    runs: tuple[PortRange, ...] = ()


_NONE: Final = _Spec("none")
_ANY: Final = _Spec("any")


@dataclass(frozen=True)
class _SessionHook:
    factory: Callable[[], PortLeaser]
    keep_warnings: WarningsSink | None


_hook: _SessionHook | None = None
_module_leaser: tuple[tuple[Path, PortRange, float], PortLeaser] | None = None
_module_lock = threading.Lock()


# -- the session hook ---------------------------------------------------------------------------


def use_session_leaser(
    factory: Callable[[], PortLeaser] | None, *, keep_warnings: WarningsSink | None = None
) -> Callable[[], None]:
    """Make ``get_port`` lease through ``factory()`` (the pytest session's leaser), or, with
    None, through the module's own leaser. Returns a function that restores the previous hook,
    because pytester runs a pytest session inside another one.

    ``factory`` is called at the first ``get_port``, not here, so a session that never asks for
    a port never touches the lease directory. ``keep_warnings`` receives the warnings raised
    while leasing instead of letting them through (a suite under ``-W error`` must not fail
    because another process left a corrupt state behind).
    """
    global _hook
    previous = _hook
    _hook = None if factory is None else _SessionHook(factory, keep_warnings)

    def restore() -> None:
        global _hook
        _hook = previous

    return restore


@contextlib.contextmanager
def _leasing() -> Iterator[PortLeaser]:
    hook = _hook
    if hook is None:
        leaser = _default_leaser()
        try:
            yield leaser
        finally:
            for block in leaser.held:
                leaser.detach(block)  # TTL-only leases, which nobody renews or releases
        return
    leaser = hook.factory()
    if hook.keep_warnings is None:
        yield leaser
        return
    with leaser.recording_warnings(hook.keep_warnings):
        yield leaser


def _default_leaser() -> PortLeaser:
    # Resolved on every call, so a changed PORTLEASE_DIR / _RANGE / _TTL takes effect. The leases
    # have no owning process: a shell script may print the port and exit before its server binds
    # it, so only the TTL ends them (the port is bound by then, and the probe sees it).
    global _module_leaser
    settings = (resolve_directory(), resolve_range(), resolve_ttl())
    key = (settings[0].value, settings[1].value, settings[2].value)
    with _module_lock:
        if _module_leaser is None or _module_leaser[0] != key:
            if _module_leaser is not None:
                _module_leaser[1].close()  # it holds no lease (all detached): frees its lock fd
            leaser = PortLeaser(settings[0], port_range=settings[1], ttl=settings[2], owner_pid=None)
            _module_leaser = (key, leaser)
        return _module_leaser[1]


# -- get_port -----------------------------------------------------------------------------------


def get_port(ports: PortSpec, exclude_ports: Iterable[int] | None = None) -> int | None:
    """Return a leased port, following port-for's ``get_port`` spec.

    - ``-1``: None. Any other falsy value (None, 0, ``""``, ``[]``): any port of the range.
    - an ``int`` or a numeric ``str``: exactly that port. port-for returns it unchecked; here it
      is leased, or ``PortUnavailable`` names who holds it.
    - ``(low, high)``: a port of that inclusive range; a set: one of its ports; a list: one port
      of the union of its items.
    - text such as ``"8000-8100,9000"`` (which port-for rejects): one port of the union.
    - ``exclude_ports`` are never returned.

    Under pytest (once the plugin installed the session's leaser) the lease lasts the session;
    otherwise it lasts the configured TTL (``PORTLEASE_TTL``, default 120 s).
    """
    spec = _parse(ports)
    excluded = _excluded(exclude_ports)
    if spec.kind == "none":
        return None
    with _leasing() as leaser:
        return _lease(leaser, spec, excluded, ports)


def select_random(ports: Iterable[int] | None = None, exclude_ports: Iterable[int] | None = None) -> int:
    """port-for's ``select_random``: a leased port of ``ports`` (None: of the range)."""
    excluded = _excluded(exclude_ports)
    if ports is None:
        spec = _ANY
    else:
        chosen = set(ports)
        spec = _Spec("candidates", runs=_merge(_item(p, chosen) for p in chosen))
    with _leasing() as leaser:
        return _lease(leaser, spec, excluded, ports)


def _lease(leaser: PortLeaser, spec: _Spec, excluded: frozenset[int], raw: object) -> int:
    if spec.kind == "exact":
        if spec.port in excluded:
            raise PortUnavailable(
                f"port {spec.port} was asked for exactly but is also in exclude_ports", None
            )
        return leaser.lease(1, port=spec.port, label=LABEL).base
    whole = spec.kind == "any"
    runs = (leaser.port_range,) if whole else spec.runs
    candidates = _subtract(runs, excluded)
    if not candidates:
        raise PortRangeExhausted(f"no port to choose: every port of {raw!r} is in exclude_ports")
    # "Any port" keeps the leaser's own range, so that its errors name the configured setting.
    span = leaser.port_range if whole else PortRange(candidates[0].low, candidates[-1].high)
    skipped = span.size - sum(run.size for run in candidates)
    if span.size > 1 and skipped <= _MAX_SKIPPED:
        return _lease_skipping(leaser, span, candidates, skipped)
    return _lease_first_free(leaser, candidates, raw)


def _lease_skipping(
    leaser: PortLeaser, span: PortRange, candidates: list[PortRange], skipped: int
) -> int:
    # One next-fit lease over the whole span keeps the shared cursor moving, as every other
    # lease does. An unwanted port is held until the end so that the scan moves past it; each
    # lease is a distinct port, so after `skipped` unwanted ones the next is wanted.
    lows = [run.low for run in candidates]
    held: list[PortBlock] = []
    port_range = None if span == leaser.port_range else (span.low, span.high)
    try:
        for _ in range(skipped + 1):
            block = leaser.lease(1, port_range=port_range, label=LABEL)
            i = bisect.bisect_right(lows, block.base) - 1
            if i >= 0 and block.base <= candidates[i].high:
                return block.base
            held.append(block)
    finally:
        for block in held:
            leaser.release(block)
    raise AssertionError(f"{skipped + 1} leases in {span} found no candidate")  # pragma: no cover


def _lease_first_free(leaser: PortLeaser, candidates: list[PortRange], raw: object) -> int:
    # Far-apart candidates (a set such as {4002, 30000}): try each run in order. A single port
    # is an exact lease, which leaves the shared cursor where it is.
    for run in candidates:
        try:
            if run.low == run.high:
                return leaser.lease(1, port=run.low, label=LABEL).base
            return leaser.lease(1, port_range=(run.low, run.high), label=LABEL).base
        except (PortUnavailable, PortRangeExhausted):
            continue
    raise PortRangeExhausted(
        f"no free port among {_describe(candidates)} (asked for {raw!r}): every one is leased "
        f"or bound; run `portlease status --dir {leaser.directory}` to see who holds them"
    )


# -- parsing the spec ---------------------------------------------------------------------------


def _invalid(raw: object, name: str = "ports") -> InvalidArgument:
    return InvalidArgument(f"invalid {name} {raw!r} from argument: {_EXPECTED}")


def _parse(ports: object) -> _Spec:
    if isinstance(ports, str) and _INTEGER.fullmatch(ports):
        ports = int(ports)  # port-for does int(ports): "8000" is the port 8000
    if isinstance(ports, bool):
        if ports:
            raise _invalid(ports)  # port-for would return int(True), port 1
        return _ANY
    if isinstance(ports, int):
        if ports == -1:
            return _NONE
        if ports == 0:
            return _ANY
        return _Spec("exact", port=check_port(ports, "port", "argument"))
    if not ports:
        return _ANY
    if isinstance(ports, list):
        return _Spec("candidates", runs=_merge(_item(item, ports) for item in ports))
    return _Spec("candidates", runs=_merge([_item(ports, ports)]))


def _item(item: object, whole: object) -> Iterator[PortRange]:
    """The ranges one item of a spec stands for; ``whole`` is named in errors."""
    if isinstance(item, str):
        yield from _parse_text(item, whole)
    elif isinstance(item, int) and not isinstance(item, bool):
        if not 1 <= item <= 65535:
            raise _invalid(whole)
        yield PortRange(item, item)
    elif isinstance(item, tuple):
        try:
            yield parse_port_range(item, "ports", "argument")
        except InvalidArgument:
            raise _invalid(whole) from None
    elif isinstance(item, set | frozenset):
        for port in item:
            if isinstance(port, set | frozenset | tuple | list):
                raise _invalid(whole)
            yield from _item(port, whole)
    else:
        raise _invalid(whole)


def _parse_text(text: str, whole: object) -> Iterator[PortRange]:
    for part in text.split(","):
        part = part.strip()
        if part.isascii() and part.isdecimal():
            port = int(part)
            if not 1 <= port <= 65535:
                raise _invalid(whole)
            yield PortRange(port, port)
            continue
        try:
            yield parse_port_range(part, "ports", "argument")
        except InvalidArgument:
            raise _invalid(whole) from None


def _merge(groups: Iterable[Iterable[PortRange]]) -> tuple[PortRange, ...]:
    ranges = sorted(r for group in groups for r in group)
    merged: list[PortRange] = []
    for r in ranges:
        if merged and r.low <= merged[-1].high + 1:
            last = merged[-1]
            merged[-1] = PortRange(last.low, max(last.high, r.high))
        else:
            merged.append(r)
    return tuple(merged)


def _excluded(exclude_ports: object) -> frozenset[int]:
    if exclude_ports is None:
        return frozenset()
    if isinstance(exclude_ports, str | bytes) or not isinstance(exclude_ports, Iterable):
        raise InvalidArgument(
            f"invalid exclude_ports {exclude_ports!r} from argument: expected ports, such as {{8000, 8001}}"
        )
    ports = set()
    for port in exclude_ports:
        if isinstance(port, str) and _INTEGER.fullmatch(port):
            port = int(port)
        if isinstance(port, bool) or not isinstance(port, int):
            raise InvalidArgument(
                f"invalid exclude_ports {exclude_ports!r} from argument: {port!r} is not a port"
            )
        ports.add(port)
    return frozenset(ports)


def _subtract(runs: Iterable[PortRange], excluded: frozenset[int]) -> list[PortRange]:
    holes = sorted(excluded)
    left: list[PortRange] = []
    for run in runs:
        low = run.low
        for hole in holes[bisect.bisect_left(holes, run.low) : bisect.bisect_right(holes, run.high)]:
            if hole > low:
                left.append(PortRange(low, hole - 1))
            low = hole + 1
        if low <= run.high:
            left.append(PortRange(low, run.high))
    return left


def _describe(runs: list[PortRange]) -> str:
    text = ",".join(str(r.low) if r.low == r.high else str(r) for r in runs[:8])
    return text + (f",… ({len(runs)} runs)" if len(runs) > 8 else "")


# -- routing port-for's users through get_port --------------------------------------------------

#: Where port-for's functions are looked up when called: port-for itself, and the names that
#: pytest-postgresql (``factories/process.py: _pg_port``) and pytest-redis
#: (``factories/proc.py: _redis_port``) imported with ``from port_for import get_port``.
PATCH_TARGETS: Final = (
    ("port_for", "get_port"),
    ("port_for", "select_random"),
    ("port_for.api", "get_port"),
    ("port_for.api", "select_random"),
    ("pytest_postgresql.factories.process", "get_port"),
    ("pytest_redis.factories.proc", "get_port"),
)
_REPLACEMENTS: Final[dict[str, Callable[..., int | None]]] = {
    "get_port": get_port,
    "select_random": select_random,
}


def _installed(module_name: str) -> object | None:
    # find_spec imports the parent packages; a missing parent is "not installed" too.
    try:
        if importlib.util.find_spec(module_name) is None:
            return None
    except ModuleNotFoundError:
        return None
    return importlib.import_module(module_name)


def patch_port_for() -> Callable[[], None]:
    """Route port-for's ``get_port``/``select_random``, and the copies pytest-postgresql and
    pytest-redis imported, through our leasing versions. Modules that are not installed are
    skipped. Returns the undo function, which restores only what still is ours."""
    saved: list[tuple[object, str, object]] = []
    for module_name, attribute in PATCH_TARGETS:
        module = _installed(module_name)
        if module is None or not hasattr(module, attribute):
            continue
        saved.append((module, attribute, getattr(module, attribute)))
        setattr(module, attribute, _REPLACEMENTS[attribute])

    def undo() -> None:
        while saved:
            module, attribute, original = saved.pop()
            if getattr(module, attribute) is _REPLACEMENTS[attribute]:
                setattr(module, attribute, original)

    return undo

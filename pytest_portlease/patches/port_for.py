"""A port-for compatible ``get_port`` whose ports are leased, and the patch that routes every
user of port-for's ``get_port``/``select_random`` through it.

port-for picks a port that is free *now* and records it nowhere, so two processes can pick the
same port between the check and the server's bind (pytest-postgresql's own ``.port`` files only
guard one pytest run). Here every port handed out is a lease in the shared directory: for the
pytest session when a session leaser is installed (the plugin does it), otherwise for the
configured TTL, which is enough for the caller's server to bind it.
"""

from __future__ import annotations

import bisect
import contextlib
import importlib.util
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from .._config import PortRange
from .._leaser import PortBlock, PortLeaser
from ..errors import InvalidArgument, PortleaseError, PortRangeExhausted, PortUnavailable
from . import _errors, _hook, _spec
from ._patch import Patch
from ._rebind import Rebinding
from ._spec import PortSpec

LABEL: Final = "get_port"
#: Up to this many unwanted ports inside a request's span are leased and held for a moment so
#: that the next-fit scan steps past them; beyond it each run of candidates is tried in turn.
_MAX_SKIPPED: Final = 64


def get_port(ports: PortSpec, exclude_ports: Iterable[int] | None = None) -> int | None:
    """Return a leased port, following port-for's ``get_port`` spec.

    - ``-1``: None. Any other falsy value (None, 0, ``""``, ``[]``): any port of the range.
    - an ``int`` or a numeric ``str``: exactly that port. port-for returns it unchecked; here it
      is leased, or ``PortUnavailable`` names who holds it. A port this pytest session already
      holds is handed out again, as port-for would (a function-scoped fixture asking for the
      same exact port in every test).
    - ``(low, high)``: a port of that inclusive range; a set: one of its ports; a list: one port
      of the union of its items.
    - text such as ``"8000-8100,9000"`` (which port-for rejects): one port of the union.
    - ``exclude_ports`` are never returned.

    Under pytest (once the plugin installed the session's leaser) the lease lasts the session;
    otherwise it lasts the configured TTL (``PORTLEASE_TTL``, default 120 s). When no port can
    be leased, the error is also a ``port_for.PortForException`` where port-for is installed.
    """
    spec = _spec.parse(ports)
    excluded = _spec.excluded(exclude_ports)
    if spec.kind == "none":
        return None
    with _as_port_for_error(), _hook.leasing() as leaser:
        return _lease(leaser, spec, excluded, ports)


def select_random(ports: Iterable[int] | None = None, exclude_ports: Iterable[int] | None = None) -> int:
    """port-for's ``select_random``: a leased port of ``ports`` (None: of the range)."""
    excluded = _spec.excluded(exclude_ports)
    if ports is None:
        spec = _spec.ANY
    else:
        chosen = set(ports)
        spec = _spec.Spec("candidates", runs=_spec.merge(_spec.runs_of(p, chosen) for p in chosen))
    with _as_port_for_error(), _hook.leasing() as leaser:
        return _lease(leaser, spec, excluded, ports)


@contextlib.contextmanager
def _as_port_for_error() -> Iterator[None]:
    """Re-raise a leasing failure as also a ``port_for.PortForException``, which port-for's
    users catch. A bad argument stays what it is: port-for raises ValueError for those too."""
    try:
        yield
    except PortleaseError as e:
        if isinstance(e, InvalidArgument) or (foreign := _port_for_exception()) is None:
            raise
        raise _errors.also(e, foreign) from e.__cause__


def _port_for_exception() -> type[Exception] | None:
    try:
        if importlib.util.find_spec("port_for") is None:
            return None
        from port_for import PortForException
    except ImportError:
        return None
    return PortForException


def _lease(leaser: PortLeaser, spec: _spec.Spec, excluded: frozenset[int], raw: object) -> int:
    if spec.kind == "exact":
        if spec.port in excluded:
            raise PortUnavailable(
                f"port {spec.port} was asked for exactly but is also in exclude_ports", None
            )
        if _hook.in_session() and any(spec.port in block for block in leaser.held):
            return spec.port  # ours already: port-for hands an exact port out unchecked
        return leaser.lease(1, port=spec.port, label=LABEL).base
    whole = spec.kind == "any"
    runs = (leaser.port_range,) if whole else spec.runs
    candidates = _spec.subtract(runs, excluded)
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
        f"no free port among {_spec.describe(candidates)} (asked for {raw!r}): every one is leased "
        f"or bound; run `portlease status --dir {leaser.directory}` to see who holds them"
    )


# -- the patch ------------------------------------------------------------------------------------

#: The originals, captured the first time port-for is patched: a pytest session run inside another
#: one (pytester) finds port-for's names already bound to ours.
_originals: dict[str, object] = {}


def install(pluginmanager: object = None) -> Patch | None:
    """Rebind every binding of port-for's ``get_port`` and ``select_random`` (``port_for``,
    ``port_for.api``, ``port_for.store``, and every module that did ``from port_for import
    get_port``, now or later) to ours, until undone. None when port-for is not installed."""
    if importlib.util.find_spec("port_for") is None:
        return None
    import port_for.api

    for name in ("get_port", "select_random"):
        current = getattr(port_for.api, name)
        if current is not _REPLACEMENTS[name]:
            _originals[name] = current
    rebinding = Rebinding({_originals[name]: _REPLACEMENTS[name] for name in _REPLACEMENTS})
    rebinding.install()

    def describe() -> str:
        modules = sorted({b.rpartition(".")[0] for b in rebinding.bindings})
        return f"{len(modules)} module(s) so far, and every module imported later"

    return Patch("port-for", rebinding.undo, describe)


_REPLACEMENTS: Final[dict[str, Callable[..., int | None]]] = {
    "get_port": get_port,
    "select_random": select_random,
}

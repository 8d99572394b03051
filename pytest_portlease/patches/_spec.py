"""port-for's port specs: what ``get_port(ports, exclude_ports)`` and ``select_random`` accept,
parsed into sorted runs of candidate ports."""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator
from typing import Final, Literal, NamedTuple, TypeAlias

from .._config import PortRange, check_port, parse_port_range
from ..errors import InvalidArgument

PortItem: TypeAlias = int | str | tuple[int, int] | set[int] | frozenset[int]
#: What ``get_port`` accepts: port-for's ``PortType``, plus text such as ``"8000-8100,9000"``.
PortSpec: TypeAlias = PortItem | list[PortItem] | None

_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")
_EXPECTED = (
    "expected -1, None, a port, text such as '8000-8100,9000', a (low, high) tuple, "
    "a set of ports, or a list of those"
)


class Spec(NamedTuple):
    kind: Literal["none", "any", "exact", "candidates"]
    port: int = 0
    runs: tuple[PortRange, ...] = ()


NONE: Final = Spec("none")
ANY: Final = Spec("any")


def _invalid(raw: object, name: str = "ports") -> InvalidArgument:
    return InvalidArgument(f"invalid {name} {raw!r} from argument: {_EXPECTED}")


def parse(ports: object) -> Spec:
    if isinstance(ports, str) and _INTEGER.fullmatch(ports):
        ports = int(ports)  # port-for does int(ports): "8000" is the port 8000
    if isinstance(ports, bool):
        if ports:
            raise _invalid(ports)  # port-for would return int(True), port 1
        return ANY
    if isinstance(ports, int):
        if ports == -1:
            return NONE
        if ports == 0:
            return ANY
        return Spec("exact", port=check_port(ports, "port", "argument"))
    if not ports:
        return ANY
    if isinstance(ports, list):
        return Spec("candidates", runs=merge(runs_of(member, ports) for member in ports))
    return Spec("candidates", runs=merge([runs_of(ports, ports)]))


def runs_of(item: object, whole: object) -> Iterator[PortRange]:
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
            yield from runs_of(port, whole)
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


def merge(groups: Iterable[Iterable[PortRange]]) -> tuple[PortRange, ...]:
    ranges = sorted(r for group in groups for r in group)
    merged: list[PortRange] = []
    for r in ranges:
        if merged and r.low <= merged[-1].high + 1:
            last = merged[-1]
            merged[-1] = PortRange(last.low, max(last.high, r.high))
        else:
            merged.append(r)
    return tuple(merged)


def excluded(exclude_ports: object) -> frozenset[int]:
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


def subtract(runs: Iterable[PortRange], excluded: frozenset[int]) -> list[PortRange]:
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


def describe(runs: list[PortRange]) -> str:
    text = ",".join(str(r.low) if r.low == r.high else str(r) for r in runs[:8])
    return text + (f",… ({len(runs)} runs)" if len(runs) > 8 else "")



"""What installing one patch gives back: how to undo it, and what to say about it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Patch:
    """An installed patch. ``undo`` is idempotent; ``describe`` says, for the report header,
    what was replaced (asked when the header is written, so that it counts what is known then);
    ``notes`` are what a user of the tool should know (an argument that is ignored)."""

    name: str
    undo: Callable[[], None]
    describe: Callable[[], str] = lambda: ""
    notes: tuple[str, ...] = field(default=())

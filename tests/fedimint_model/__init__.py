"""A model of fedimint-portalloc, the Rust crate this project shares its lease directory with.

Written from the crate's public source and documentation (``utils/portalloc`` in
github.com/fedimint/fedimint), as a test double the suite can run where cargo is not available:

- :func:`parses` / :func:`parse`: the crate's reading of ``fm-portalloc.json`` (serde_json);
- :class:`Allocator`: ``port_alloc`` on a directory, in this process;
- ``python -m tests.fedimint_model alloc --dir D --count N --size S``: the same as a process,
  printing each granted base port on a line of its own (see ``__main__``).
"""

from __future__ import annotations

from ._alloc import HIGH, LOW, Allocator, Livelock, Panic, pretty
from ._serde import RootData, SerdeError, parse, parses

EXIT_ERROR = 1  # port_alloc returned Err: what a `fn main() -> anyhow::Result<()>` exits with
EXIT_PANIC = 101  # what a Rust process exits with when it panics
EXIT_LIVELOCK = 70  # the window is full: the real crate would spin forever

__all__ = [
    "EXIT_ERROR",
    "EXIT_LIVELOCK",
    "EXIT_PANIC",
    "HIGH",
    "LOW",
    "Allocator",
    "Livelock",
    "Panic",
    "RootData",
    "SerdeError",
    "parse",
    "parses",
    "pretty",
]

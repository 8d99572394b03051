"""PortBlock, what a lease hands out, and LeaseStats, what a leaser did."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PortBlock:
    """A leased block of consecutive ports ``base .. base + size - 1``."""

    base: int
    size: int
    label: str = ""
    ports: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ports", tuple(range(self.base, self.base + self.size)))

    def __iter__(self) -> Iterator[int]:
        return iter(self.ports)

    def __getitem__(self, index: int) -> int:
        return self.ports[index]

    def __len__(self) -> int:
        return self.size

    def __contains__(self, port: object) -> bool:
        return port in self.ports

    def __str__(self) -> str:
        return str(self.base) if self.size == 1 else f"{self.base}-{self.base + self.size - 1}"

    def env(self, prefix: str = "PORTLEASE") -> dict[str, str]:
        """``{PREFIX_PORT, PREFIX_PORT_0.., PREFIX_PORTS}`` for a child process or compose file."""
        env = {f"{prefix}_PORT": str(self.base)}
        env.update({f"{prefix}_PORT_{i}": str(port) for i, port in enumerate(self.ports)})
        env[f"{prefix}_PORTS"] = ",".join(map(str, self.ports))
        return env


@dataclass
class LeaseStats:
    """What a leaser's ``lease()`` calls did: blocks and ports leased, seconds spent in them, and
    the part of those seconds spent waiting for the lock; how often a wait for the lock timed
    out (in any of its transactions), and how many leases a ``fail_fast`` leaser refused at once
    after that."""

    blocks: int = 0
    ports: int = 0
    seconds: float = 0.0
    lock_wait: float = 0.0
    lock_timeouts: int = 0
    failed_at_once: int = 0

    def add(self, block: PortBlock, seconds: float, lock_wait: float = 0.0) -> None:
        self.blocks += 1
        self.ports += block.size
        self.seconds += seconds
        self.lock_wait += lock_wait

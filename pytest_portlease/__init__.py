"""Cross-process leases of consecutive port blocks for pytest, pytest-xdist and shared CI hosts."""

from __future__ import annotations

from ._leaser import PortBlock, PortLeaser, lease_ports
from ._status import LeaseInfo
from .errors import (
    InvalidArgument,
    LockTimeout,
    PortleaseError,
    PortleaseWarning,
    PortRangeExhausted,
    PortUnavailable,
)
from .patches.port_for import get_port

__version__ = "0.1.0"

__all__ = [
    "InvalidArgument",
    "LeaseInfo",
    "LockTimeout",
    "PortBlock",
    "PortLeaser",
    "PortRangeExhausted",
    "PortUnavailable",
    "PortleaseError",
    "PortleaseWarning",
    "__version__",
    "get_port",
    "lease_ports",
]

"""interlock: locks, counting semaphores and read-write locks that behave the same across threads,
asyncio tasks, processes on one host and processes on many hosts.

Every grant is a :class:`Lease` carrying a fencing token; dead holders' permits come back; deadlocks
are reported; cancellation never leaks a permit. Backends are chosen by URL (``memory://``,
``file:///dir``, ``redis://…``); see :func:`connect`.
"""

from __future__ import annotations

from ._errors import (
    AcquireTimeout,
    BackendError,
    BlockingCallInEventLoop,
    CapacityMismatch,
    DeadlockError,
    InterlockError,
    InvalidArgument,
    InvalidArgumentType,
    LeaseLost,
    MissingDependency,
    NotOwnerError,
    OverRelease,
    WouldBlock,
)
from ._lease import Lease
from ._primitives import Lock, RLock, RWLock, Semaphore
from ._registry import connect, redact_url
from ._spi import Backend, HolderInfo, Statistics, WaiterInfo

__version__ = "0.1.0"


def status(url: str | None = None, name: str | None = None) -> list[Statistics]:
    """Snapshots of the primitives known to the backend at ``url`` (or one of them): capacity,
    holders (owner, permits, token, hold time; host and pid on shared backends) and waiters in order."""
    return connect(url).status(name)


__all__ = [
    "AcquireTimeout",
    "Backend",
    "BackendError",
    "BlockingCallInEventLoop",
    "CapacityMismatch",
    "DeadlockError",
    "HolderInfo",
    "InterlockError",
    "InvalidArgument",
    "InvalidArgumentType",
    "Lease",
    "LeaseLost",
    "Lock",
    "MissingDependency",
    "NotOwnerError",
    "OverRelease",
    "RLock",
    "RWLock",
    "Semaphore",
    "Statistics",
    "WaiterInfo",
    "WouldBlock",
    "__version__",
    "connect",
    "redact_url",
    "status",
]

"""The backend service-provider interface.

A **Backend** is one namespace of named primitives (``memory://``, a directory, a Redis database…),
chosen by URL. For every name it hands out one **Channel** per process: the backend's handle on that
primitive, shared by every facade object (``Lock``, ``Semaphore``, ``RWLock``) with that name.

Every primitive is modelled as a fair weighted semaphore with a fencing-token counter:

* ``lock``: capacity 1; leases are ``exclusive`` and owned by a thread or task;
* ``semaphore``: capacity N; leases are ``permits``; ``bounded=False`` adds signalling (``signal``);
* ``rwlock``: capacity ``RW_CAPACITY``; a reader takes 1 permit (``shared``), a writer takes all of
  them (``exclusive``). FIFO order then makes writers starvation-free, and ``downgrade`` is a partial
  release of ``RW_CAPACITY - 1`` permits.

Channels implement the waiting themselves (threads block, tasks suspend) using the shared pieces in
``interlock._core`` (``ThreadWaiter``/``TaskWaiter`` cells, ``pop_grantable``, the deadlock graph).
Backends must raise only interlock errors, never leak a secret into a message or repr, and keep the
guarantees G1-G6 of DESIGN.md.
"""

from __future__ import annotations

import abc
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ._errors import CapacityMismatch
from ._lease import HELD

if TYPE_CHECKING:
    from ._lease import Lease

RW_CAPACITY = 1 << 30

KINDS = ("lock", "semaphore", "rwlock")


@dataclass(frozen=True)
class HolderInfo:
    """One current grant, as shown by ``statistics()`` and ``interlock status``."""

    owner: str
    permits: int
    token: int
    mode: str
    held_for: float
    pid: int | None = None
    host: str | None = None
    command: str | None = None
    expires_in: float | None = None


@dataclass(frozen=True)
class WaiterInfo:
    """One queued request, in queue order."""

    owner: str
    permits: int
    mode: str
    waiting_for: float
    pid: int | None = None
    host: str | None = None
    command: str | None = None


@dataclass(frozen=True)
class Statistics:
    """A snapshot of one primitive."""

    name: str
    kind: str
    capacity: int
    available: int
    holders: tuple[HolderInfo, ...]
    waiters: tuple[WaiterInfo, ...]
    bounded: bool = True
    last_token: int | None = None
    backend: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def held(self) -> int:
        return sum(h.permits for h in self.holders)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.kind == "rwlock":
            d["capacity"] = None  # unbounded readers; one writer
        return d


class Channel(abc.ABC):
    """A backend's handle on one named primitive in this process. See module docstring."""

    backend: Backend
    name: str
    kind: str
    capacity: int
    bounded: bool

    def __init__(self, backend: Backend, name: str, kind: str, capacity: int, bounded: bool) -> None:
        self.backend = backend
        self.name = name
        self.kind = kind
        self.capacity = capacity
        self.bounded = bounded
        # Lock/RLock bookkeeping shared by every Lock object of this name in this process: the lease
        # taken through them (a lock has one holder) and, for RLock, the nesting depth of its owner.
        self._r_lease: Lease | None = None
        self._r_depth = 0

    def describe(self) -> str:
        return f"{self.kind} {self.name!r}"

    def check_compatible(self, kind: str, capacity: int, bounded: bool) -> None:
        if kind != self.kind or (bounded and capacity != self.capacity) or bounded != self.bounded:
            raise CapacityMismatch(
                f"{self.describe()} on {self.backend.display_url} already exists with capacity "
                f"{self.capacity}, bounded={self.bounded}; this object asks for a {kind} with capacity "
                f"{capacity}, bounded={bounded}. Use one definition per name (or another name).",
                name=self.name, kind=self.kind, capacity=self.capacity,
            )

    # -- grants ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def acquire(
        self, permits: int, timeout: float | None, blocking: bool, owner: Any, site: Any, mode: str,
        fair: bool,
    ) -> Lease:
        """Block the calling thread until granted. Raises AcquireTimeout, WouldBlock (blocking=False),
        DeadlockError, BlockingCallInEventLoop (about to block on a loop thread)."""

    # True when release() never blocks nor does I/O (then async callers may call it directly instead of
    # awaiting release_async, saving a coroutine per release).
    release_never_blocks: ClassVar[bool] = False

    def acquire_nowait(self, permits: int, owner: Any, site: Any, mode: str, fair: bool) -> Lease | None:
        """Grant at once if that needs neither waiting nor I/O; else None (the caller then uses the
        blocking or async path, which re-checks). Lets async callers skip a coroutine when uncontended."""
        return None

    @abc.abstractmethod
    async def acquire_async(
        self, permits: int, timeout: float | None, blocking: bool, owner: Any, site: Any, mode: str,
        fair: bool,
    ) -> Lease:
        """Suspend the calling task until granted; cancellation leaves no grant behind."""

    @abc.abstractmethod
    def release(self, lease: Lease, permits: int, abandoned: bool = False) -> None:
        """Return ``permits`` of ``lease`` (all of them unless downgrading). Idempotent per lease.
        ``abandoned`` marks the next grant ``previous_owner_died``."""

    async def release_async(self, lease: Lease, permits: int) -> None:
        self.release(lease, permits)

    def is_current(self, lease: Lease) -> bool:
        """False if the backend knows the grant is gone although the Lease was not told (e.g. its
        owner thread ended and the grant was reclaimed)."""
        return True

    def extend(self, lease: Lease) -> None:
        """Confirm the grant with the backend now and push the lease's deadline (remote backends: one
        round trip). Raises LeaseLost if the grant is gone. This default serves backends whose grants
        never expire: it only checks that the grant was not reclaimed."""
        if lease._state == HELD and not self.is_current(lease):  # reclaimed behind its back
            lease._set_lost("the backend no longer has the grant (it was reclaimed)")
        lease.ensure_held()

    async def extend_async(self, lease: Lease) -> None:
        self.extend(lease)

    def try_release_abandoned(self, lease: Lease) -> bool:
        """Release an abandoned lease now if that needs neither I/O nor waiting; else return False and
        the reaper thread will call ``release(..., abandoned=True)``."""
        return False

    @abc.abstractmethod
    def downgrade(self, lease: Lease) -> None:
        """Exclusive -> shared, atomically (rwlock only)."""

    async def downgrade_async(self, lease: Lease) -> None:
        self.downgrade(lease)

    @abc.abstractmethod
    def forget(self, lease: Lease) -> None:
        """Drop the grant without returning its permits (signalling semaphores)."""

    @abc.abstractmethod
    def signal(self, permits: int) -> None:
        """V: add permits without a prior acquire (unbounded semaphores only)."""

    async def signal_async(self, permits: int) -> None:
        self.signal(permits)

    # -- inspection --------------------------------------------------------------------------------
    @abc.abstractmethod
    def statistics(self) -> Statistics: ...

    @abc.abstractmethod
    def local_holder_owners(self) -> list[Any]:
        """Owners in this process currently holding grants (for deadlock detection)."""

    def has_remote_holders(self) -> bool:
        """True if holders outside this process may exist (then no deadlock is declared)."""
        return False

    def locked(self) -> bool:
        """True if an acquire of one permit would block now (queued waiters count)."""
        s = self.statistics()
        return s.available < 1 or bool(s.waiters)


class Backend(abc.ABC):
    """A namespace of primitives chosen by URL."""

    schemes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def display_url(self) -> str:
        """The URL with any password or token removed, safe for logs and messages."""
        from ._registry import redact_url

        return redact_url(self.url)

    @abc.abstractmethod
    def channel(self, name: str, kind: str, capacity: int, bounded: bool) -> Channel:
        """The process-wide channel for ``name`` (created on first use). Raises CapacityMismatch."""

    @abc.abstractmethod
    def status(self, name: str | None = None) -> list[Statistics]:
        """Snapshots of every known primitive (or one)."""

    def owner_ended(self, owner: Any) -> None:  # noqa: B027 - optional hook
        """A thread of this process ended: return the owned grants (lock, write/read lock leases) it
        still holds, marking the next grant ``previous_owner_died``. Called from the reaper thread."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release backend resources (connections, helper threads)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.display_url}>"


def held_for(acquired_at: float) -> float:
    return max(0.0, time.monotonic() - acquired_at)

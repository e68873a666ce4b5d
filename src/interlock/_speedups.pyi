"""Type stub of the optional C accelerator ``interlock._speedups`` (src/interlock/_speedups.c).

Its pure-Python twins live in ``interlock.backends.memory`` (``_PyChannelState``) and
``interlock._primitives`` (the facade methods); see the C file's header for the list.
"""

from collections import deque
from collections.abc import Callable
from types import ModuleType, TracebackType
from typing import Any

from ._lease import Lease

_lease_api: object  # a capsule of C entry points for interlock.backends.file._fastfile (see _speedups.c)

class LeaseBase:
    """The fields and finalizer of ``interlock.Lease`` in C (twin: ``interlock._lease._PyLeaseBase``)."""

    _channel: Any
    token: int
    permits: int
    owner: Any
    _site: Any
    mode: str
    acquired_at: float
    _state: int
    _deadline: float | None
    _lost_callbacks: list[Callable[[Any], object]] | None
    _lost_reason: str | None
    previous_owner_died: bool
    backend_data: Any
    _death_cb: Any

class Mutex:
    """A non-reentrant mutex (C twin of ``_thread.allocate_lock()``)."""

    def __init__(self) -> None: ...
    def acquire(self, blocking: bool = True, /) -> bool: ...
    def release(self) -> None: ...
    def locked(self) -> bool: ...
    def __enter__(self) -> bool: ...
    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None, /
    ) -> None: ...

class ChannelState:
    """Native state and fast paths of a memory:// channel (twin: memory.py ``_PyChannelState``)."""

    _mutex: Mutex
    available: int
    waiters: deque[Any]
    holders: dict[int, tuple[Any, int, float, str]]
    _last_token: int | None
    _prev_died: bool
    _r_lease: Lease | None
    _r_depth: int
    def _grant_locked(self, permits: int, owner: Any, site: Any, mode: str, /) -> Lease: ...
    def _try_grant(self, permits: int, owner: Any, site: Any, mode: str, fair: bool, /) -> Lease | None: ...
    def release(self, lease: Lease, permits: int, abandoned: bool = False) -> None: ...
    # the contended handoff section
    def _release_contended(self, lease: Lease, permits: int, abandoned: bool = False) -> None: ...
    def _acquire_contended(
        self, permits: int, timeout: float | None, blocking: bool, owner: Any, site: Any, mode: str, fair: bool, /
    ) -> Lease: ...

def bind_lease(lease: type[Lease], /) -> None: ...
def configure(lease_type: type[Lease], untrack_task_death: Callable[[Lease], None], /) -> None: ...
def bind_facades(
    lock: type[Any],
    semaphore: type[Any],
    tls: Any,
    thread_owner: Callable[[], Any],
    lease_module: ModuleType,
    task_owner: Callable[[], Any],
    thread_owner_type: type[Any],
    task_lookup: tuple[Callable[[], Any], dict[Any, Any] | None, Callable[[Any], Any]],
    /,
) -> None: ...

# the contended handoff section
def configure_handoff(
    thread_waiter: type[Any],
    task_waiter: type[Any],
    acquire: Callable[..., Lease],
    release: Callable[..., None],
    allocate_lock: Callable[[], Any],
    waiting: int,
    granted: int,
    channel_class: type[Any] | None = None,
    /,
) -> None: ...

"""The Lease: the handle of one grant."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import warnings
from collections.abc import Callable
from types import CodeType, TracebackType
from typing import TYPE_CHECKING, Any

from ._core import reaper
from ._core.owner import owner_label
from ._errors import InvalidArgument, LeaseLost

if TYPE_CHECKING:
    from ._spi import Channel

HELD = 0
RELEASED = 1
LOST = 2
ABANDONED = 3

_monotonic = time.monotonic


def describe_site(site: Any) -> str:
    """``site`` is a code object (cheap, always captured) or ``(code, lasti)`` in debug mode."""
    if site is None:
        return "an unknown place"
    if isinstance(site, CodeType):
        return f"{site.co_filename}, in {site.co_name}() (defined at line {site.co_firstlineno})"
    code, lasti = site
    line = code.co_firstlineno
    if lasti >= 0:
        for start, end, lineno in code.co_lines():
            if start <= lasti < end and lineno is not None:
                line = lineno
                break
    return f"{code.co_filename}:{line} in {code.co_name}()"


_debug = bool(sys.flags.dev_mode or os.environ.get("INTERLOCK_DEBUG"))


def set_debug(enabled: bool) -> None:
    """Record the exact line of every acquire (for leak warnings); costs ~0.2 us per acquire."""
    global _debug
    _debug = bool(enabled)


def capture_site(depth: int) -> Any:
    """Where an acquire was made: the caller's code object, plus the exact instruction in debug mode."""
    f = sys._getframe(depth + 1)
    if _debug:
        return (f.f_code, f.f_lasti)
    return f.f_code


class _PyLeaseBase:
    """The fields of a :class:`Lease` and its finalizer, in pure Python (twin:
    ``interlock._speedups.LeaseBase``, used instead when the C accelerator is built).

    Both twins give every field below (the required ones are set by whoever makes the grant, the
    others default as shown) and a finalizer that does nothing unless the Lease is still ``HELD``;
    then it calls :meth:`Lease._on_garbage_collected`, the one copy of the leak path. Lease adds no
    storage of its own (``__slots__ = ()``), so the C grant can allocate it and fill the fields
    directly. Here the fields live in the instance dict (CPython 3.11+ keeps them inline), so
    ``Lease.__new__`` plus stores of the required fields make a complete Lease.
    """

    _channel: Channel
    token: int
    permits: int
    owner: Any
    _site: Any
    mode: str
    acquired_at: float
    _state: int = HELD
    _deadline: float | None = None
    _lost_callbacks: list[Callable[[Lease], object]] | None = None
    _lost_reason: str | None = None
    previous_owner_died: bool = False
    backend_data: Any = None
    _death_cb: Any = None  # the owner task's done-callback (see _core.owner.track_task_death)

    if TYPE_CHECKING:
        def _on_garbage_collected(self) -> None: ...

    def __del__(self) -> None:
        if self._state == HELD:
            self._on_garbage_collected()


if TYPE_CHECKING:
    _LeaseBase = _PyLeaseBase
else:
    try:
        from ._speedups import LeaseBase as _LeaseBase
    except ImportError:  # pragma: no cover - not built, or a free-threaded build
        _LeaseBase = _PyLeaseBase


class Lease(_LeaseBase):
    """One grant of ``permits`` permits of a named primitive.

    A Lease is returned by every acquire and is the proof of ownership: ``release()`` may be called from
    any thread or task, exactly once in effect (later calls do nothing). It is also a context manager
    (``with`` and ``async with``) that releases on exit.

    Attributes:
        name: the primitive's name.
        token: the fencing token, an integer that strictly increases with every grant of this name
            (across processes and restarts on backends that say so). Pass it to the resource you
            protect and have it reject writes carrying a token lower than one it has seen.
        permits: how many permits this lease holds.
        mode: ``"exclusive"`` (locks, write locks), ``"shared"`` (read locks) or ``"permits"``.
        owner: the thread or task that acquired it.
        acquired_at: ``time.monotonic()`` when the grant was made.
        previous_owner_died: True when this grant follows a holder that never released (its thread or
            task ended, its process died, its lease expired, or its Lease was garbage-collected). The
            state it protected may be half-updated; check it before trusting it.

    Holder death: if the Lease is garbage-collected while held, its permits are returned, the next grant
    is marked ``previous_owner_died`` and a ``ResourceWarning`` names where it was acquired.

    Loss: on backends with expiring leases, the Lease stops being ``held`` no later than its conservative
    deadline; callbacks registered with ``on_lost`` run, ``wait_lost()`` returns, and ``release()`` or
    ``ensure_held()`` raise :class:`~interlock.LeaseLost` without touching a successor's grant.
    """

    # The fields and their defaults are _LeaseBase's (see _PyLeaseBase). No storage here: the C fast
    # path allocates Leases itself and fills the LeaseBase fields (its configure() checks this), and
    # a class-level value here would hide a field of the C base.
    __slots__ = ()

    def __init__(
        self,
        channel: Channel,
        token: int,
        permits: int,
        owner: Any,
        site: Any,
        mode: str,
        previous_owner_died: bool = False,
    ) -> None:
        self._channel = channel
        self.token = token
        self.permits = permits
        self.owner = owner
        self._site = site
        self.mode = mode
        if previous_owner_died:
            self.previous_owner_died = True
        self.acquired_at = _monotonic()

    # -- state -------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._channel.name

    @property
    def held(self) -> bool:
        """True while the grant is certainly valid (not released, not lost, deadline not passed)."""
        if self._state != HELD:
            return False
        d = self._deadline
        return (d is None or _monotonic() < d) and self._channel.is_current(self)

    @property
    def deadline(self) -> float | None:
        """Conservative monotonic deadline of the lease (None when it does not expire)."""
        return self._deadline

    @property
    def lost(self) -> bool:
        """True once the lease is known to be lost (expired or reclaimed), as opposed to released."""
        if self._state == LOST:
            return True
        d = self._deadline
        return self._state == HELD and d is not None and _monotonic() >= d

    def ensure_held(self) -> None:
        """Raise :class:`~interlock.LeaseLost` unless the lease is still held."""
        if self._state == HELD:
            d = self._deadline
            if d is None or _monotonic() < d:
                return
            self._set_lost("its deadline passed before it was renewed")
        if self._state == LOST:
            raise LeaseLost(
                f"lease on {self._channel.describe()} (token {self.token}) was lost: {self._lost_reason}",
                name=self.name, token=self.token,
            )
        raise LeaseLost(
            f"lease on {self._channel.describe()} (token {self.token}) was already released",
            name=self.name, token=self.token,
        )

    # -- release -----------------------------------------------------------------------------------
    def release(self) -> None:
        """Return the permits (idempotent; from any thread). Raises LeaseLost if the lease was lost.

        Never blocks on waiters: the permits go to the head waiter(s) directly. On remote backends this
        is one round trip; if interrupted, the lease is released by expiry at the latest.
        """
        if self._state != HELD:
            if self._state == LOST:
                self.ensure_held()
            return
        self._state = RELEASED
        self._channel.release(self, self.permits)

    async def release_async(self) -> None:
        """Async twin of :meth:`release` (does not block the event loop on remote backends)."""
        if self._state != HELD:
            if self._state == LOST:
                self.ensure_held()
            return
        self._state = RELEASED
        await self._channel.release_async(self, self.permits)

    def extend(self) -> None:
        """Renew the lease now and push its deadline; raise :class:`~interlock.LeaseLost` if it was
        lost (or released).

        Leases are renewed in the background; call this right before a step that must not run on a
        lost lease, to start it with a fresh deadline (``deadline``). On remote backends it is one
        round trip; if it cannot reach the server it raises
        :class:`~interlock.BackendError` and the lease keeps its current deadline. Cancelling or
        interrupting it changes nothing: background renewal goes on. Backends whose grants do not
        expire only check that the grant was not reclaimed (its owner ended).
        """
        if self._state != HELD:
            self.ensure_held()
        self._channel.extend(self)

    async def extend_async(self) -> None:
        """Async twin of :meth:`extend` (does not block the event loop on remote backends)."""
        if self._state != HELD:
            self.ensure_held()
        await self._channel.extend_async(self)

    def downgrade(self) -> None:
        """Turn a write (exclusive) lease of an RWLock into a read (shared) lease atomically: other
        readers may enter, no writer can get in between."""
        if self.mode != "exclusive" or self._channel.kind != "rwlock":
            raise InvalidArgument(
                f"downgrade() needs a write lease of an RWLock; this is a {self.mode} lease of "
                f"{self._channel.describe()}", name=self.name,
            )
        self.ensure_held()
        self._channel.downgrade(self)

    async def downgrade_async(self) -> None:
        """Async twin of :meth:`downgrade`."""
        if self.mode != "exclusive" or self._channel.kind != "rwlock":
            raise InvalidArgument(
                f"downgrade_async() needs a write lease of an RWLock; this is a {self.mode} lease of "
                f"{self._channel.describe()}", name=self.name,
            )
        self.ensure_held()
        await self._channel.downgrade_async(self)

    def forget(self) -> None:
        """Consume the permits: they are not returned (signalling semaphores use this for P)."""
        if self._state == HELD:
            self._state = RELEASED
            self._channel.forget(self)

    # -- loss notification -------------------------------------------------------------------------
    def on_lost(self, callback: Callable[[Lease], object]) -> None:
        """Call ``callback(lease)`` when the lease is lost (from a backend thread; keep it short).
        Called at once if it is already lost. Never called after a normal release."""
        if self._state == LOST:
            callback(self)
            return
        if self._lost_callbacks is None:
            self._lost_callbacks = []
        self._lost_callbacks.append(callback)

    async def wait_lost(self) -> None:
        """Return when the lease is lost; wait forever while it is held normally."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def _resolve() -> None:
            if not fut.done():
                fut.set_result(None)

        def _done(_: Lease) -> None:
            loop.call_soon_threadsafe(_resolve)

        self.on_lost(_done)
        await fut

    def _set_lost(self, reason: str) -> None:
        """Backends call this when the grant is gone (expiry, reclaim, server lost it)."""
        if self._state != HELD:
            return
        self._state = LOST
        self._lost_reason = reason
        cbs, self._lost_callbacks = self._lost_callbacks, None
        for cb in cbs or ():
            try:
                cb(self)
            except Exception as exc:  # a user callback must not break the backend's renewer
                warnings.warn(f"interlock: on_lost callback {cb!r} raised {exc!r}", RuntimeWarning,
                              stacklevel=1)

    def _mark_abandoned(self, why: str) -> bool:
        if self._state != HELD:
            return False
        self._state = ABANDONED
        self._lost_reason = why
        return True

    # -- context manager ---------------------------------------------------------------------------
    def __enter__(self) -> Lease:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release_async()

    def _on_garbage_collected(self) -> None:
        """The finalizer found this Lease still HELD (called by both twins of _LeaseBase): return the
        permits through the reaper, mark the primitive's next grant ``previous_owner_died`` and warn."""
        try:
            why = f"its Lease was garbage-collected while held (acquired at {describe_site(self._site)})"
            reaper.abandon(self, why)
            warnings.warn(
                f"interlock: {self._channel.describe()} lease (token {self.token}, {self.permits} "
                f"permit(s)) acquired at {describe_site(self._site)} was garbage-collected while held; "
                "its permits were returned. Keep the Lease and release it, or use 'with'.",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )
        except Exception:  # interpreter shutdown: nothing left to protect
            pass

    def __reduce__(self) -> Any:
        # A copy would be a second handle on the one grant (two releases, two finalizers), and a grant
        # cannot move to another process; both twins refuse alike.
        raise TypeError(f"an interlock.Lease cannot be copied or pickled (token {self.token}); pass the "
                        "token or the name instead")

    def __repr__(self) -> str:
        state = {HELD: "held", RELEASED: "released", LOST: "lost", ABANDONED: "abandoned"}[self._state]
        if state == "held" and not self.held:
            state = "expired"
        return (
            f"<interlock.Lease {self._channel.describe()} token={self.token} permits={self.permits} "
            f"mode={self.mode} owner={owner_label(self.owner)} {state}>"
        )


def _accelerate() -> bool:
    """With the C accelerator, ``release``, ``__enter__`` and ``__exit__`` of Lease are C twins of the
    methods above: they release a HELD lease of a native memory:// channel in C and call the Python
    method for every other case (lost or released leases, file://, redis://, ``?native=0``)."""
    if _LeaseBase is _PyLeaseBase:
        return False
    from . import _speedups

    _speedups.bind_lease(Lease)
    return True


accelerated = _accelerate()

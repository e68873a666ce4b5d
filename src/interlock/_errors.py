"""The interlock error tree.

Every error interlock raises derives from :class:`InterlockError`. Errors that correspond to a built-in
category also derive from it (``AcquireTimeout`` is a ``TimeoutError``, bad arguments are ``ValueError`` or
``TypeError``) so generic handlers keep working. All errors are picklable with their attributes, so they
cross process boundaries (``multiprocessing``, ``concurrent.futures``) intact. No error message ever
contains a secret: URLs are redacted before they reach a message.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AcquireTimeout",
    "BackendError",
    "BlockingCallInEventLoop",
    "CapacityMismatch",
    "DeadlockError",
    "InterlockError",
    "InvalidArgument",
    "InvalidArgumentType",
    "LeaseLost",
    "MissingDependency",
    "NotOwnerError",
    "OverRelease",
    "WouldBlock",
]


def _rebuild(cls: type[InterlockError], message: str, attrs: dict[str, Any]) -> InterlockError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(attrs)
    return err


class InterlockError(Exception):
    """Base class of every error raised by interlock.

    Keyword arguments become attributes (``err.name``, ``err.permits``…) and survive pickling.
    """

    def __init__(self, message: str, **attrs: Any) -> None:
        super().__init__(message)
        self.__dict__.update(attrs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), str(self), dict(self.__dict__)))


class AcquireTimeout(InterlockError, TimeoutError):
    """The grant did not arrive within ``timeout``. Nothing is held and the caller left the queue."""


class WouldBlock(InterlockError):
    """A non-blocking acquire (``blocking=False``) could not be granted at once (fairness honoured)."""


class NotOwnerError(InterlockError, RuntimeError):
    """Release of something the caller does not hold (a lock owned by another thread or task)."""


class OverRelease(InterlockError, ValueError):
    """A bounded semaphore was released more often than it was acquired."""


class LeaseLost(InterlockError):
    """The lease is no longer held: it expired, was reclaimed after its holder was presumed dead, or
    the backend lost it. A successor may hold the permits now; the fencing token is stale."""


class DeadlockError(InterlockError, RuntimeError):
    """A blocking acquire would close a wait-for cycle; ``cycle`` names the owners and primitives."""


class CapacityMismatch(InterlockError, ValueError):
    """Two objects name the same primitive but disagree about its kind or capacity."""


class BackendError(InterlockError):
    """The backend failed (server unreachable, protocol error, corrupted state)."""


class BlockingCallInEventLoop(InterlockError, RuntimeError):
    """A blocking call was made on a thread whose asyncio event loop is running; it would deadlock."""


class MissingDependency(InterlockError, ImportError):
    """An optional dependency needed by a backend is not installed; the message names the extra."""


class InvalidArgument(InterlockError, ValueError):
    """An argument has the right type but an unusable value (negative permits, NaN timeout…)."""


class InvalidArgumentType(InterlockError, TypeError):
    """An argument has the wrong type."""

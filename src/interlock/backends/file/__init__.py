"""``file://``: locks, semaphores and read-write locks shared by the processes of one host.

No server: the state of each primitive lives in a small memory-mapped file in a directory
(``file:///path/to/dir``; ``file://`` alone means ``/tmp/interlock-<uid>``, created 0700). Ownership is
kernel-released (each process holds an ``flock`` on its own liveness file for its whole life), waiters
sleep in the kernel and are woken by a datagram when they are granted or by a FIFO hang-up when a
process they depend on dies, and grants are handed out in FIFO order across threads, tasks and
processes. See docs/file-backend.md for the mechanism, recovery time and what it does not promise.
"""

from ._backend import FileBackend


def accelerated() -> bool:
    """True when the native twin of the hot state transitions (``_fastfile``, an optional C extension)
    is built and in use by channels created from now on. ``INTERLOCK_FILE_NATIVE=0`` in the environment
    selects the pure-Python twin; both are tested and share the file format, so processes using either
    can share a directory."""
    from . import _channel

    return _channel._native is not None


__all__ = ["FileBackend", "accelerated"]

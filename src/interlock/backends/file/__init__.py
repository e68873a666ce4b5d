"""``file://``: locks, semaphores and read-write locks shared by the processes of one host.

No server: the state of each primitive lives in a small memory-mapped file in a directory
(``file:///path/to/dir``; ``file://`` alone means ``/tmp/interlock-<uid>``, created 0700). Ownership is
kernel-released (each process holds an ``flock`` on its own liveness file for its whole life), waiters
sleep in the kernel and are woken by a datagram when they are granted or by a FIFO hang-up when a
process they depend on dies, and grants are handed out in FIFO order across threads, tasks and
processes. See docs/file-backend.md for the mechanism, recovery time and what it does not promise.
"""

from ._backend import FileBackend

__all__ = ["FileBackend"]

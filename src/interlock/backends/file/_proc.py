"""A process's presence in a backend directory: proof of life, death notification, wake-up sockets.

* ``procs/<id>.live``: created under a temporary name, ``flock(LOCK_EX)``-ed, then renamed into place,
  and kept locked for the life of the process. The kernel drops the lock when the process dies (also on
  SIGKILL), so **a successful ``flock(LOCK_SH|LOCK_NB)`` by anyone else is proof of death**; a missing
  file is too (ids are 64 random bits, never reused). A PID is never trusted: PIDs are reused. The file
  also holds a JSON description (pid, host, command line) for ``interlock status``.
* ``procs/<id>.fifo``: a FIFO the process holds open read-write for its life. A watcher that opens it
  for reading gets ``POLLHUP`` when the last writer goes away, i.e. when the process dies: death is
  pushed to waiters, nobody polls. (Linux does not report the hang-up to a reader that opened the FIFO
  after the writer was already gone, so watchers check the ``.live`` lock right after opening.)
* ``procs/<id>-<n>.sock``: datagram sockets; a one-byte datagram means "look at the state again".
  Wake-ups carry no authority: a woken waiter always re-reads the state under the file lock.

The id is random, not the PID, so a forked child, which must get its own identity, never collides with
its parent.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shlex
import socket
import sys
import time
from typing import Any

from ..._errors import BackendError
from ._paths import O_CLOEXEC, O_NOFOLLOW, O_NONBLOCK

_LOCK_EX = fcntl.LOCK_EX
_LOCK_SH = fcntl.LOCK_SH
_LOCK_NB = fcntl.LOCK_NB


def proc_hex(proc: int) -> str:
    return f"{proc:016x}"


def _command_line() -> str:
    from ..._registry import redact_url

    argv = list(getattr(sys, "orig_argv", None) or sys.argv)
    # A URL on the command line may carry a password: never store it.
    safe = [redact_url(a) if "://" in a else a for a in argv]
    text = shlex.join(safe)
    return text if len(text) <= 1000 else text[:997] + "..."


def describe_self() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "uid": os.getuid(),
        "command": _command_line(),
        "started": time.time(),
    }


class ProcessRecord:
    """This process's files in ``procs/`` (see the module docstring)."""

    def __init__(self, procs_fd: int) -> None:
        self.procs_fd = procs_fd
        self.id = int.from_bytes(os.urandom(8), "little") | 1
        self.hex = proc_hex(self.id)
        self.live_fd = -1
        self.fifo_fd = -1
        try:
            fifo = f"{self.hex}.fifo"
            os.mkfifo(fifo, 0o600, dir_fd=procs_fd)
            self.fifo_fd = os.open(fifo, os.O_RDWR | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC, dir_fd=procs_fd)
            tmp = f"tmp-{self.hex}"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600,
                         dir_fd=procs_fd)
            self.live_fd = fd
            fcntl.flock(fd, _LOCK_EX | _LOCK_NB)
            os.write(fd, json.dumps(describe_self()).encode())
            os.rename(tmp, f"{self.hex}.live", src_dir_fd=procs_fd, dst_dir_fd=procs_fd)
        except OSError as exc:
            self.close_inherited()
            raise BackendError(f"cannot register this process in the lock directory: {exc.strerror}") from None

    def close_inherited(self) -> None:
        """Close (never unlock: the lock belongs to the open file, shared with the parent) after fork."""
        for fd in (self.live_fd, self.fifo_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.live_fd = self.fifo_fd = -1


def probe_alive(procs_fd: int, proc: int) -> bool:
    """True unless ``proc`` is provably dead (its ``.live`` lock is free or its file is gone)."""
    try:
        fd = os.open(f"{proc_hex(proc)}.live", os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC, dir_fd=procs_fd)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: assume alive (never reclaim on doubt)
    try:
        return locked_by_other(fd)
    finally:
        os.close(fd)


def locked_by_other(live_fd: int) -> bool:
    try:
        fcntl.flock(live_fd, _LOCK_SH | _LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return True
    fcntl.flock(live_fd, fcntl.LOCK_UN)
    return False


def remove_files(procs_fd: int, proc: int) -> None:
    """Delete a dead process's files (only after proving its death)."""
    prefix = proc_hex(proc)
    try:
        names = os.listdir(procs_fd)
    except OSError:
        return
    for n in names:
        if n.startswith(prefix):
            try:
                os.unlink(n, dir_fd=procs_fd)
            except OSError:
                pass


def read_info(procs_fd: int, proc: int) -> dict[str, Any] | None:
    try:
        fd = os.open(f"{proc_hex(proc)}.live", os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC, dir_fd=procs_fd)
    except OSError:
        return None
    try:
        data = os.pread(fd, 4096, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        info = json.loads(data.decode("utf-8", "replace"))
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def sweep(procs_fd: int, keep: int, limit: int = 256) -> None:
    """Remove the files of processes that died without cleaning up (kernel-proved)."""
    try:
        names = os.listdir(procs_fd)
    except OSError:
        return
    now = time.time()
    for n in names[: limit * 4]:
        if n.endswith(".live"):
            try:
                proc = int(n[:-5], 16)
            except ValueError:
                continue
            if proc != keep and not probe_alive(procs_fd, proc):
                remove_files(procs_fd, proc)
                limit -= 1
        elif n.startswith("tmp-"):
            # A registration that died between create and rename; leave young ones alone (the window
            # between O_EXCL create and flock).
            try:
                st = os.stat(n, dir_fd=procs_fd, follow_symlinks=False)
                fd = os.open(n, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC, dir_fd=procs_fd)
            except OSError:
                continue
            try:
                if now - st.st_mtime > 60 and not locked_by_other(fd):
                    os.unlink(n, dir_fd=procs_fd)
            except OSError:
                pass
            finally:
                os.close(fd)
        if limit <= 0:
            return


class Addresser:
    """Unix socket addresses of wake sockets in ``procs/``.

    On Linux the address goes through ``/proc/self/fd/<dirfd>/``, which keeps it short (sun_path holds
    108 bytes) whatever the directory's path; elsewhere the real path is used and must be short enough.
    """

    def __init__(self, procs_fd: int, procs_path: str) -> None:
        self.procs_fd = procs_fd
        via = f"/proc/self/fd/{procs_fd}"
        if os.path.isdir(via):
            self.prefix = via + "/"
        else:
            self.prefix = procs_path.rstrip("/") + "/"
            if len(self.prefix) + 40 > 104:
                raise BackendError(
                    f"the lock directory path {procs_path!r} is too long for Unix sockets on this system; "
                    "use a shorter file:// path", path=procs_path,
                )

    def name(self, proc: int, n: int) -> str:
        return f"{proc_hex(proc)}-{n}.sock"

    def addr(self, proc: int, n: int) -> str:
        return f"{self.prefix}{proc_hex(proc)}-{n}.sock"


class WakeSocket:
    """A bound, non-blocking datagram socket a waiter (a thread, or an event loop) sleeps on."""

    __slots__ = ("fd", "n", "poller", "sock")

    def __init__(self, addresser: Addresser, proc: int, n: int) -> None:
        self.n = n
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            try:
                os.unlink(addresser.name(proc, n), dir_fd=addresser.procs_fd)
            except FileNotFoundError:
                pass
            self.sock.bind(addresser.addr(proc, n))
            self.sock.setblocking(False)
        except OSError as exc:
            self.sock.close()
            raise BackendError(f"cannot create a wake-up socket: {exc.strerror}") from None
        self.fd = self.sock.fileno()
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLIN)

    def drain(self) -> None:
        recv = self.sock.recv
        try:
            while True:
                recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return

    def close(self) -> None:
        self.sock.close()


class Waker:
    """Sends wake-ups; one unbound socket per backend (``sendto`` is thread-safe)."""

    def __init__(self, addresser: Addresser) -> None:
        self.addresser = addresser
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)

    def wake(self, proc: int, n: int) -> None:
        try:
            self.sock.sendto(b"\x01", self.addresser.addr(proc, n))
        except BlockingIOError:
            pass  # its queue is full: it has wake-ups pending already, one is enough
        except OSError:
            # ECONNREFUSED/ENOENT: the waiter is gone. If its process died, whoever waits behind it (or
            # the next acquirer) proves the death and reclaims what it was given.
            pass

    def close(self) -> None:
        self.sock.close()

"""``interlock run NAME [...] -- COMMAND ...``: run a command while holding a grant.

Signals. At start the main thread blocks SIGINT, SIGTERM, SIGHUP and SIGCHLD, so every thread created
later (the backend's helpers) has them blocked too and a dedicated thread takes them with
``sigwaitinfo``:

* while waiting, it interrupts the main thread's acquire (a thread-directed SIGUSR1 whose handler
  raises), so the waiter leaves the queue cleanly and interlock exits with 128+N;
* while the command runs, it forwards them to the command, except those the terminal generated
  (``si_code == SI_KERNEL``): the terminal sent those to the whole foreground process group, so the
  command already has them and forwarding would deliver them twice.

The command is started with the original signal mask and default SIGPIPE/SIGXFSZ (Python ignores those
two); on Linux it also gets PR_SET_PDEATHSIG=SIGKILL, so it never outlives a killed interlock (see
``_spawn``). Where ``sigwaitinfo`` is missing (macOS), Python handlers do the same job.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from .. import (
    AcquireTimeout,
    CapacityMismatch,
    InterlockError,
    InvalidArgument,
    InvalidArgumentType,
    LeaseLost,
    Lock,
    RWLock,
    Semaphore,
    WouldBlock,
    connect,
)
from .._lease import Lease
from . import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_USAGE, resolve_url
from ._format import holder_line, waiting_line

_FORWARD = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))
_SI_KERNEL = 0x80  # siginfo.si_code of signals sent by the kernel (the terminal's ^C, ^\\, hang-up)


class _Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Supervisor:
    """The signal thread (see the module docstring) and the progress line while waiting."""

    def __init__(self, use_sigwait: bool) -> None:
        self.use_sigwait = use_sigwait
        self.lock = threading.Lock()
        self.phase = "waiting"  # -> "running" once granted
        self.pending = 0  # a signal that arrived before the command existed
        self.child = 0
        self.main_ident = threading.get_ident()
        self.progress = False  # refresh a progress line while waiting (a terminal, not --quiet)
        self.show: Any = None  # the primitive whose statistics feed it
        self.shown = False

    # -- the signal thread (sigwaitinfo platforms) -------------------------------------------------------
    def start(self) -> None:
        threading.Thread(target=self._loop, name="interlock-run-signals", daemon=True).start()

    def _loop(self) -> None:
        waitset = set(_FORWARD) | {signal.SIGCHLD}
        while True:
            if self.progress and self.phase == "waiting":
                # Only a terminal gets this refresh (twice a second); otherwise the thread sleeps.
                info = signal.sigtimedwait(waitset, 0.5)
                if self.show is not None and self.phase == "waiting":
                    self._progress()
                if info is None:
                    continue
            else:
                info = signal.sigwaitinfo(waitset)
            if info.si_signo == signal.SIGCHLD:
                continue  # the main thread reaps the command with waitpid()
            self.deliver(info.si_signo, from_terminal=info.si_code == _SI_KERNEL)

    def deliver(self, signum: int, from_terminal: bool = False) -> None:
        with self.lock:
            if self.phase == "waiting":
                self.pending = signum
                signal.pthread_kill(self.main_ident, signal.SIGUSR1)
            elif self.child:
                if not from_terminal:
                    os.kill(self.child, signum)
            else:
                self.pending = signum  # granted, command not started yet: the main thread delivers it

    # -- the waiting line ------------------------------------------------------------------------------
    def _progress(self) -> None:
        try:
            line = waiting_line(self.show.statistics(), os.getpid())
        except Exception:
            return
        width = 200
        try:
            columns = os.get_terminal_size(sys.stderr.fileno()).columns
        except OSError:
            columns = 0
        if columns > 1:  # 0: a terminal that does not know its size (keep the default)
            width = columns - 1
        sys.stderr.write("\r\x1b[K" + line[:width])
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        with self.lock:
            self.show = None
            self.progress = False
            if self.shown:
                sys.stderr.write("\r\x1b[K")
                sys.stderr.flush()
                self.shown = False


def _open(args: argparse.Namespace, url: str) -> tuple[Any, Any]:
    """The primitive named by the arguments (or by what NAME already is), and a function acquiring it."""
    backend = connect(url)
    name = args.name
    existing = None
    if args.permits is None and not (args.read or args.write):
        found = backend.status(name)
        existing = found[0] if found else None
    timeout = 0.0 if args.no_wait else args.timeout
    blocking = not args.no_wait
    if args.read or args.write or (existing is not None and existing.kind == "rwlock"):
        rw = RWLock(name, backend=backend)
        if args.read:
            return rw, lambda: rw.acquire_read(timeout=timeout, blocking=blocking)
        return rw, lambda: rw.acquire_write(timeout=timeout, blocking=blocking)
    if args.permits is not None or (existing is not None and existing.kind == "semaphore"):
        if args.permits is not None:
            sem = Semaphore(name, args.permits, backend=backend)
        else:
            assert existing is not None
            sem = Semaphore(name, existing.capacity, backend=backend, bounded=existing.bounded)
        return sem, lambda: sem.acquire(args.weight, timeout=timeout, blocking=blocking)
    if args.weight > 1:
        raise InvalidArgument(f"--weight {args.weight} needs a semaphore: add --permits N", argument="weight")
    lock = Lock(name, backend=backend)
    return lock, lambda: lock.acquire(timeout=timeout, blocking=blocking)


def _busy_message(prim: Any, args: argparse.Namespace, why: str) -> str:
    msg = f"interlock run: {why} waiting for {args.name!r}"
    try:
        s = prim.statistics()
    except Exception:
        return msg
    if s.holders:
        msg += "; held by:\n" + "\n".join("  " + holder_line(s, h) for h in s.holders)
    return msg


_PR_SET_PDEATHSIG = 1
_children: dict[int, Any] = {}  # pid -> Popen: kept until reaped (a dropped Popen may reap it itself)


def _prctl() -> Any:
    """libc's ``prctl``, resolved before any fork (the child must only call it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - no usable libc
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


def _spawn(cmd: list[str], env: dict[str, str], mask: Any) -> int:
    """Start the command; return its pid.

    On Linux the command gets PR_SET_PDEATHSIG=SIGKILL: if interlock itself is killed (SIGKILL, the OOM
    killer), the command dies with it instead of running on without the grant, which the next waiter
    is about to receive. (``posix_spawn`` cannot set that; the child setup below runs between fork and
    exec and calls nothing but ``prctl``, ``getppid`` and ``pthread_sigmask``.)
    """
    prctl = _prctl()
    if prctl is not None:
        import subprocess

        parent = os.getpid()

        def child_setup() -> None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # interlock died before prctl took effect
                os._exit(128 + signal.SIGKILL)
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)

        # restore_signals: default SIGPIPE/SIGXFSZ (Python ignores them); handlers reset at exec.
        proc = subprocess.Popen(cmd, env=env, preexec_fn=child_setup, restore_signals=True)  # noqa: PLW1509
        _children[proc.pid] = proc
        return proc.pid
    setsigdef = [getattr(signal, n) for n in ("SIGPIPE", "SIGXFSZ", "SIGUSR1") if hasattr(signal, n)]
    if hasattr(os, "posix_spawnp"):
        kwargs: dict[str, Any] = {"setsigdef": setsigdef}
        if mask is not None:
            kwargs["setsigmask"] = mask
        return os.posix_spawnp(cmd[0], cmd, env, **kwargs)
    import subprocess  # pragma: no cover - platforms without posix_spawn

    return subprocess.Popen(cmd, env=env).pid  # pragma: no cover


def _exit_status(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def run(args: argparse.Namespace, cmd: list[str]) -> int:
    url = resolve_url(args.url)
    use_sigwait = hasattr(signal, "sigwaitinfo") and hasattr(signal, "pthread_sigmask")
    sup = _Supervisor(use_sigwait)
    mask = None
    old_handlers: dict[int, Any] = {}

    def on_usr1(signum: int, frame: FrameType | None) -> None:
        if sup.phase == "waiting" and sup.pending:
            raise _Interrupted(sup.pending)

    def on_signal(signum: int, frame: FrameType | None) -> None:  # without sigwaitinfo
        sup.deliver(signum)
        if sup.phase == "waiting":
            raise _Interrupted(signum)

    sup.progress = not args.quiet and not args.no_wait and sys.stderr.isatty()
    if use_sigwait:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, set(_FORWARD) | {signal.SIGCHLD})
        old_handlers[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, on_usr1)
        sup.start()
    else:  # pragma: no cover - exercised on platforms without sigwaitinfo
        for s in _FORWARD:
            old_handlers[s] = signal.signal(s, on_signal)
    try:
        return _run(args, cmd, url, sup, mask)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _run(args: argparse.Namespace, cmd: list[str], url: str, sup: _Supervisor, mask: Any) -> int:
    lease: Lease | None = None
    prim: Any = None
    try:
        try:
            prim, acquire = _open(args, url)
            if sup.progress:
                sup.show = prim
            lease = acquire()
            with sup.lock:
                sup.phase = "running"
                interrupted = sup.pending
            if interrupted:
                raise _Interrupted(interrupted)
        finally:
            sup.clear()
    except _Interrupted as exc:
        if lease is not None:
            lease.release()
        print(f"interlock run: interrupted by signal {exc.signum} while waiting for {args.name!r}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        if lease is not None:
            lease.release()
        return 128 + signal.SIGINT
    except (AcquireTimeout, WouldBlock):
        why = "gave up (--no-wait)" if args.no_wait else f"timed out after {args.timeout:g}s"
        print(_busy_message(prim, args, why), file=sys.stderr)
        return int(args.timeout_exit_code)
    except (InvalidArgument, InvalidArgumentType, CapacityMismatch) as exc:
        print(f"interlock run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except InterlockError as exc:  # messages name the (redacted) URL already
        print(f"interlock run: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE

    env = dict(os.environ)
    env["INTERLOCK_TOKEN"] = str(lease.token)
    env["INTERLOCK_NAME"] = args.name
    env["INTERLOCK_PERMITS"] = str(lease.permits)
    try:
        try:
            with sup.lock:
                pid = sup.child = _spawn(cmd, env, mask)
                pending, sup.pending = sup.pending, 0
            if pending:
                os.kill(pid, pending)
        except FileNotFoundError:
            print(f"interlock run: {cmd[0]}: command not found", file=sys.stderr)
            return EXIT_NOT_FOUND
        except OSError as exc:
            print(f"interlock run: {cmd[0]}: {exc.strerror}", file=sys.stderr)
            return EXIT_NOT_EXECUTABLE
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except ChildProcessError:  # pragma: no cover - reaped elsewhere
                return 0
        proc = _children.pop(pid, None)
        if proc is not None:
            proc.returncode = _exit_status(status)  # reaped here: the Popen must not wait for it again
        return _exit_status(status)
    finally:
        try:
            lease.release()
        except LeaseLost as exc:
            print(f"interlock run: warning: {exc}", file=sys.stderr)

"""The ``interlock`` command line: ``run`` a command under a lock or semaphore, show ``status``, and a
``demo``. Also ``python -m interlock``.

Exit codes (see docs/cli.md): the command's own status, or 128+N if a signal N killed it; 75 (EX_TEMPFAIL)
when ``--timeout`` expires or ``--no-wait`` finds the permits taken (``--timeout-exit-code`` changes it);
128+N when signal N interrupted the wait; 2 for usage errors; 69 (EX_UNAVAILABLE) when the backend
cannot be used; 126/127 when the command cannot be executed / is not found; ``status NAME`` exits 1 if
NAME does not exist.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

EXIT_TIMEOUT = 75  # EX_TEMPFAIL, as run-one's successors use; flock(1) uses 1, which looks like a failure
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
EXIT_MISSING = 1  # status NAME: no such primitive

DEFAULT_URL = "file://"


def resolve_url(url: str | None) -> str:
    """``--url``, else ``$INTERLOCK_URL``, else the same-host default ``file://``."""
    return url or os.environ.get("INTERLOCK_URL") or DEFAULT_URL


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _exit_code(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an exit code: {text!r}") from None
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"exit codes are 0..255, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(
        prog="interlock",
        description="Locks, semaphores and read-write locks shared by threads, tasks, processes and hosts.",
        epilog="URL: --url, else $INTERLOCK_URL, else file:// (same host, /tmp/interlock-<uid>). "
               "See docs/cli.md.",
    )
    p.add_argument("--version", action="version", version=f"interlock {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{run,status,demo}")

    r = sub.add_parser(
        "run", help="run a command while holding a lock or semaphore permits",
        description="Wait for NAME (FIFO with every other holder and waiter), run COMMAND while holding it, "
                    "release it when COMMAND ends, and exit with COMMAND's status. The fencing token is "
                    "exported as INTERLOCK_TOKEN. SIGINT, SIGTERM and SIGHUP sent to interlock are "
                    "forwarded to COMMAND.",
    )
    r.add_argument("name", metavar="NAME", help="the lock or semaphore name (any text)")
    r.add_argument("--permits", type=_positive_int, metavar="N",
                   help="NAME is a semaphore of N permits (default: NAME's existing kind, else a lock)")
    r.add_argument("--weight", type=_positive_int, default=1, metavar="K",
                   help="take K permits at once (semaphores; default 1)")
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--read", action="store_true", help="NAME is a read-write lock: take a shared (read) lease")
    mode.add_argument("--write", action="store_true", help="NAME is a read-write lock: take the exclusive lease")
    r.add_argument("--timeout", type=_positive_float, metavar="S",
                   help="give up after S seconds of waiting (exit code 75)")
    r.add_argument("-n", "--no-wait", action="store_true", help="do not wait: exit 75 at once if busy")
    r.add_argument("-E", "--timeout-exit-code", type=_exit_code, default=EXIT_TIMEOUT, metavar="CODE",
                   help=f"exit code when the wait times out (default {EXIT_TIMEOUT}, EX_TEMPFAIL)")
    r.add_argument("--url", help="backend URL (default: $INTERLOCK_URL, else file://)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress line while waiting")
    r.add_argument("cmd", nargs="*", metavar="-- COMMAND", help="the command and its arguments, after --")

    s = sub.add_parser(
        "status", help="show names, capacity, holders and waiters",
        description="Show every primitive (or NAME): kind, capacity, holders (pid, host, thread or task, "
                    "command line, hold time, token) and waiters in queue order.",
    )
    s.add_argument("name", nargs="?", metavar="NAME", help="only this primitive (exit 1 if it does not exist)")
    s.add_argument("--url", help="backend URL (default: $INTERLOCK_URL, else file://)")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    d = sub.add_parser(
        "demo", help="10 jobs through a 3-permit semaphore, across processes, as a timeline",
        description="Start JOBS processes that each take one permit of a semaphore of PERMITS, hold it a "
                    "moment and release it; print every grant as it happens and a timeline that shows "
                    "that never more than PERMITS run at once. Needs no server (a fresh file:// "
                    "directory unless --url is given).",
    )
    d.add_argument("--jobs", type=_positive_int, default=10, metavar="N")
    d.add_argument("--permits", type=_positive_int, default=3, metavar="N")
    d.add_argument("--hold", type=_positive_float, default=0.6, metavar="S", help="mean hold time (seconds)")
    d.add_argument("--seed", type=int, default=None, help="random seed for hold times")
    d.add_argument("--url", help="backend URL (default: a fresh file:// directory)")
    d.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `run NAME [options] -- COMMAND ...`: split at the first "--" ourselves (argparse would bind the
    # command to the positional right after NAME and then reject the options in between).
    tail: list[str] | None = None
    if "run" in argv and "--" in argv and argv.index("--") > argv.index("run"):
        i = argv.index("--")
        argv, tail = argv[:i], argv[i + 1:]
    args = parser.parse_args(argv)
    if tail is not None:
        args.cmd = list(args.cmd) + tail
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    url = getattr(args, "url", None)
    if url:
        from .._registry import redact_url

        shown = redact_url(url)
        if shown != url:
            # argv is readable by every user of the host (ps, /proc/PID/cmdline): refuse rather than
            # run with the secret exposed for the whole life of the command.
            print(f"interlock {args.command}: --url {shown} carries a secret (password or token), which "
                  "every user on this host can read in the process list; pass the URL in the "
                  "INTERLOCK_URL environment variable instead", file=sys.stderr)
            return EXIT_USAGE
    if args.command == "run":
        from ._run import run

        cmd = list(args.cmd)
        if cmd and cmd[0] == "--":
            cmd = cmd[1:]
        if not cmd:
            parser.error("run: missing COMMAND (write: interlock run NAME -- COMMAND ...)")
        if args.weight > 1 and (args.read or args.write):
            parser.error("run: --weight applies to semaphores, not to read-write locks")
        return run(args, cmd)
    if args.command == "status":
        from ._status import status

        return status(args)
    from ._demo import demo

    return demo(args)

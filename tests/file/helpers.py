"""Helpers for the file:// tests: child Python processes that talk in lines, and polling for a state.

A child runs a snippet with ``interlock``, ``os``, ``sys``, ``time`` and ``json`` imported, ``URL`` bound to
the test's backend URL and ``say(*words)`` printing one flushed line. The test reads lines with
``expect(prefix)`` (a generous deadline; liveness only) and kills the child by PID.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time

LONG = 20.0  # generous liveness bound for noisy 2-core machines; never a performance oracle

_PRELUDE = """\
import faulthandler, signal
faulthandler.register(signal.SIGUSR2)  # the test dumps a stuck child's stacks with SIGUSR2
import interlock, os, sys, time, json
URL = {url!r}
def say(*words):
    print(*words, flush=True)
"""


class Child:
    def __init__(self, url: str, code: str, env: dict[str, str] | None = None) -> None:
        src = _PRELUDE.format(url=url) + textwrap.dedent(code)
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-c", src], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)

    def expect(self, prefix: str, timeout: float = LONG) -> str:
        """The next line starting with ``prefix`` (earlier lines are kept in ``lines``)."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"child {self.pid} did not say {prefix!r} within {timeout}s; said "
                                     f"{self.lines!r}; stderr: {self.stderr()}")
            if self._sel.select(left):
                line = self.proc.stdout.readline()
                if not line:
                    raise AssertionError(f"child {self.pid} exited (rc={self.proc.wait()}) before saying "
                                         f"{prefix!r}; said {self.lines!r}; stderr: {self.stderr()}")
                line = line.rstrip("\n")
                self.lines.append(line)
                if line.startswith(prefix):
                    return line

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(still running)"
        return self.proc.stderr.read()[-2000:]

    def dump(self) -> str:
        """The child's Python stacks (it is then killed)."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGUSR2)
            time.sleep(0.3)
        self.kill()
        return self.stderr()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait()

    def wait(self, timeout: float = LONG) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        self.kill()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        self._sel.close()





def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks

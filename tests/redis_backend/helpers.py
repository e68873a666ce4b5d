"""Helpers for the Redis backend tests (this directory is not called ``tests/redis``: with ``tests`` on
``sys.path`` that name would shadow the redis-py package)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

from interlock.testing.servers import RedisServer

_n = itertools.count()


def new_prefix() -> str:
    return f"t{os.getpid()}-{next(_n)}:"
CHILD = str(Path(__file__).with_name("child.py"))
SRC = str(Path(__file__).resolve().parents[2] / "src")


def url_for(srv: RedisServer, prefix: str, ttl: float = 1.0, **query: object) -> str:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"{srv.url}?prefix={prefix}&ttl={ttl}{extra}"


class Child:
    """A child process running tests/redis/child.py; killed at the end of the test if still alive."""

    def __init__(self, mode: str, name: str, url: str, **env: str) -> None:
        e = dict(os.environ, INTERLOCK_URL=url, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
        e.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, CHILD, mode, name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=e,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, word: str) -> list[str]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"child {self.pid} exited before {word!r} (rc={self.proc.wait()})")
            parts = line.split()
            if parts and parts[0] == word:
                return parts[1:]

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

"""``interlock run`` and ``interlock status`` against a Redis server (started here, password-protected):
holders with host, pid, token and lease expiry, waiters in queue order, exit codes, a killed holder's
permits coming back, and the password never printed nor accepted on the command line."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("redis", minversion="5")

from interlock.testing.servers import RedisServer

pytestmark = [pytest.mark.servers]

LONG = 30.0
PASSWORD = "cli-s3cret-pw"
_n = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer(password=PASSWORD) as srv:
        yield srv


@pytest.fixture
def env(server: RedisServer) -> dict[str, str]:
    e = dict(os.environ)
    # The URL (with its password) goes in the environment, never on the command line.
    e["INTERLOCK_URL"] = f"{server.url}?prefix=cli{os.getpid()}-{next(_n)}:&ttl=2"
    return e


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "interlock", *args], env=env, capture_output=True, text=True,
                          check=False, timeout=LONG)


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "interlock", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def hold(env: dict[str, str], name: str, *extra: str) -> subprocess.Popen[str]:
    p = start(env, "run", name, *extra, "--", sys.executable, "-c",
              "import os, time; print('holding', os.getpid(), flush=True); time.sleep(600)")
    assert p.stdout is not None
    line = p.stdout.readline().split()
    assert line[:1] == ["holding"], (line, p.stderr.read() if p.poll() is not None and p.stderr else "")
    p.command_pid = int(line[1])  # type: ignore[attr-defined]
    return p


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for a reaper counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def status(env: dict[str, str], name: str) -> dict[str, object]:
    out = cli(env, "status", name, "--json")
    assert out.returncode == 0, out.stderr
    assert PASSWORD not in out.stdout + out.stderr
    (prim,) = json.loads(out.stdout)["primitives"]
    return prim  # type: ignore[no-any-return]


def wait_for(pred: object, what: str) -> None:
    deadline = time.monotonic() + LONG
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def stop(p: subprocess.Popen[str]) -> int:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    return p.wait(LONG)


def test_status_shows_holders_and_waiters_in_order(env: dict[str, str]) -> None:
    h = hold(env, "pool", "--permits", "2", "--weight", "2")
    waiters = []
    try:
        for _ in range(2):
            waiters.append(start(env, "run", "pool", "--permits", "2", "--", "true"))
            n = len(waiters)
            wait_for(lambda n=n: len(status(env, "pool")["waiters"]) == n, f"{n} waiter(s) queued")  # type: ignore[arg-type]
        prim = status(env, "pool")
        assert prim["kind"] == "semaphore" and prim["capacity"] == 2 and prim["available"] == 0
        (holder,) = prim["holders"]  # type: ignore[misc]
        assert holder["pid"] == h.pid and holder["host"] == socket.gethostname() and holder["permits"] == 2
        assert holder["token"] > 0 and 0 < holder["expires_in"] <= 2.0  # the lease TTL, renewed
        assert [w["pid"] for w in prim["waiters"]] == [w.pid for w in waiters]  # type: ignore[attr-defined]
        text = cli(env, "status")
        assert text.returncode == 0 and PASSWORD not in text.stdout + text.stderr and "***" in text.stdout
        lines = text.stdout.splitlines()
        assert next(line for line in lines if line.startswith("pool")).split()[:4] == ["pool", "semaphore", "2/2", "2"]
        holder_line = next(line for line in lines if line.strip().startswith("holder"))
        assert f"pid {h.pid}" in holder_line and "lease expires in" in holder_line
        order = [line for line in lines if line.strip().startswith("waiter")]
        assert [f"pid {w.pid}" in line for line, w in zip(order, waiters, strict=True)] == [True, True]
    finally:
        stop(h)
        for w in waiters:
            assert w.wait(LONG) == 0  # each ran once the holder was gone
    assert status(env, "pool")["holders"] == []


def test_run_timeout_token_and_a_killed_holder(env: dict[str, str]) -> None:
    h = hold(env, "job")
    try:
        out = cli(env, "run", "job", "--timeout", "0.2", "--", "true")
        assert out.returncode == 75 and "timed out" in out.stderr and PASSWORD not in out.stderr
        w = start(env, "run", "job", "--", sys.executable, "-c",
                  "import os; print(os.environ['INTERLOCK_TOKEN'])")
        wait_for(lambda: len(status(env, "job")["waiters"]) == 1, "waiter queued")  # type: ignore[arg-type]
        first_token = status(env, "job")["holders"][0]["token"]  # type: ignore[index]
        # SIGKILL `interlock run` (no release): its command dies with it (it must not run on without the
        # lock), and the waiter gets the lock once the lease expires.
        h.kill()
        h.wait(LONG)
        wait_for(lambda: gone(h.command_pid), "the killed holder's command to exit")  # type: ignore[attr-defined]
        assert w.wait(LONG) == 0
        assert w.stdout is not None and int(w.stdout.read()) > first_token
    finally:
        stop(h)
    assert status(env, "job")["holders"] == []


def test_a_password_on_the_command_line_is_refused(server: RedisServer, env: dict[str, str]) -> None:
    out = cli(env, "run", "x", "--url", server.url, "--", "true")
    assert out.returncode == 2 and "INTERLOCK_URL" in out.stderr
    assert PASSWORD not in out.stdout + out.stderr
    out = cli(env, "status", "--url", server.url)
    assert out.returncode == 2 and PASSWORD not in out.stdout + out.stderr
    # a wrong password in the environment is an error that names the problem, and is not printed
    bad = dict(env, INTERLOCK_URL=env["INTERLOCK_URL"].replace(PASSWORD, "wrong-pw"))
    out = cli(bad, "status")
    assert out.returncode == 69 and "wrong-pw" not in out.stdout + out.stderr, out.stderr

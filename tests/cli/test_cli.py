"""The ``interlock`` command line end to end, through subprocesses: exit codes, signals, timeout,
INTERLOCK_TOKEN, status text and JSON, demo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

LONG = 30.0

if not sys.platform.startswith("linux"):
    pytest.skip("end-to-end CLI tests run on Linux", allow_module_level=True)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    e = dict(os.environ)
    e["INTERLOCK_URL"] = f"file://{tmp_path}/locks"
    yield e
    from interlock.backends.file import FileBackend

    FileBackend(e["INTERLOCK_URL"]).sweep()


def cli(env: dict[str, str], *args: str, timeout: float = LONG) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "interlock", *args], env=env, capture_output=True, text=True,
                          check=False, timeout=timeout)


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "interlock", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def status(env: dict[str, str], name: str) -> dict[str, object] | None:
    out = cli(env, "status", name, "--json")
    prims = json.loads(out.stdout)["primitives"]
    return prims[0] if prims else None


def wait_for(pred: object, what: str) -> None:
    deadline = time.monotonic() + LONG
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def hold(env: dict[str, str], name: str, *extra: str) -> subprocess.Popen[str]:
    """Start `interlock run NAME -- <sleep>` and wait until it holds NAME."""
    p = start(env, "run", name, *extra, "--", sys.executable, "-c", "print('holding', flush=True); "
                                                                      "import time; time.sleep(600)")
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "holding"
    return p


def stop(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)  # forwarded to the command; interlock exits with its status
        p.wait(LONG)


def test_version() -> None:
    out = subprocess.run([sys.executable, "-m", "interlock", "--version"], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.startswith("interlock ")


def test_run_passes_the_exit_status_and_exports_the_token(env: dict[str, str]) -> None:
    code = "import os, sys; print(os.environ['INTERLOCK_TOKEN'], os.environ['INTERLOCK_NAME']); sys.exit(7)"
    first = cli(env, "run", "job", "--", sys.executable, "-c", code)
    assert first.returncode == 7
    token1, name = first.stdout.split()
    second = cli(env, "run", "job", "--", sys.executable, "-c", code)
    assert second.returncode == 7 and int(second.stdout.split()[0]) > int(token1) and name == "job"


def test_timeout_exits_75_and_names_the_holder(env: dict[str, str]) -> None:
    h = hold(env, "busy")
    try:
        out = cli(env, "run", "busy", "--timeout", "0.2", "--", "true")
        assert out.returncode == 75
        assert f"pid {h.pid}" in out.stderr and "timed out" in out.stderr
        assert cli(env, "run", "busy", "-n", "--", "true").returncode == 75
        assert cli(env, "run", "busy", "-n", "-E", "3", "--", "true").returncode == 3
    finally:
        stop(h)
    assert cli(env, "run", "busy", "-n", "--", "true").returncode == 0


def test_command_not_found_not_executable_and_killed(env: dict[str, str], tmp_path: Path) -> None:
    assert cli(env, "run", "x", "--", "/nonexistent/command").returncode == 127
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\n")
    assert cli(env, "run", "x", "--", str(plain)).returncode == 126
    killed = cli(env, "run", "x", "--", sys.executable, "-c", "import os, signal; os.kill(os.getpid(), 9)")
    assert killed.returncode == 128 + 9


def test_usage_errors_exit_2(env: dict[str, str]) -> None:
    assert cli(env, "run", "x").returncode == 2  # no command
    assert cli(env, "run", "x", "--weight", "2", "--", "true").returncode == 2  # weight needs a semaphore
    assert cli(env, "run", "x", "--permits", "0", "--", "true").returncode == 2
    assert cli(env, "run", "x" * 600, "--", "true").returncode == 2  # name too long
    assert cli(env, "run", "two", "--permits", "2", "--", "true").returncode == 0
    assert cli(env, "run", "two", "--permits", "3", "--", "true").returncode == 2  # capacity mismatch


def test_sigterm_is_forwarded_to_the_command(env: dict[str, str]) -> None:
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: (print('got TERM', flush=True), sys.exit(5)))\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n")
    p = start(env, "run", "sig", "--", sys.executable, "-c", code)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    assert p.wait(LONG) == 5
    assert p.stdout.read().strip() == "got TERM"
    assert status(env, "sig")["holders"] == []  # type: ignore[index]


def test_a_signal_while_waiting_leaves_the_queue(env: dict[str, str]) -> None:
    h = hold(env, "q")
    try:
        w = start(env, "run", "q", "--", "true")
        wait_for(lambda: len(status(env, "q")["waiters"]) == 1, "waiter queued")  # type: ignore[index, arg-type]
        w.send_signal(signal.SIGTERM)
        assert w.wait(LONG) == 128 + signal.SIGTERM
        assert "interrupted" in (w.stderr.read() if w.stderr else "")
        assert status(env, "q")["waiters"] == []  # type: ignore[index]
    finally:
        stop(h)


def test_status_text_and_json(env: dict[str, str]) -> None:
    h = hold(env, "pool", "--permits", "3", "--weight", "2")
    w = start(env, "run", "pool", "--permits", "3", "--weight", "2", "--", "true")
    try:
        wait_for(lambda: len(status(env, "pool")["waiters"]) == 1, "waiter queued")  # type: ignore[index, arg-type]
        text = cli(env, "status")
        assert text.returncode == 0
        lines = text.stdout.splitlines()
        row = next(line for line in lines if line.startswith("pool"))
        assert row.split()[:4] == ["pool", "semaphore", "2/3", "1"]
        holder = next(line for line in lines if line.strip().startswith("holder"))
        assert f"pid {h.pid}" in holder and "2 permits" in holder and "interlock run pool" in holder
        waiter = next(line for line in lines if line.strip().startswith("waiter"))
        assert f"pid {w.pid}" in waiter and "#1" in waiter
        doc = json.loads(cli(env, "status", "--json").stdout)
        (p,) = [x for x in doc["primitives"] if x["name"] == "pool"]
        assert p["capacity"] == 3 and p["available"] == 1
        assert p["holders"][0]["pid"] == h.pid and p["holders"][0]["permits"] == 2
        assert [x["pid"] for x in p["waiters"]] == [w.pid]
        missing = cli(env, "status", "nope")
        assert missing.returncode == 1 and "no primitive" in missing.stderr
    finally:
        stop(h)
        assert w.wait(LONG) == 0


def test_read_write_lock_from_the_command_line(env: dict[str, str]) -> None:
    r1 = hold(env, "cfg", "--read")
    try:
        assert cli(env, "run", "cfg", "--read", "-n", "--", "true").returncode == 0  # readers share
        assert cli(env, "run", "cfg", "--write", "-n", "--", "true").returncode == 75
        assert cli(env, "run", "cfg", "-n", "--", "true").returncode == 75  # an existing rwlock: write
    finally:
        stop(r1)


def test_any_backend_url_and_no_password_is_printed(env: dict[str, str]) -> None:
    assert cli(env, "run", "m", "--url", "memory://cli", "--", "true").returncode == 0
    bad = cli(env, "status", "--url", "file://admin:hunter2@example.com/x")
    assert bad.returncode == 2 and "hunter2" not in bad.stdout + bad.stderr
    bad = cli(env, "run", "x", "--url", "nosuch://admin:hunter2@example.com/", "--", "true")
    assert bad.returncode == 2 and "hunter2" not in bad.stdout + bad.stderr


def test_demo_shows_never_more_than_the_permits() -> None:
    out = subprocess.run([sys.executable, "-m", "interlock", "demo", "--jobs", "6", "--hold", "0.1", "--seed", "1"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "never more than 3 at once: yes" in out.stdout
    holders_row = next(line for line in out.stdout.splitlines() if line.strip().startswith("holders |"))
    assert max(int(c) for c in holders_row.split("|")[1]) <= 3


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie has exited
    except FileNotFoundError:
        return True


def test_a_killed_interlock_takes_its_command_along(env: dict[str, str]) -> None:
    """SIGKILL of `interlock run` (no cleanup possible): the command must not run on without the grant
    (Linux: PR_SET_PDEATHSIG), and the next waiter gets the grant."""
    p = start(env, "run", "solo", "--", sys.executable, "-c",
              "import os, time; print(os.getpid(), flush=True); time.sleep(600)")
    assert p.stdout is not None
    command_pid = int(p.stdout.readline())
    w = start(env, "run", "solo", "--", "true")
    wait_for(lambda: len(status(env, "solo")["waiters"]) == 1, "waiter queued")  # type: ignore[index, arg-type]
    p.kill()
    p.wait(LONG)
    wait_for(lambda: _gone(command_pid), "the killed interlock's command to exit")
    assert w.wait(LONG) == 0


def test_waiting_on_a_terminal_shows_the_place_in_line_and_the_holder(env: dict[str, str]) -> None:
    import pty
    import select

    h = hold(env, "line")
    first = start(env, "run", "line", "--", "true")
    wait_for(lambda: len(status(env, "line")["waiters"]) == 1, "first waiter queued")  # type: ignore[index, arg-type]
    master, slave = pty.openpty()
    import fcntl
    import struct
    import termios

    # A wide terminal: the line is cut to the terminal's width, and the holder's command comes last.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 1000, 0, 0))
    w = subprocess.Popen([sys.executable, "-m", "interlock", "run", "line", "--", "true"], env=env,
                         stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = ""
    poller = select.poll()
    poller.register(master, select.POLLIN)
    try:
        deadline = time.monotonic() + LONG
        while not ("2nd of 2 in line" in seen and f"held by pid {h.pid}" in seen):
            assert time.monotonic() < deadline, f"no waiting line on the terminal; got {seen!r}"
            if poller.poll(500):  # poll, not select: the master may be above FD_SETSIZE
                seen += os.read(master, 4096).decode(errors="replace")
        assert "interlock run line" in seen  # the holder's command line
    finally:
        stop(h)
        assert first.wait(LONG) == 0 and w.wait(LONG) == 0
        os.close(master)

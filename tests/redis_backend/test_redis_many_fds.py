"""A process with more than 1024 open descriptors (FD_SETSIZE): select() refuses such descriptors, so
the backend must not use it anywhere a waiter sleeps."""

from __future__ import annotations

import asyncio
import os
import resource
import threading
import time
from collections.abc import Iterator

import pytest

import interlock
from interlock.testing.servers import RedisServer


@pytest.fixture
def high_descriptors() -> Iterator[None]:
    """Take every descriptor below 1100 for the test's duration. The kernel hands out the lowest free
    descriptor, so the sockets and wake-up pipe of a backend created in the test land above
    FD_SETSIZE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 1200
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
    raised = soft != resource.RLIM_INFINITY and soft < need
    if raised:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    fillers: list[int] = []
    try:
        while not fillers or fillers[-1] < 1100:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        if raised:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def subscribers(server: RedisServer) -> list[str]:
    """Ids of the server's clients in subscriber mode (a reconnect gives a new id)."""
    clients = server.execute("CLIENT", "LIST").decode().splitlines()  # type: ignore[union-attr]
    return [c.split()[0] for c in clients if " sub=0 " not in c and " sub=" in c]


def test_a_waiting_thread_is_woken_when_the_sockets_are_above_fd_setsize(redis_server, prefix, high_descriptors):
    lock = interlock.Lock("fds", url=f"{redis_server.url}?prefix={prefix}&ttl=5")
    holder = lock.acquire(timeout=10)
    got: list[tuple[bool, int]] = []
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            with lock.acquire(timeout=20) as lease:  # (a Lock is owned: release it in this thread)
                got.append((lease.held, lease.token))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    deadline = time.monotonic() + 10
    while len(lock.statistics().waiters) < 1:
        assert not errors, errors
        assert time.monotonic() < deadline, "the waiter never queued"
        time.sleep(0.01)
    holder.release()
    t.join(30)
    assert not errors, errors
    assert got and got[0][0] and got[0][1] > holder.token


def test_a_waiting_task_is_woken_when_the_sockets_are_above_fd_setsize(prefix, high_descriptors):
    """Task waiters cannot read the subscription themselves: the backend's subscription thread reads it
    for them, waiting on the subscription socket and its wake-up pipe together. A reader that fails
    there reconnects over and over (each time polling, so the waiter is still served, late). Its own
    server: the session's has the subscribers of other tests' backends, which may reconnect."""
    with RedisServer() as server:
        lock = interlock.Lock("fds-task", url=f"{server.url}?prefix={prefix}&ttl=60")

        async def main() -> tuple[bool, int, int]:
            holder = await lock.acquire_async(timeout=10)

            async def wait() -> tuple[bool, int]:
                async with await lock.acquire_async(timeout=20) as lease:
                    return lease.held, lease.token

            waiter = asyncio.create_task(wait())
            deadline = time.monotonic() + 10
            while len((await asyncio.to_thread(lock.statistics)).waiters) < 1:
                assert time.monotonic() < deadline, "the waiter never queued"
                await asyncio.sleep(0.01)
            # While it waits, the subscription must stay up on one connection.
            before = subscribers(server)
            assert before, "no subscriber connection"
            await asyncio.sleep(1.0)
            assert subscribers(server) == before, "the subscription reader reconnected"
            await holder.release_async()
            held, token = await waiter
            return held, token, holder.token

        held, token, first = asyncio.run(main())
        assert held and token > first

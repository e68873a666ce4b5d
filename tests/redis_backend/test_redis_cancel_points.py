"""asyncio cancellation at every round trip of acquire_async, extend_async and release_async, both while
the request waits to be sent and after the server ran it (its reply not yet seen). CancelledError
propagates; no grant is left behind beyond one round trip; the next client gets the lock at once."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import interlock
from interlock.backends.redis import RedisBackend
from interlock.backends.redis import _scripts as S
from interlock.testing.servers import RedisServer
from redis_backend.helpers import url_for

pytestmark = [pytest.mark.servers]

LIVE = 30.0


class Hold:
    """Holds the next call of ``script`` before it is sent, or after it ran, until released."""

    def __init__(self, backend: Any, script: Any, when: str) -> None:
        self.t = backend.transport
        self.script, self.when = script, when
        self.reached = threading.Event()
        self.go = threading.Event()
        self.finished = threading.Event()  # the held call has run on the server (the test waits for it)
        self.armed = True
        self._orig = self.t.call

    def __enter__(self) -> Hold:
        def call(script: Any, target: Any, args: tuple[Any, ...]) -> Any:
            hit = self.armed and script is self.script
            if hit:
                self.armed = False
                if self.when == "before":
                    self.reached.set()
                    assert self.go.wait(LIVE)
            try:
                reply = self._orig(script, target, args)
            finally:
                if hit:
                    self.finished.set()
            if hit and self.when == "after":
                self.reached.set()
                assert self.go.wait(LIVE)
            return reply

        self.t.call = call
        return self

    def __exit__(self, *exc: object) -> None:
        self.go.set()
        self.t.call = self._orig


def _idle_soon(lock: interlock.Lock) -> None:
    """No grant left behind beyond one round trip: a non-blocking acquire succeeds within 1 s."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            lock.acquire(blocking=False).release()
            return
        except interlock.WouldBlock:
            assert time.monotonic() < deadline, f"a grant was left behind: {lock.statistics()}"
            time.sleep(0.01)


def _nothing_left(other: interlock.Lock) -> None:
    _idle_soon(other)
    stats = other.statistics()
    assert not stats.holders and not stats.waiters


async def _reached(hold: Hold) -> None:
    while not hold.reached.is_set():
        await asyncio.sleep(0.001)


async def _cancel(task: asyncio.Future[Any]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step", ["acquire", "extend", "release"])
def test_cancel_at_a_round_trip(redis_server: RedisServer, prefix: str, step: str, when: str) -> None:
    url = url_for(redis_server, prefix, ttl=5)
    backend = RedisBackend(url)
    lock = interlock.Lock("cx", backend=backend)
    other = interlock.Lock("cx", backend=RedisBackend(url))
    script = {"acquire": S.ACQUIRE, "extend": S.RENEW, "release": S.RELEASE}[step]

    async def main() -> None:
        lease = None if step == "acquire" else await lock.acquire_async()
        with Hold(backend, script, when) as hold:
            if step == "acquire":
                coro: Any = lock.acquire_async()
            elif step == "extend":
                assert lease is not None
                coro = lease.extend_async()
            else:
                assert lease is not None
                coro = lease.release_async()
            task = asyncio.ensure_future(coro)
            await _reached(hold)
            await _cancel(task)
            hold.go.set()
            # "Beyond one round trip" counts from the moment the cancelled request has run.
            assert await asyncio.to_thread(hold.finished.wait, LIVE)
        if step == "extend":
            assert lease is not None and lease.held  # an interrupted extend changes nothing
            await lease.release_async()

    asyncio.run(main())
    _nothing_left(other)


@pytest.mark.parametrize("step", ["acquire", "release"])
def test_cancel_while_the_request_is_queued_for_a_connection(redis_server: RedisServer, prefix: str,
                                                             step: str) -> None:
    """max_connections=1 and that connection busy: the request waits in the process's queue when it is
    cancelled. The release must still happen (a cancelled release is not a leaked lock), and an acquire
    must leave no grant."""
    url = url_for(redis_server, prefix, ttl=5, max_connections=1)
    backend = RedisBackend(url)
    lock = interlock.Lock("q", backend=backend)
    busy = interlock.Lock("busy", backend=backend)
    other = interlock.Lock("q", backend=RedisBackend(url))

    async def main() -> None:
        lease = None if step == "acquire" else await lock.acquire_async()
        blocker = await busy.acquire_async()
        queued = Hold(backend, S.ACQUIRE if lease is None else S.RELEASE, "after")
        queued.go.set()  # not held: only tells when the queued request has run
        with queued, Hold(backend, S.RENEW, "before") as hold:
            occupy = asyncio.ensure_future(blocker.extend_async())  # holds the only connection
            await _reached(hold)
            task = asyncio.ensure_future(lock.acquire_async() if lease is None else lease.release_async())
            # Wait until the request sits in the I/O queue behind the busy connection.
            while backend._io()._work_queue.qsize() < 1:
                assert not task.done()
                await asyncio.sleep(0.001)
            assert not task.done()
            await _cancel(task)
            hold.go.set()
            await occupy
            assert await asyncio.to_thread(queued.finished.wait, LIVE), "the cancelled request never ran"
        await blocker.release_async()

    asyncio.run(main())
    _nothing_left(other)


@pytest.mark.parametrize("when", ["before", "after"])
def test_interrupted_release_finishes_in_the_background(redis_server: RedisServer, prefix: str,
                                                         when: str) -> None:
    """KeyboardInterrupt inside a thread's release(), before the request is sent or after the server
    ran it: the exception propagates, and the lock is free within one round trip either way."""
    url = url_for(redis_server, prefix, ttl=5)
    backend = RedisBackend(url)
    lock = interlock.Lock("kbi", backend=backend)
    other = interlock.Lock("kbi", backend=RedisBackend(url))
    lease = lock.acquire()
    orig = backend.transport.call
    fired = []

    def call(script: Any, target: Any, args: tuple[Any, ...]) -> Any:
        if script is S.RELEASE and not fired:
            fired.append(when)
            if when == "before":
                raise KeyboardInterrupt
            orig(script, target, args)
            raise KeyboardInterrupt
        return orig(script, target, args)

    backend.transport.call = call
    try:
        with pytest.raises(KeyboardInterrupt):
            lease.release()
    finally:
        backend.transport.call = orig
    assert fired == [when]
    _idle_soon(other)
    lease.release()  # idempotent afterwards
    assert not other.statistics().holders

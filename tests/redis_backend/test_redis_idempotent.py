"""Retries are idempotent, and connections stay bounded.

A reply lost after the server ran the script (a dropped connection) makes the client retry with the
same request id: the retry must return the same grant (never a second one) or find the release already
done (never return permits twice). Injected deterministically: the transport runs the script, then
reports the reply as lost once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import interlock
from interlock.backends.redis import _scripts as S
from interlock.backends.redis._transport import Transient
from interlock.testing.servers import RedisServer
from redis_backend.helpers import url_for

pytestmark = [pytest.mark.servers]

LIVE = 30.0


class LoseReply:
    """The next call of ``script`` reaches the server and runs, but its reply is lost (once)."""

    def __init__(self, backend: Any, script: Any) -> None:
        self.transport = backend.transport
        self.script = script
        self.lost = 0
        self._orig: Any = None

    def __enter__(self) -> LoseReply:
        self._orig = self.transport.call

        def call(script: Any, target: Any, args: tuple[Any, ...]) -> Any:
            reply = self._orig(script, target, args)
            if script is self.script and not self.lost:
                self.lost += 1
                raise Transient("connection reset (injected after the script ran)")
            return reply

        self.transport.call = call
        return self

    def __exit__(self, *exc: object) -> None:
        self.transport.call = self._orig


@pytest.fixture
def url(redis_server: RedisServer, prefix: str) -> Iterator[str]:
    yield url_for(redis_server, prefix, ttl=5)


@pytest.mark.parametrize("blocking", [True, False])
def test_acquire_whose_reply_was_lost_is_granted_once(url: str, blocking: bool) -> None:
    sem = interlock.Semaphore("once", 3, url=url)
    backend = interlock.connect(url)
    with LoseReply(backend, S.ACQUIRE) as lose:
        lease = sem.acquire(2, blocking=blocking)
    assert lose.lost == 1
    stats = sem.statistics()
    assert [(h.token, h.permits) for h in stats.holders] == [(lease.token, 2)], "granted twice"
    assert stats.available == 1
    lease.release()
    assert sem.statistics().available == 3


def test_queued_acquire_whose_reply_was_lost_stays_queued_once(url: str) -> None:
    sem = interlock.Semaphore("queued", 1, url=url)
    backend = interlock.connect(url)
    gate = sem.acquire()
    got: list[interlock.Lease] = []
    with LoseReply(backend, S.ACQUIRE) as lose:
        t = threading.Thread(target=lambda: got.append(sem.acquire(timeout=LIVE)), daemon=True)
        t.start()
        for _ in range(int(LIVE / 0.01)):
            if lose.lost and len(sem.statistics().waiters) == 1:
                break
            threading.Event().wait(0.01)
    assert len(sem.statistics().waiters) == 1, "the retried request was queued twice (or not at all)"
    gate.release()
    t.join(LIVE)
    assert got and [h.token for h in sem.statistics().holders] == [got[0].token]
    got[0].release()
    stats = sem.statistics()
    assert stats.available == 1 and not stats.waiters


def test_release_whose_reply_was_lost_returns_permits_once(url: str) -> None:
    sem = interlock.Semaphore("rel", 3, url=url)
    backend = interlock.connect(url)
    other = sem.acquire(1)
    lease = sem.acquire(2)
    with LoseReply(backend, S.RELEASE) as lose:
        lease.release()  # the retry finds it released already: done, not LeaseLost
    assert lose.lost == 1
    assert sem.statistics().available == 2, "permits returned twice or not at all"
    other.release()
    assert sem.statistics().available == 3


def test_downgrade_whose_reply_was_lost_happens_once(url: str) -> None:
    rw = interlock.RWLock("dg", url=url)
    backend = interlock.connect(url)
    lease = rw.acquire_write()
    with LoseReply(backend, S.RELEASE) as lose:
        lease.downgrade()  # the retry downgrades a shared lease again: no change
    assert lose.lost == 1 and lease.held and lease.mode == "shared"
    (holder,) = rw.statistics().holders
    assert (holder.token, holder.permits, holder.mode) == (lease.token, 1, "shared")
    reader = rw.acquire_read(blocking=False)  # readers get in, writers do not
    with pytest.raises(interlock.WouldBlock):
        rw.acquire_write(blocking=False)
    reader.release()
    lease.release()
    stats = rw.statistics()
    assert not stats.holders and stats.available == stats.capacity


def test_connections_stay_bounded_however_many_wait(redis_server: RedisServer, prefix: str) -> None:
    """60 threads and 60 tasks of one process queue on one semaphore: the server sees at most
    max_connections + 1 (the subscription) connections from that process."""
    url = url_for(redis_server, prefix, ttl=5, max_connections=4)
    sem = interlock.Semaphore("crowd", 1, url=url)
    admin = redis.Redis.from_url(redis_server.url)
    base = len(admin.client_list())
    gate = sem.acquire()
    served: list[int] = []
    mx = threading.Lock()

    def thread_waiter() -> None:
        lease = sem.acquire(timeout=LIVE)
        with mx:
            served.append(lease.token)
        lease.release()

    async def task_waiters(n: int) -> None:
        async def one() -> None:
            lease = await sem.acquire_async(timeout=LIVE)
            with mx:
                served.append(lease.token)
            await lease.release_async()

        await asyncio.gather(*(one() for _ in range(n)))

    threads = [threading.Thread(target=thread_waiter, daemon=True) for _ in range(60)]
    threads.append(threading.Thread(target=lambda: asyncio.run(task_waiters(60)), daemon=True))
    for t in threads:
        t.start()
    peak = 0
    for _ in range(int(LIVE / 0.01)):
        peak = max(peak, len(admin.client_list()) - base)
        if len(sem.statistics().waiters) == 120:
            break
        threading.Event().wait(0.01)
    assert len(sem.statistics().waiters) == 120
    peak = max(peak, len(admin.client_list()) - base)
    gate.release()
    for t in threads:
        t.join(LIVE)
        peak = max(peak, len(admin.client_list()) - base)
    assert len(served) == 120 and sorted(served) == sorted(set(served))
    assert peak <= 4 + 1, f"{peak} connections for one process (max_connections=4, plus the subscription)"
    admin.close()


def test_extend_learns_at_once_that_the_server_lost_the_grant(url: str, redis_server: RedisServer) -> None:
    """extend() is a renewal now: when the server lost the grant (here: its keys were deleted, as after
    a restart without persistence), it raises LeaseLost and fires on_lost, without waiting for the
    background renewal."""
    lock = interlock.Lock("ext", url=url)
    lease = lock.acquire()
    told = threading.Event()
    lease.on_lost(lambda _lease: told.set())
    admin = redis.Redis.from_url(redis_server.url)
    try:
        keys = list(admin.scan_iter(match=url.split("prefix=")[1].split("&", maxsplit=1)[0] + "*"))
        assert keys and admin.delete(*keys) == len(keys)
    finally:
        admin.close()
    with pytest.raises(interlock.LeaseLost, match="no longer had it"):
        lease.extend()
    assert told.is_set() and not lease.held
    again = lock.acquire(timeout=LIVE)  # the name is usable again, with a higher token
    assert again.token > lease.token
    again.release()

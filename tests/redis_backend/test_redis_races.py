"""Races between a waiter and the maintenance thread (renewals, polls, re-queues), forced in a chosen
order by holding one script call at a gate. Each test fails on the interleaving it names if the
backend gets it wrong; none depends on timing luck."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import interlock
from interlock.backends.redis import _scripts as S
from interlock.testing.servers import RedisServer
from redis_backend.helpers import url_for

pytestmark = [pytest.mark.servers]

LIVE = 30.0  # liveness bound (s), never a latency assertion


class Gate:
    """Wraps a backend transport's ``call``: the calls ``match`` selects block at the gate, before
    (``where="before"``) or after (``"after"``) they reach the server, until ``open()``."""

    def __init__(self, backend: Any, match: Callable[[Any, tuple[Any, ...]], bool], where: str) -> None:
        self.transport = backend.transport
        self.match = match
        self.where = where
        self.reached = threading.Event()
        self._open = threading.Event()
        self._orig: Any = None

    def __enter__(self) -> Gate:
        self._orig = self.transport.call  # (gates stack: the inner one wraps the outer's call)
        def call(script: Any, target: Any, args: tuple[Any, ...]) -> Any:
            if not self.match(script, args):
                return self._orig(script, target, args)
            if self.where == "before":
                self.reached.set()
                assert self._open.wait(LIVE), "the gate was never opened"
                return self._orig(script, target, args)
            reply = self._orig(script, target, args)
            self.reached.set()
            assert self._open.wait(LIVE), "the gate was never opened"
            return reply

        self.transport.call = call
        return self

    def open(self) -> None:
        self._open.set()

    def __exit__(self, *exc: object) -> None:
        self._open.set()
        self.transport.call = self._orig


@pytest.fixture
def url(redis_server: RedisServer, prefix: str) -> Iterator[str]:
    yield url_for(redis_server, prefix, ttl=5)


def _cell_ids(backend: Any) -> list[str]:
    with backend._mx:
        return list(backend._cells)


def _in_flight_ids(backend: Any) -> list[str]:
    with backend._mx:
        return list(backend._pending)


@pytest.mark.parametrize("flavour", ["thread", "task"])
def test_renew_and_poll_while_the_acquire_is_in_flight(url: str, flavour: str) -> None:
    """A waiter's request is registered before the server has it (the grant message may overtake the
    reply). A renewal or poll in that window must not take it for a request the server forgot and queue
    it again: the re-queue raced with the grant in the reply and then withdrew it, so the holder lost a
    lease it had just been given (seen as an intermittent LeaseLost)."""
    sem = interlock.Semaphore("inflight", 1, url=url)
    backend = interlock.connect(url)
    ch = backend.channel("inflight", "semaphore", 1, True)
    first: list[bool] = []

    def first_acquire(script: Any, args: tuple[Any, ...]) -> bool:
        if script is S.ACQUIRE and not first:
            first.append(True)
            return True
        return False

    result: list[object] = []

    def acquirer() -> None:
        try:
            if flavour == "thread":
                result.append(sem.acquire(timeout=LIVE))
            else:
                result.append(asyncio.run(sem.acquire_async(timeout=LIVE)))
        except BaseException as exc:  # reported below
            result.append(exc)

    def requeue(script: Any, args: tuple[Any, ...]) -> bool:  # a later ACQUIRE of the same request
        return script is S.ACQUIRE and bool(first) and args[0] == rids[0]

    rids: list[str] = []
    with Gate(backend, first_acquire, "before") as sent, Gate(backend, requeue, "after") as again:
        t = threading.Thread(target=acquirer, daemon=True)
        t.start()
        assert sent.reached.wait(LIVE)
        rids.extend(_in_flight_ids(backend))
        assert len(rids) == 1, "the request was not registered before it was sent"
        assert not _cell_ids(backend), "a request in flight must not be visible to renewals and polls"
        # What the maintenance thread may do in this window: renew, then poll (a wrong poll queues
        # the request again; the server grants it; its reply is held at the gate).
        backend._renew_all()
        poller = threading.Thread(target=backend._poll, args=(ch,), daemon=True)
        poller.start()
        while poller.is_alive() and not again.reached.is_set():
            poller.join(0.005)
        sent.open()  # the first ACQUIRE: granted (or the same grant, if a re-queue made it)
        t.join(LIVE)
        again.open()  # a re-queue that now finds its waiter gone must not withdraw the grant
        poller.join(LIVE)
    assert not t.is_alive()
    lease = result[0]
    assert isinstance(lease, interlock.Lease), lease
    backend._renew_all()
    backend._poll(ch)
    stats = sem.statistics()
    assert [h.token for h in stats.holders] == [lease.token], "the server no longer has the grant"
    lease.release()  # raised LeaseLost when the race withdrew the grant
    assert sem.statistics().available == 1


def _forget_on_server(redis_server: RedisServer, target: Any, rid: str) -> None:
    """Make the server forget one queued request (as if it expired while its process was stopped)."""
    m, q, x = target.keys[:3]
    r = redis.Redis.from_url(redis_server.url)
    try:
        assert r.hdel(m, "w" + rid) == 1
        r.zrem(q, rid)
        r.zrem(x, rid)
    finally:
        r.close()


def test_timeout_while_a_requeue_is_in_flight_keeps_the_grant(url: str, redis_server: RedisServer) -> None:
    """The server forgot a queued request; the poll queues it again and the server grants it at once;
    before the poll has seen the reply, the waiter times out. The waiter's cancel must reach the server
    after the re-queue and keep that grant (a timeout that raced with a grant returns the grant), and
    nothing may withdraw it afterwards."""
    sem = interlock.Semaphore("requeue", 1, url=url)
    backend = interlock.connect(url)
    ch = backend.channel("requeue", "semaphore", 1, True)
    holder = sem.acquire()
    result: list[object] = []

    def waiter() -> None:
        try:
            result.append(sem.acquire(timeout=3.0))
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    deadline_wait = threading.Event()
    for _ in range(int(LIVE / 0.005)):  # queued on the server, and the waiter has read that reply
        if len(sem.statistics().waiters) == 1 and _cell_ids(backend):
            break
        deadline_wait.wait(0.005)
    [rid] = _cell_ids(backend)
    cell = backend._cells[rid]
    _forget_on_server(redis_server, ch.target, rid)
    holder.release()  # nobody queued on the server: the permit is free

    def requeue_of(script: Any, args: tuple[Any, ...]) -> bool:
        return script is S.ACQUIRE and args[0] == rid

    with Gate(backend, requeue_of, "after") as gate:
        poller = threading.Thread(target=backend._poll, args=(ch,), daemon=True)
        poller.start()
        assert gate.reached.wait(LIVE), "the poll did not queue the forgotten request again"
        assert not result, f"the waiter finished before its timeout: {result}"
        # The waiter times out now, while the re-queue's reply is held at the gate.
        for _ in range(int(LIVE / 0.005)):
            if cell.state != 0:
                break
            deadline_wait.wait(0.005)
        gate.open()
        poller.join(LIVE)
        t.join(LIVE)
    assert not t.is_alive()
    lease = result[0]
    assert isinstance(lease, interlock.Lease), f"the grant made by the re-queue was not kept: {lease!r}"
    backend._renew_all()
    assert [h.token for h in sem.statistics().holders] == [lease.token], "the kept grant was withdrawn"
    lease.release()
    stats = sem.statistics()
    assert stats.available == 1 and not stats.waiters and not stats.holders


def test_grant_message_before_the_acquire_reply_is_kept(url: str) -> None:
    """The server queues a request and grants it (publishing the grant) before the waiter has read
    its ACQUIRE reply. The waiter has no cell yet (see _Cell); the subscription's reader must keep the
    grant for it, and the waiter must return it (not wait for a poll, nor leave it orphaned)."""
    a = interlock.Lock("early-a", url=url)
    b = interlock.Lock("early-b", url=url)
    backend = interlock.connect(url)
    holder_a, holder_b = a.acquire(), b.acquire()
    results: dict[str, object] = {}
    got = {"w1": threading.Event(), "w2": threading.Event()}
    finish = threading.Event()

    def run(name: str, lock: interlock.Lock) -> None:
        try:
            results[name] = lock.acquire(timeout=LIVE)
        except BaseException as exc:
            results[name] = exc
        got[name].set()
        finish.wait(LIVE)  # stay alive: a thread that ends returns what it holds

    # w1 waits on b and so reads the subscription for the process.
    w1 = threading.Thread(target=run, args=("w1", b), name="w1", daemon=True)
    w1.start()
    for _ in range(int(LIVE / 0.005)):
        if _cell_ids(backend) and backend._leader is not None:
            break
        finish.wait(0.005)
    assert _cell_ids(backend) and backend._leader is not None

    def w2_acquire(script: Any, args: tuple[Any, ...]) -> bool:
        return script is S.ACQUIRE and threading.current_thread().name == "w2"

    try:
        with Gate(backend, w2_acquire, "after") as gate:
            w2 = threading.Thread(target=run, args=("w2", a), name="w2", daemon=True)
            w2.start()
            assert gate.reached.wait(LIVE)  # the server queued w2's request; its reply is held
            [rid] = _in_flight_ids(backend)
            holder_a.release()  # grants w2 and publishes the grant, which w1 reads
            for _ in range(int(LIVE / 0.005)):
                with backend._mx:
                    if rid in backend._early:
                        break
                finish.wait(0.005)
            with backend._mx:
                assert rid in backend._early, "the grant message was dropped"
            gate.open()
            assert got["w2"].wait(LIVE)
        lease = results["w2"]
        assert isinstance(lease, interlock.Lease), lease
        assert lease.token > holder_a.token
        with backend._mx:
            assert not backend._early and not backend._pending
        assert [h.token for h in a.statistics().holders] == [lease.token]
        lease.release()
        holder_b.release()
        assert got["w1"].wait(LIVE)
        lease_b = results["w1"]
        assert isinstance(lease_b, interlock.Lease), lease_b
        lease_b.release()
    finally:
        finish.set()

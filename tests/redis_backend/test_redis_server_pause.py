"""The Redis server stops answering (SIGSTOP) for twice the lease TTL while a lock is held and a waiter
queues, then resumes. No call hangs; the holder is told its lease is lost by its own deadline (it cannot
renew); after the resume the waiter is granted with a higher token and learns its predecessor died; the
stale holder's release raises LeaseLost without disturbing it; an acquire that gave up during the pause
leaves nothing behind beyond one TTL."""

from __future__ import annotations

import threading
import time

import pytest

import interlock
from interlock.backends.redis import RedisBackend
from interlock.testing.servers import RedisServer
from redis_backend.helpers import url_for

pytestmark = [pytest.mark.servers, pytest.mark.fault]

LIVE = 30.0  # liveness bound (s): "returns at all", never a latency assertion
TTL = 2.0


def test_paused_server(prefix: str) -> None:
    with RedisServer() as srv:
        url = url_for(srv, prefix, ttl=TTL)
        a, b, c = (interlock.Lock("paused", backend=RedisBackend(url)) for _ in range(3))
        la = a.acquire()
        lost = threading.Event()
        la.on_lost(lambda _lease: lost.set())
        got: list[interlock.Lease] = []
        waiter = threading.Thread(target=lambda: got.append(b.acquire(timeout=LIVE)), daemon=True)
        waiter.start()
        deadline = time.monotonic() + LIVE
        while len(a.statistics().waiters) != 1:
            assert time.monotonic() < deadline, "the waiter never queued"
            time.sleep(0.01)

        with srv.paused():
            paused_at = time.monotonic()
            t0 = time.monotonic()
            with pytest.raises((interlock.BackendError, interlock.AcquireTimeout)):
                c.acquire(timeout=0.5)
            assert time.monotonic() - t0 < LIVE, "an acquire hung on a stopped server"
            assert lost.wait(LIVE), "the holder was not told that its lease could not be renewed"
            assert not la.held and la.lost
            # Stay stopped for 2 x TTL: the server's own clock runs on, so it expires the lease.
            time.sleep(max(0.0, paused_at + 2 * TTL - time.monotonic()))

        waiter.join(LIVE)
        assert not waiter.is_alive() and got, "the waiter was never granted after the resume"
        lb = got[0]
        assert lb.token > la.token and lb.previous_owner_died
        with pytest.raises(interlock.LeaseLost):
            la.release()
        assert [h.token for h in b.statistics().holders] == [lb.token]
        lb.release()
        # c's abandoned request (sent into the stopped server) is withdrawn or expires within one TTL.
        deadline = time.monotonic() + LIVE
        while True:
            s = a.statistics()
            if not s.holders and not s.waiters and s.available == 1:
                break
            assert time.monotonic() < deadline, f"left behind after the pause: {s}"
            time.sleep(0.05)
        final = c.acquire(timeout=LIVE)
        assert final.token > lb.token
        final.release()

"""The holder's process is alive but its renewer cannot run (a thread keeps the GIL: here a busy loop
with a huge switch interval) for 1.5 x TTL. The lease must come out of the stall reported lost, never
silently extended: ``held`` is false from its deadline on, on_lost fires, the release raises LeaseLost,
and the waiter that got the lock in the meantime keeps it."""

from __future__ import annotations

import sys
import threading
import time

import pytest

import interlock
from interlock.backends.redis import RedisBackend
from interlock.testing.servers import RedisServer
from redis_backend.helpers import url_for

pytestmark = [pytest.mark.servers, pytest.mark.fault]

LIVE = 30.0
TTL = 1.0


def test_starved_renewer_reports_the_lease_lost(redis_server: RedisServer, prefix: str) -> None:
    url = url_for(redis_server, prefix, ttl=TTL)
    holder = interlock.Lock("starved", backend=RedisBackend(url))
    lease = holder.acquire()
    assert lease.deadline is not None
    lost = threading.Event()
    lease.on_lost(lambda _lease: lost.set())
    old = sys.getswitchinterval()
    sys.setswitchinterval(100.0)  # no other thread of this process runs until this one blocks
    try:
        end = time.monotonic() + 1.5 * TTL
        while time.monotonic() < end:
            pass
        held_after_stall = lease.held  # read before anything can block and let the renewer run
    finally:
        sys.setswitchinterval(old)
    assert not held_after_stall, "held past its deadline: the lease was believed without a renewal"
    # Meanwhile the server expired it; another client gets the lock with a higher token.
    other = interlock.Lock("starved", backend=RedisBackend(url))
    nxt = other.acquire(timeout=LIVE)
    assert nxt.token > lease.token and nxt.previous_owner_died
    assert lost.wait(LIVE) and lease.lost
    assert not lease.held  # lost is final: a renewal after the stall must not revive it
    with pytest.raises(interlock.LeaseLost):
        lease.release()
    assert [h.token for h in other.statistics().holders] == [nxt.token]
    nxt.release()

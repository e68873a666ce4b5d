"""An asymmetric partition: the holder's requests still reach the server, but every reply is lost (the
fault proxy drops only the server -> client direction). Its renewals keep arriving, yet it cannot know:
it must report the lease lost by its own deadline, and only then may another client be granted; no call
hangs, and after the heal it works again with higher tokens."""

from __future__ import annotations

import time

import pytest

import interlock
from interlock.testing.proxy import FaultProxy
from interlock.testing.servers import RedisServer
from redis_backend.helpers import url_for

pytestmark = [pytest.mark.servers, pytest.mark.fault]

TTL = 2.0
LIVE = 30.0


def test_replies_lost_requests_delivered(redis_server: RedisServer, prefix: str) -> None:
    with FaultProxy(redis_server.address) as proxy:
        cut = interlock.Lock("asym", url=f"redis://{proxy.host}:{proxy.port}/0?prefix={prefix}&ttl={TTL}")
        other = interlock.Lock("asym", url=url_for(redis_server, prefix, TTL))
        lease = cut.acquire()
        lost_at: list[float] = []
        lease.on_lost(lambda _lease: lost_at.append(time.monotonic()))
        with proxy.blackhole("down"):
            successor = other.acquire(timeout=LIVE)
            got_at = time.monotonic()
            assert successor.token > lease.token
            assert lost_at and lost_at[0] <= got_at, "another client was granted before the holder knew"
            assert not lease.held
            with pytest.raises(interlock.LeaseLost):
                lease.release()
            t0 = time.monotonic()
            with pytest.raises((interlock.BackendError, interlock.AcquireTimeout)):
                cut.acquire(timeout=0.5)  # its request arrives, its reply never does: it gives up
            assert time.monotonic() - t0 < LIVE
            assert [h.token for h in other.statistics().holders] == [successor.token]
            successor.release()
        # Healed: the request it gave up on was withdrawn (or expires); it works again.
        again = cut.acquire(timeout=LIVE)
        assert again.token > successor.token
        again.release()
        assert not other.statistics().holders

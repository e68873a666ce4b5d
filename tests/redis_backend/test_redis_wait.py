"""``?wait_replicas=N``: a grant is kept only once N replicas acknowledged it (``WAIT``)."""

from __future__ import annotations

import time

import pytest

import interlock
from interlock.testing.servers import RedisServer

pytestmark = [pytest.mark.servers, pytest.mark.fault]


def test_wait_replicas_keeps_or_gives_back_the_grant(prefix):
    with RedisServer() as primary, RedisServer(config={"replicaof": f"{primary.host} {primary.port}"}) as replica:
        deadline = time.monotonic() + 20
        while b"master_link_status:up" not in replica.execute("INFO", "replication"):  # type: ignore[operator]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # A live replica gets a generous timeout (a loaded machine once took > 0.3 s to ack); a
        # paused one cannot ack at all, so the short timeout only bounds the test's duration.
        lock = interlock.Lock("w", url=f"{primary.url}?prefix={prefix}&ttl=2&wait_replicas=1&wait_timeout=10")
        short = interlock.Lock("w", url=f"{primary.url}?prefix={prefix}&ttl=2&wait_replicas=1&wait_timeout=0.3")
        with lock.acquire(timeout=5) as lease:
            assert lease.held
        with replica.paused():
            with pytest.raises(interlock.BackendError) as ei:
                short.acquire(timeout=5)
            assert "replica" in str(ei.value)
        assert lock.statistics().holders == ()  # the unreplicated grant was given back
        with lock.acquire(timeout=5):
            pass

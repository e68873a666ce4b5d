"""Fault tests: killed and stopped holders and waiters, server restarts, dropped connections, a cut-off
client. Invariants are checked on recorded histories; the only timing assertions are generous
liveness bounds (TTL + 1 s)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

import interlock
from interlock.testing.fenced import FencedStore
from interlock.testing.history import Recorder, check, check_liveness
from interlock.testing.proxy import FaultProxy
from interlock.testing.servers import RedisServer
from redis_backend.helpers import Child, url_for

pytestmark = [pytest.mark.servers, pytest.mark.fault]

TTL = 1.0


def _evalsha_calls(srv: RedisServer) -> int:
    for line in srv.execute("INFO", "commandstats").decode().splitlines():  # type: ignore[union-attr]
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def test_sigkilled_holder_permits_reach_the_waiter_within_ttl(redis_server, prefix, children, seed, tmp_path):
    url = url_for(redis_server, prefix, TTL)
    holder = Child("hold", "k", url, IL_HISTORY=str(tmp_path))
    children.append(holder)
    token1 = int(holder.expect("ACQUIRED")[0])
    rec = Recorder(tmp_path)
    lock = interlock.Lock("k", url=url)
    got: list[interlock.Lease] = []
    granted_at: list[float] = []

    def waiter() -> None:
        with rec.acquire("waiter", "k") as op:
            lease = lock.acquire(timeout=30)
            op.token = lease.token
        granted_at.append(time.monotonic())
        got.append(lease)

    t = threading.Thread(target=waiter)
    t.start()
    while not interlock.status(url, "k")[0].waiters:
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0.0, TTL))  # kill at a random phase of the lease
    calls_before = _evalsha_calls(redis_server)
    killed_at = time.monotonic()
    os.kill(holder.pid, signal.SIGKILL)
    t.join(10)
    assert got, "the waiter was never served"
    lease = got[0]
    assert granted_at[0] - killed_at <= TTL + 1.0
    assert lease.previous_owner_died
    assert lease.token > token1
    # The waiter did not poll: while it waited, this process sent its renewals and one re-check at the
    # holder's expiry (a 0.1 s poll would be >= 10 per second).
    assert _evalsha_calls(redis_server) - calls_before <= 3 + 5 * (granted_at[0] - killed_at) / TTL
    lease.release()
    assert check(rec.events(), capacity=1, ttl=TTL) == []


def test_sigkilled_queued_waiter_leaves_the_queue_within_ttl(redis_server, prefix, children):
    url = url_for(redis_server, prefix, TTL)
    lock = interlock.Lock("q", url=url)
    lease = lock.acquire()
    child = Child("wait", "q", url)
    children.append(child)
    child.expect("READY")
    deadline = time.monotonic() + 10
    while not [w for w in lock.statistics().waiters if w.pid == child.pid]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    killed = time.monotonic()
    while lock.statistics().waiters:
        assert time.monotonic() - killed <= TTL + 1.0, "a dead waiter stayed queued"
        time.sleep(0.02)
    lease.release()
    with lock.acquire(timeout=5) as again:  # nobody dead is ahead of us
        assert again.held


def test_stopped_holder_is_fenced_off_and_its_release_raises(redis_server, prefix, children):
    url = url_for(redis_server, prefix, TTL)
    store = FencedStore()
    with store.serve() as server:
        host, port = server.address
        holder = Child("hold", "f", url, IL_FENCED=f"{host}:{port}")
        children.append(holder)
        stale = int(holder.expect("ACQUIRED")[0])
        os.kill(holder.pid, signal.SIGSTOP)
        try:
            lock = interlock.Lock("f", url=url)
            with lock.acquire(timeout=TTL + 5) as lease:  # granted once the stopped holder's lease ran out
                assert lease.token > stale
                assert lease.previous_owner_died
                assert store.write("f", lease.token, "successor")
        finally:
            os.kill(holder.pid, signal.SIGCONT)
        holder.send("go")
        assert holder.expect("WRITE") == ["False"]  # the fenced store rejects the stale token
        assert holder.expect("HELD") == ["False"]
        assert holder.expect("RELEASE-ERROR") == ["LeaseLost"]
        assert store.read("f") == ["successor"]


def test_restart_without_persistence_never_repeats_tokens_and_holders_learn(prefix):
    with RedisServer() as srv:
        url = url_for(srv, prefix, TTL)
        lock = interlock.Lock("r", url=url)
        sem = interlock.Semaphore("s", 2, url=url)
        a = lock.acquire()
        b = sem.acquire()
        lost = threading.Event()
        a.on_lost(lambda _l: lost.set())
        before = max(a.token, b.token)
        srv.restart()  # every key is gone
        assert lost.wait(TTL + 1.0), "the holder was not told its grant vanished"
        assert not a.held
        with pytest.raises(interlock.LeaseLost):
            a.release()
        with pytest.raises(interlock.LeaseLost):
            b.release()
        with lock.acquire(timeout=5) as c:
            assert c.token > before
        with sem.acquire(2, timeout=5) as d:
            assert d.token > before


def test_client_kill_at_random_points_keeps_exclusion(redis_server, prefix, seed):
    url = url_for(redis_server, prefix, 2.0)
    rng = random.Random(seed)
    rec = Recorder()
    lock = interlock.Lock("ck", url=url)
    stop = time.monotonic() + 3.0
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        me = f"w{i}"
        while time.monotonic() < stop:
            try:
                with rec.acquire(me, "ck") as op:
                    lease = lock.acquire(timeout=10)
                    op.token = lease.token
                time.sleep(0.001)
                with rec.release(me, "ck", token=lease.token):
                    lease.release()
            except interlock.LeaseLost:
                rec.lost(me, "ck")
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    kills = 0
    while time.monotonic() < stop:
        time.sleep(rng.uniform(0.02, 0.2))
        kind = rng.choice(["normal", "pubsub"])
        kills += int(srv_kill(redis_server, kind))
    for t in threads:
        t.join(30)
    assert not errors, errors
    history = rec.events()
    assert check(history, capacity=1, ttl=2.0) == []
    assert check_liveness(history) == []
    assert kills > 0
    assert sum(1 for e in history if e.op == "acquire" and e.ok) > 10


def srv_kill(srv: RedisServer, kind: str) -> int:
    reply = srv.execute("CLIENT", "KILL", "TYPE", kind, "SKIPME", "yes")
    return int(reply) if isinstance(reply, int) else 0


def test_blackholed_client_loses_its_lease_and_others_proceed(redis_server, prefix):
    with FaultProxy(redis_server.address) as proxy:
        cut = interlock.Lock("bh", url=f"redis://{proxy.host}:{proxy.port}/0?prefix={prefix}&ttl={TTL}")
        other = interlock.Lock("bh", url=url_for(redis_server, prefix, TTL))
        lease = cut.acquire()
        lost_at: list[float] = []
        lease.on_lost(lambda _l: lost_at.append(time.monotonic()))
        with proxy.blackhole():
            cut_at = time.monotonic()
            with other.acquire(timeout=TTL + 5) as successor:
                got_at = time.monotonic()
                assert successor.token > lease.token
            assert lost_at and lost_at[0] <= got_at, "the cut-off holder learnt of its loss too late"
            assert got_at - cut_at <= TTL + 1.0
            assert not lease.held
        with pytest.raises(interlock.LeaseLost):
            lease.release()
        with cut.acquire(timeout=TTL + 5) as again:  # healed: it works again
            assert again.token > successor.token


def test_delayed_client_still_excludes(redis_server, prefix, seed):
    rng = random.Random(seed)
    rec = Recorder()
    with FaultProxy(redis_server.address) as proxy:
        slow = interlock.Lock("dl", url=f"redis://{proxy.host}:{proxy.port}/0?prefix={prefix}&ttl=2")
        fast = interlock.Lock("dl", url=url_for(redis_server, prefix, 2.0))
        with proxy.delay(0.02):
            def run(lock: interlock.Lock, me: str) -> None:
                for _ in range(15):
                    with rec.acquire(me, "dl") as op:
                        lease = lock.acquire(timeout=20)
                        op.token = lease.token
                    time.sleep(rng.uniform(0, 0.002))
                    with rec.release(me, "dl", token=lease.token):
                        lease.release()

            ts = [threading.Thread(target=run, args=(lk, n)) for lk, n in ((slow, "slow"), (fast, "fast"))]
            for t in ts:
                t.start()
            for t in ts:
                t.join(60)
    history = rec.events()
    assert check(history, capacity=1, ttl=2.0) == []
    assert check_liveness(history) == []

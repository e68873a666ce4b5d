"""Contract: Lock and RLock, on every backend, driven by threads, tasks, or both."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Awaitable, Callable

import pytest

import interlock
from contract.helpers import LONG, SHORT, Actors, assert_idle, n_holders, unique, wait_until, wait_waiters


def _lock(url: str, cls: type[interlock.Lock] = interlock.Lock) -> interlock.Lock:
    return cls(unique("lock"), url=url)


def test_grant_and_release(backend_url: str, actors: Actors) -> None:
    lock = _lock(backend_url)
    a = actors.new()
    assert not lock.locked()
    lease = a.acquire(lock).result(LONG)
    assert isinstance(lease, interlock.Lease)
    assert lease.held and lease.name == lock.name
    assert lease.permits == 1 and lease.mode == "exclusive"
    assert isinstance(lease.token, int) and not isinstance(lease.token, bool)
    assert lease.previous_owner_died is False
    lease.ensure_held()
    assert lock.locked()
    s = lock.statistics()
    assert s.kind == "lock" and s.capacity == 1 and s.available == 0
    assert [h.token for h in s.holders] == [lease.token]
    a.release(lease).result(LONG)
    assert not lease.held
    with pytest.raises(interlock.LeaseLost):
        lease.ensure_held()
    a.release(lease).result(LONG)  # idempotent
    assert not lock.locked()
    assert_idle(lock)


def test_same_name_is_same_lock(backend_url: str, actors: Actors) -> None:
    name = unique("lock")
    l1 = interlock.Lock(name, url=backend_url)
    l2 = interlock.Lock(name, url=backend_url)
    other = interlock.Lock(name + "-other", url=backend_url)
    a, b = actors.many(2)
    lease = a.acquire(l1).result(LONG)
    with pytest.raises(interlock.WouldBlock):
        b.acquire(l2, blocking=False).result(LONG)
    assert l2.locked()
    lo = b.acquire(other, blocking=False).result(LONG)  # another name is independent
    b.release(lo).result(LONG)
    a.release(lease).result(LONG)
    lease2 = b.acquire(l2, blocking=False).result(LONG)
    assert lease2.token > lease.token
    b.release(lease2).result(LONG)


def test_fifo_handoff_and_tokens(backend_url: str, actors: Actors) -> None:
    """Waiters are served in arrival order, each handoff with a larger token."""
    lock = _lock(backend_url)
    holder, *waiters = actors.many(4)
    first = holder.acquire(lock).result(LONG)
    futs: list[concurrent.futures.Future[interlock.Lease]] = []
    for i, w in enumerate(waiters):
        futs.append(w.acquire(lock))
        wait_waiters(lock, i + 1)
    tokens = [first.token]
    holder.release(first).result(LONG)
    for i, w in enumerate(waiters):
        lease = futs[i].result(LONG)
        assert all(not f.done() for f in futs[i + 1:]), "a later waiter was served first"
        tokens.append(lease.token)
        w.release(lease).result(LONG)
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), tokens
    assert_idle(lock)


def test_no_barging(backend_url: str, actors: Actors) -> None:
    """A releaser that asks again at once queues behind the waiter it released to."""
    lock = _lock(backend_url)
    a, b = actors.many(2)
    la = a.acquire(lock).result(LONG)
    fb = b.acquire(lock)
    wait_waiters(lock, 1)
    a.release(la).result(LONG)
    with pytest.raises(interlock.WouldBlock):
        a.acquire(lock, blocking=False).result(LONG)
    assert a.do(lock.try_acquire, _async_try(lock)).result(LONG) is None
    lb = fb.result(LONG)
    assert lb.token > la.token
    b.release(lb).result(LONG)
    assert_idle(lock)


def _async_try(prim: interlock.Lock) -> Callable[[], Awaitable[object]]:
    async def f() -> object:
        return prim.try_acquire()

    return f


def test_timeout_leaves_queue(backend_url: str, actors: Actors) -> None:
    lock = _lock(backend_url)
    a, b, c = actors.many(3)
    la = a.acquire(lock).result(LONG)
    with pytest.raises(interlock.AcquireTimeout) as ei:
        b.acquire(lock, timeout=SHORT).result(LONG)
    assert isinstance(ei.value, TimeoutError)
    assert vars(ei.value)["name"] == lock.name
    wait_waiters(lock, 0)
    a.release(la).result(LONG)
    lc = c.acquire(lock, timeout=LONG).result(LONG)  # the timed-out waiter holds nothing
    c.release(lc).result(LONG)
    assert_idle(lock)


def test_timeout_zero_and_nonblocking(backend_url: str, actors: Actors) -> None:
    lock = _lock(backend_url)
    a, b = actors.many(2)
    la = a.acquire(lock, timeout=0).result(LONG)  # free: timeout=0 still grants
    for kw in ({"blocking": False}, {"timeout": 0}):
        with pytest.raises((interlock.WouldBlock, interlock.AcquireTimeout)):
            b.acquire(lock, **kw).result(LONG)
    assert b.do(lock.try_acquire, _async_try(lock)).result(LONG) is None
    a.release(la).result(LONG)
    lb = b.do(lock.try_acquire, _async_try(lock)).result(LONG)
    assert lb is not None and lb.held
    b.release(lb).result(LONG)
    assert_idle(lock)


def test_release_by_non_owner_raises(backend_url: str, actors: Actors) -> None:
    lock = _lock(backend_url)
    a, b = actors.many(2)
    with pytest.raises(interlock.NotOwnerError):
        b.prim_release(lock).result(LONG)  # nothing held
    la = a.acquire(lock).result(LONG)
    with pytest.raises(interlock.NotOwnerError) as ei:
        b.prim_release(lock).result(LONG)
    assert isinstance(ei.value, RuntimeError) and vars(ei.value)["name"] == lock.name
    assert la.held and lock.locked()
    a.prim_release(lock).result(LONG)  # the owner may
    assert not la.held
    with pytest.raises(interlock.NotOwnerError):
        a.prim_release(lock).result(LONG)  # not twice
    assert_idle(lock)


def test_lease_release_from_another_owner(backend_url: str, actors: Actors) -> None:
    """Ownership lives in the Lease: whoever has it may release it."""
    lock = _lock(backend_url)
    a, b, c = actors.many(3)
    la = a.acquire(lock).result(LONG)
    fc = c.acquire(lock)
    wait_waiters(lock, 1)
    b.release(la).result(LONG)
    lc = fc.result(LONG)
    c.release(lc).result(LONG)
    assert_idle(lock)


def test_context_manager_releases_on_exception(backend_url: str, actors: Actors) -> None:
    lock = _lock(backend_url)
    a, b = actors.many(2)
    lease = a.enter(lock).result(LONG)
    assert lease.held and lock.locked()
    a.exit(lock, ValueError("boom")).result(LONG)
    assert not lease.held
    lease2 = b.acquire(lock).result(LONG)
    b.enter(lease2).result(LONG)  # a Lease is a context manager too
    b.exit(lease2).result(LONG)
    assert not lease2.held
    assert_idle(lock)


def test_release_inside_with_is_tolerated(backend_url: str, actors: Actors) -> None:
    lock = _lock(backend_url)
    a = actors.new()
    a.enter(lock).result(LONG)
    a.prim_release(lock).result(LONG)
    a.exit(lock).result(LONG)
    assert_idle(lock)


def test_self_deadlock_is_reported(backend_url: str, actors: Actors) -> None:
    lock = _lock(backend_url)
    a = actors.new()
    la = a.acquire(lock).result(LONG)
    with pytest.raises(interlock.DeadlockError) as ei:
        a.acquire(lock, timeout=10).result(LONG)
    assert lock.name in str(ei.value)
    assert la.held
    a.release(la).result(LONG)
    assert_idle(lock)


def test_rlock_reentrant(backend_url: str, actors: Actors) -> None:
    lock = _lock(backend_url, interlock.RLock)
    a, b, c = actors.many(3)
    l1 = a.acquire(lock).result(LONG)
    l2 = a.acquire(lock).result(LONG)
    a.enter(lock).result(LONG)
    assert l2.token == l1.token and n_holders(lock) == 1
    fb = b.acquire(lock)
    wait_waiters(lock, 1)
    with pytest.raises(interlock.NotOwnerError):
        c.prim_release(lock).result(LONG)
    a.exit(lock).result(LONG)
    a.prim_release(lock).result(LONG)
    assert not fb.done() and l1.held
    a.prim_release(lock).result(LONG)  # the last release hands it over
    lb = fb.result(LONG)
    assert lb.token > l1.token
    b.prim_release(lock).result(LONG)
    with pytest.raises(interlock.NotOwnerError):
        b.prim_release(lock).result(LONG)
    assert_idle(lock)


def test_statistics_status_and_repr(backend_url: str, actors: Actors) -> None:
    lock = _lock(backend_url)
    a, b = actors.many(2)
    la = a.acquire(lock).result(LONG)
    fb = b.acquire(lock)
    wait_waiters(lock, 1)
    s = lock.statistics()
    assert s.name == lock.name and s.held == 1 and len(s.waiters) == 1
    assert s.holders[0].held_for >= 0 and s.holders[0].owner
    assert s.waiters[0].permits == 1
    mine = [x for x in interlock.status(backend_url) if x.name == lock.name]
    assert len(mine) == 1 and mine[0].holders[0].token == la.token
    only = interlock.status(backend_url, lock.name)
    assert [x.name for x in only] == [lock.name]
    r = repr(lock)
    assert lock.name in r and "Lock" in r
    assert str(la.token) in repr(la)
    a.release(la).result(LONG)
    b.release(fb.result(LONG)).result(LONG)
    wait_until(lambda: not lock.locked(), what="lock free")

"""Contract: Semaphore (weighted, FIFO, bounded and signalling modes) on every backend."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

import interlock
from contract.helpers import LONG, SHORT, Actors, assert_idle, unique, wait_until, wait_waiters


def _sem(url: str, permits: int, **kw: object) -> interlock.Semaphore:
    return interlock.Semaphore(unique("sem"), permits, url=url, **kw)  # type: ignore[arg-type]


def _try(sem: interlock.Semaphore, n: int = 1) -> Callable[[], Awaitable[object]]:
    async def f() -> object:
        return sem.try_acquire(n)

    return f


def test_at_most_n_permits(backend_url: str, actors: Actors) -> None:
    sem = _sem(backend_url, 3)
    a, b, c = actors.many(3)
    assert sem.capacity == 3 and not sem.locked()
    la = a.acquire(sem).result(LONG)
    lb = b.acquire(sem, 2).result(LONG)
    assert (la.permits, lb.permits, la.mode) == (1, 2, "permits")
    assert lb.token > la.token
    s = sem.statistics()
    assert (s.capacity, s.available, s.held, s.kind) == (3, 0, 3, "semaphore")
    assert sem.locked()
    with pytest.raises(interlock.WouldBlock):
        c.acquire(sem, blocking=False).result(LONG)
    assert c.do(sem.try_acquire, _try(sem)).result(LONG) is None
    a.release(la).result(LONG)
    lc = c.do(sem.try_acquire, _try(sem)).result(LONG)
    assert lc is not None and lc.token > lb.token
    for actor, lease in ((b, lb), (c, lc)):
        actor.release(lease).result(LONG)
    assert_idle(sem)


def test_weighted_acquire_is_atomic(backend_url: str, actors: Actors) -> None:
    """A request for n permits takes all n at once or none: it never sits on a partial grant."""
    sem = _sem(backend_url, 3)
    a, b = actors.many(2)
    la = a.acquire(sem, 2).result(LONG)
    fb = b.acquire(sem, 2)
    wait_waiters(sem, 1)
    s = sem.statistics()
    assert s.available == 1 and s.held == 2, "a queued weighted request must not hold part of its permits"
    assert s.waiters[0].permits == 2
    a.release(la).result(LONG)
    lb = fb.result(LONG)
    assert lb.permits == 2 and sem.statistics().available == 1
    b.release(lb).result(LONG)
    assert_idle(sem)


def test_strict_fifo_head_of_line(backend_url: str, actors: Actors) -> None:
    """A small request that fits does not pass a larger one queued before it (no starvation), and a
    non-blocking try honours the queue too."""
    sem = _sem(backend_url, 3)
    h1, h2, big, small, probe = actors.many(5)
    l1 = h1.acquire(sem, 2).result(LONG)
    l2 = h2.acquire(sem, 1).result(LONG)
    fbig = big.acquire(sem, 3)
    wait_waiters(sem, 1)
    fsmall = small.acquire(sem, 1)
    wait_waiters(sem, 2)
    h2.release(l2).result(LONG)  # 1 free: fits `small`, but `big` is first
    assert sem.statistics().available == 1
    assert probe.do(lambda: sem.try_acquire(1), _try(sem, 1)).result(LONG) is None
    with pytest.raises(interlock.WouldBlock):
        probe.acquire(sem, 1, blocking=False).result(LONG)
    assert not fbig.done() and not fsmall.done()
    assert [w.permits for w in sem.statistics().waiters] == [3, 1]
    h1.release(l1).result(LONG)
    lbig = fbig.result(LONG)
    assert not fsmall.done()
    big.release(lbig).result(LONG)
    lsmall = fsmall.result(LONG)
    assert lsmall.token > lbig.token
    small.release(lsmall).result(LONG)
    assert_idle(sem)


def test_unfair_mode_lets_small_requests_pass(backend_url: str, actors: Actors) -> None:
    name = unique("sem")
    fair = interlock.Semaphore(name, 3, url=backend_url)
    unfair = interlock.Semaphore(name, 3, url=backend_url, fair=False)
    h1, h2, big, small = actors.many(4)
    l1 = h1.acquire(fair, 2).result(LONG)
    l2 = h2.acquire(fair, 1).result(LONG)
    fbig = big.acquire(fair, 3)
    wait_waiters(fair, 1)
    h2.release(l2).result(LONG)
    ls = small.acquire(unfair, 1, timeout=LONG).result(LONG)  # passes the queued 3
    assert not fbig.done()
    small.release(ls).result(LONG)
    h1.release(l1).result(LONG)
    big.release(fbig.result(LONG)).result(LONG)
    assert_idle(fair)


def test_fifo_across_waiters_and_tokens(backend_url: str, actors: Actors) -> None:
    sem = _sem(backend_url, 2)
    holder, *ws = actors.many(5)
    lh = holder.acquire(sem, 2).result(LONG)
    futs = []
    for i, w in enumerate(ws):
        futs.append(w.acquire(sem, 2))
        wait_waiters(sem, i + 1)
    holder.release(lh).result(LONG)
    tokens = [lh.token]
    for i, w in enumerate(ws):
        lease = futs[i].result(LONG)
        assert not any(f.done() for f in futs[i + 1:])
        tokens.append(lease.token)
        w.release(lease).result(LONG)
    assert tokens == sorted(set(tokens)), tokens
    assert_idle(sem)


def test_timeout_returns_nothing(backend_url: str, actors: Actors) -> None:
    sem = _sem(backend_url, 2)
    a, b, c = actors.many(3)
    la = a.acquire(sem, 1).result(LONG)
    with pytest.raises(interlock.AcquireTimeout) as ei:
        b.acquire(sem, 2, timeout=SHORT).result(LONG)
    assert vars(ei.value)["permits"] == 2
    wait_waiters(sem, 0)
    assert sem.statistics().available == 1
    lc = c.acquire(sem, 1, timeout=LONG).result(LONG)  # (remote backends may finish the cancel late)
    a.release(la).result(LONG)
    c.release(lc).result(LONG)
    assert_idle(sem)


def test_timed_out_head_unblocks_the_rest(backend_url: str, actors: Actors) -> None:
    """When the head waiter leaves (timeout), the waiters behind it that now fit are granted."""
    sem = _sem(backend_url, 2)
    h, big, small = actors.many(3)
    lh = h.acquire(sem, 1).result(LONG)
    fbig = big.acquire(sem, 2, timeout=1.0)
    wait_waiters(sem, 1)
    fsmall = small.acquire(sem, 1)
    with pytest.raises(interlock.AcquireTimeout):
        fbig.result(LONG)
    ls = fsmall.result(LONG)
    small.release(ls).result(LONG)
    h.release(lh).result(LONG)
    assert_idle(sem)


def test_lease_released_by_another_owner(backend_url: str, actors: Actors) -> None:
    """Semaphore permits are not owned: a worker may release what a dispatcher acquired."""
    sem = _sem(backend_url, 1)
    a, b = actors.many(2)
    la = a.acquire(sem).result(LONG)
    b.release(la).result(LONG)
    assert_idle(sem)


def test_bounded_over_release(backend_url: str, actors: Actors) -> None:
    sem = _sem(backend_url, 2)
    a, b = actors.many(2)
    la = a.acquire(sem).result(LONG)
    with pytest.raises(interlock.OverRelease) as ei:
        b.prim_release(sem).result(LONG)
    assert isinstance(ei.value, ValueError) and vars(ei.value)["name"] == sem.name
    assert sem.statistics().available == 1 and sem.capacity == 2  # count unchanged
    a.release(la).result(LONG)
    with pytest.raises(interlock.OverRelease):
        a.prim_release(sem).result(LONG)
    assert_idle(sem)


def test_with_blocks_and_facade_release(backend_url: str, actors: Actors) -> None:
    """`with sem:` takes one permit; `sem.release()` returns the caller's innermost `with` permit."""
    sem = _sem(backend_url, 2)
    a, b = actors.many(2)
    l1 = a.enter(sem).result(LONG)
    l2 = a.enter(sem).result(LONG)
    assert sem.statistics().available == 0
    with pytest.raises(interlock.OverRelease):
        b.prim_release(sem).result(LONG)  # b has no `with` permit
    a.exit(sem).result(LONG)
    assert not l2.held and l1.held
    a.prim_release(sem).result(LONG)
    assert not l1.held
    assert_idle(sem)


def test_with_block_exits_on_exception(backend_url: str, actors: Actors) -> None:
    sem = _sem(backend_url, 1)
    a = actors.new()
    lease = a.enter(sem).result(LONG)
    a.exit(sem, KeyError("x")).result(LONG)
    assert not lease.held
    assert_idle(sem)


def test_signalling_mode(backend_url: str, actors: Actors) -> None:
    """bounded=False: starts at 0, release(n) adds n permits without a prior acquire (V)."""
    sem = _sem(backend_url, 0, bounded=False)
    producer, consumer = actors.many(2)
    assert sem.capacity == 0 and sem.locked()
    assert consumer.do(sem.try_acquire, _try(sem)).result(LONG) is None
    fut = consumer.acquire(sem, 3)  # more than there is now: waits for signals, no error
    wait_waiters(sem, 1)
    producer.prim_release(sem).result(LONG)
    producer.prim_release(sem, 1).result(LONG)
    assert not fut.done()
    producer.prim_release(sem).result(LONG)
    lease = fut.result(LONG)
    assert lease.permits == 3
    lease.forget()  # P: the permits are consumed
    wait_until(lambda: sem.statistics().available == 0 and not sem.statistics().holders)
    producer.prim_release(sem, 2).result(LONG)
    assert sem.statistics().available == 2
    l2 = consumer.acquire(sem, 2, blocking=False).result(LONG)
    consumer.release(l2).result(LONG)  # returned, not consumed
    assert sem.statistics().available == 2


def test_statistics_lists_waiters_in_order(backend_url: str, actors: Actors) -> None:
    sem = _sem(backend_url, 3)
    h, w1, w2 = actors.many(3)
    lh = h.acquire(sem, 3).result(LONG)
    f1 = w1.acquire(sem, 2)
    wait_waiters(sem, 1)
    f2 = w2.acquire(sem, 1)
    wait_waiters(sem, 2)
    s = sem.statistics()
    assert [w.permits for w in s.waiters] == [2, 1]
    assert all(w.waiting_for >= 0 for w in s.waiters)
    assert len(s.holders) == 1 and s.holders[0].permits == 3 and s.holders[0].token == lh.token
    assert sem.name in repr(sem)
    h.release(lh).result(LONG)
    w1.release(f1.result(LONG)).result(LONG)
    w2.release(f2.result(LONG)).result(LONG)
    assert_idle(sem)

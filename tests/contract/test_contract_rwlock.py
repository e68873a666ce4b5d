"""Contract: RWLock (many readers or one writer; writers never starved; downgrade) on every backend."""

from __future__ import annotations

import pytest

import interlock
from contract.helpers import LONG, SHORT, Actors, assert_idle, n_holders, unique, wait_waiters


def _rw(url: str) -> interlock.RWLock:
    return interlock.RWLock(unique("rw"), url=url)


def test_many_readers_share(backend_url: str, actors: Actors) -> None:
    rw = _rw(backend_url)
    rs = actors.many(3)
    leases = [r.acquire_read(rw).result(LONG) for r in rs]
    assert all(le.mode == "shared" and le.held for le in leases)
    assert n_holders(rw) == 3
    tokens = [le.token for le in leases]
    assert tokens == sorted(set(tokens))
    for r, le in zip(rs, leases, strict=False):
        r.release(le).result(LONG)
    assert_idle(rw)


def test_writer_excludes_everyone(backend_url: str, actors: Actors) -> None:
    rw = _rw(backend_url)
    w, r, w2 = actors.many(3)
    lw = w.acquire_write(rw).result(LONG)
    assert lw.mode == "exclusive" and rw.locked()
    with pytest.raises(interlock.WouldBlock):
        r.acquire_read(rw, blocking=False).result(LONG)
    with pytest.raises(interlock.AcquireTimeout):
        w2.acquire_write(rw, timeout=SHORT).result(LONG)
    fr = r.acquire_read(rw)
    wait_waiters(rw, 1)
    w.release(lw).result(LONG)
    lr = fr.result(LONG)
    assert lr.token > lw.token
    r.release(lr).result(LONG)
    assert_idle(rw)


def test_writer_not_starved_by_readers(backend_url: str, actors: Actors) -> None:
    """Readers that arrive after a queued writer wait behind it."""
    rw = _rw(backend_url)
    r1, r2, w, r3, probe = actors.many(5)
    l1 = r1.acquire_read(rw).result(LONG)
    l2 = r2.acquire_read(rw).result(LONG)
    fw = w.acquire_write(rw)
    wait_waiters(rw, 1)
    with pytest.raises(interlock.WouldBlock):
        probe.acquire_read(rw, blocking=False).result(LONG)
    fr3 = r3.acquire_read(rw)
    wait_waiters(rw, 2)
    assert [x.mode for x in rw.statistics().waiters] == ["exclusive", "shared"]
    r1.release(l1).result(LONG)
    assert not fw.done()
    r2.release(l2).result(LONG)
    lw = fw.result(LONG)
    assert not fr3.done()
    w.release(lw).result(LONG)
    lr3 = fr3.result(LONG)
    assert l1.token < l2.token < lw.token < lr3.token
    r3.release(lr3).result(LONG)
    assert_idle(rw)


def test_downgrade_admits_readers_not_writers(backend_url: str, actors: Actors) -> None:
    rw = _rw(backend_url)
    w, r, w2 = actors.many(3)
    lw = w.acquire_write(rw).result(LONG)
    fr = r.acquire_read(rw)
    wait_waiters(rw, 1)
    w.downgrade(lw).result(LONG)
    assert lw.mode == "shared" and lw.permits == 1 and lw.held
    lr = fr.result(LONG)  # the queued reader gets in beside the downgraded writer
    fw2 = w2.acquire_write(rw)
    wait_waiters(rw, 1)
    r.release(lr).result(LONG)
    assert not fw2.done()  # the downgraded lease still excludes writers
    w.release(lw).result(LONG)
    lw2 = fw2.result(LONG)
    assert lw2.token > lr.token
    w2.release(lw2).result(LONG)
    assert_idle(rw)


def test_downgrade_needs_a_write_lease(backend_url: str, actors: Actors) -> None:
    rw = _rw(backend_url)
    a = actors.new()
    lr = a.acquire_read(rw).result(LONG)
    with pytest.raises(interlock.InvalidArgument):
        a.downgrade(lr).result(LONG)
    a.release(lr).result(LONG)
    sem = interlock.Semaphore(unique("sem"), 2, url=backend_url)
    ls = a.acquire(sem).result(LONG)
    with pytest.raises(interlock.InvalidArgument):
        a.downgrade(ls).result(LONG)
    a.release(ls).result(LONG)
    assert_idle(rw)


def test_context_managers(backend_url: str, actors: Actors) -> None:
    rw = _rw(backend_url)
    a, b = actors.many(2)
    rcm, wcm = rw.read(), rw.write()
    lr = a.enter(rcm).result(LONG)
    assert lr.mode == "shared"
    fw = b.enter(wcm)
    wait_waiters(rw, 1)
    a.exit(rcm, RuntimeError("reader failed")).result(LONG)
    lw = fw.result(LONG)
    assert lw.mode == "exclusive"
    b.exit(wcm).result(LONG)
    assert not lw.held
    assert_idle(rw)


def test_read_write_timeouts(backend_url: str, actors: Actors) -> None:
    rw = _rw(backend_url)
    a, b = actors.many(2)
    lw = a.acquire_write(rw).result(LONG)
    with pytest.raises(interlock.AcquireTimeout):
        b.acquire_read(rw, timeout=SHORT).result(LONG)
    b_cm = rw.read(timeout=SHORT)
    with pytest.raises(interlock.AcquireTimeout):
        b.enter(b_cm).result(LONG)
    wait_waiters(rw, 0)
    a.release(lw).result(LONG)
    assert_idle(rw)


def test_upgrade_is_a_deadlock(backend_url: str, actors: Actors) -> None:
    """There is no upgrade: a sole reader asking to write waits for itself, which is reported."""
    rw = _rw(backend_url)
    a = actors.new()
    lr = a.acquire_read(rw).result(LONG)
    with pytest.raises(interlock.DeadlockError):
        a.acquire_write(rw, timeout=10).result(LONG)
    lw_cm = rw.write(timeout=10)
    a.release(lr).result(LONG)
    lw = a.enter(lw_cm).result(LONG)
    with pytest.raises(interlock.DeadlockError):
        a.acquire_write(rw, timeout=10).result(LONG)
    a.exit(lw_cm).result(LONG)
    assert not lw.held
    assert_idle(rw)

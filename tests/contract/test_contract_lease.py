"""Lease.extend(): renews now (a fresh deadline where leases expire), refuses a released lease, and
reports a grant reclaimed behind the Lease's back (its owner thread ended) as lost."""

from __future__ import annotations

import threading

import pytest

import interlock
from contract.helpers import LONG, Actors, assert_idle, settle, unique, wait_until


def _extend(actor: object, lease: interlock.Lease) -> None:
    actor.do(lease.extend, lease.extend_async).result(LONG)  # type: ignore[attr-defined]


def test_extend_renews_a_held_lease_and_refuses_a_released_one(backend_url: str, actors: Actors) -> None:
    lock = interlock.Lock(unique("lock"), url=backend_url)
    sem = interlock.Semaphore(unique("sem"), 3, url=backend_url)
    a = actors.new()
    for lease in (a.acquire(lock).result(LONG), a.acquire(sem, 2).result(LONG)):
        before = lease.deadline
        _extend(a, lease)
        assert lease.held
        if before is not None:  # expiring leases: the deadline moved on
            assert lease.deadline is not None and lease.deadline > before
        else:
            assert lease.deadline is None
        a.release(lease).result(LONG)
        with pytest.raises(interlock.LeaseLost, match="released"):
            _extend(a, lease)
    assert_idle(lock)
    assert_idle(sem)


def test_extend_reports_a_reclaimed_grant(backend_url: str) -> None:
    """A thread ends holding a lock: the grant is reclaimed for the next owner. Its Lease, kept by
    someone else, must say so on extend() instead of vouching for a grant that is gone."""
    lock = interlock.Lock(unique("lock"), url=backend_url)
    box: list[interlock.Lease] = []
    t = threading.Thread(target=lambda: box.append(lock.acquire()))
    t.start()
    t.join(LONG)
    del t
    settle()
    wait_until(lambda: not box[0].held, what="the dead thread's lock to be reclaimed")
    with pytest.raises(interlock.LeaseLost):
        box[0].extend()
    nxt = lock.acquire(timeout=LONG)
    assert nxt.previous_owner_died
    nxt.release()
    assert_idle(lock)

"""Model-based test with blocking acquires: queued waiters, FIFO handoff and deadlock reports.

Complements ``test_state_machine.py`` (non-blocking operations only). Here each simulated owner is a real
thread (an actor from ``contract.helpers``) so that its acquire can block; Hypothesis drives:

* blocking acquires that the model expects to be granted at once, to queue, to raise ``DeadlockError``
  (the wait could never end: the model runs the wait-for rule of ``interlock._core.deadlock``) or to
  raise ``InvalidArgument`` (more than the capacity);
* non-blocking tries that must honour the queue (``try_acquire`` returns None while others queue, even
  if the permits are free);
* releases from the test thread (a Lease may be released from anywhere), ``Lock.release()`` by owner
  and by non-owner, ``Semaphore.release()`` with no ``with`` permit (OverRelease), RW downgrades.

After a release the model hands permits to the head of the queue (strict FIFO, weighted: a head that
does not fit blocks everyone behind it) and the test waits for exactly those owners to return their
Lease; tokens must increase in grant order. After every step ``statistics()`` must match the model:
available permits, holders (token, permits, mode) and the queue (permits, mode) in order.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import interlock
from contract.helpers import LONG, Actor, wait_until
from interlock._spi import RW_CAPACITY

OWNERS = 4
PRIMS = ("sem", "lock", "rw")
_runs = itertools.count()


@dataclass
class Held:
    owner: int
    permits: int
    mode: str
    lease: interlock.Lease


@dataclass
class Waiting:
    owner: int
    permits: int
    mode: str
    fut: concurrent.futures.Future[Any]


@dataclass
class PrimModel:
    capacity: int
    owned: bool
    held: list[Held] = field(default_factory=list)
    queue: deque[Waiting] = field(default_factory=deque)
    last_token: int = 0

    @property
    def available(self) -> int:
        return self.capacity - sum(h.permits for h in self.held)


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.url = f"memory://queue-model-{uuid.uuid4().hex}"
        self.actors = [Actor("thread", f"owner{i}-{next(_runs)}") for i in range(OWNERS)]
        self.prims: dict[str, Any] = {}
        self.models: dict[str, PrimModel] = {}
        self.waiting_on: dict[int, str] = {}  # owner -> owned primitive it blocks on

    @initialize(capacity=st.integers(1, 4))
    def setup(self, capacity: int) -> None:
        self.prims = {
            "sem": interlock.Semaphore("sem", capacity, url=self.url),
            "lock": interlock.Lock("lock", url=self.url),
            "rw": interlock.RWLock("rw", url=self.url),
        }
        self.models = {
            "sem": PrimModel(capacity, owned=False),
            "lock": PrimModel(1, owned=True),
            "rw": PrimModel(RW_CAPACITY, owned=True),
        }

    # -- model rules ---------------------------------------------------------------------------
    def _busy(self, owner: int) -> bool:
        return any(w.owner == owner for m in self.models.values() for w in m.queue)

    def _hopeless(self, origin: int, prim: str, seen: set[int]) -> bool:
        """The wait-for rule of interlock._core.deadlock, on the model."""
        m = self.models[prim]
        if not m.owned:
            return False  # semaphore permits may be released by anyone
        holders = list(dict.fromkeys(h.owner for h in m.held))
        if origin in holders:
            return True  # FIFO: it would wait for its own release
        if not holders:
            return False
        for h in holders:
            if h in seen:
                continue
            nxt = self.waiting_on.get(h)
            if nxt is None:
                return False
            seen.add(h)
            if not self._hopeless(origin, nxt, seen):
                return False
        return True

    def _record_grant(self, prim: str, owner: int, permits: int, mode: str, lease: interlock.Lease) -> None:
        m = self.models[prim]
        assert lease.held and lease.permits == permits and lease.mode == mode, (lease, permits, mode)
        assert lease.token > m.last_token, f"{prim}: token {lease.token} after {m.last_token}"
        m.last_token = lease.token
        m.held.append(Held(owner, permits, mode, lease))

    def _wake(self, prim: str) -> None:
        """Strict FIFO handoff: grant the head while it fits; wait for exactly those owners."""
        m = self.models[prim]
        while m.queue and m.queue[0].permits <= m.available:
            w = m.queue.popleft()
            self.waiting_on.pop(w.owner, None)
            lease = w.fut.result(LONG)
            event(f"handoff on {prim}")
            self._record_grant(prim, w.owner, w.permits, w.mode, lease)
        for w in m.queue:
            assert not w.fut.done(), f"{prim}: a waiter behind the head was served: {w.fut}"

    def _request(self, prim: str, n: int, write: bool) -> tuple[int, str]:
        if prim == "sem":
            return n, "permits"
        if prim == "lock":
            return 1, "exclusive"
        return (RW_CAPACITY, "exclusive") if write else (1, "shared")

    def _submit_acquire(self, actor: Actor, prim: str, permits: int, mode: str, blocking: bool) -> Any:
        p = self.prims[prim]
        if prim == "sem":
            return actor.acquire(p, permits, blocking=blocking)
        if prim == "lock":
            return actor.acquire(p, blocking=blocking)
        if mode == "exclusive":
            return actor.acquire_write(p, blocking=blocking)
        return actor.acquire_read(p, blocking=blocking)

    # -- rules -------------------------------------------------------------------------------------
    def _idle(self) -> list[int]:
        return [o for o in range(OWNERS) if not self._busy(o)]

    @precondition(lambda self: bool(self._idle()))
    @rule(data=st.data(), prim=st.sampled_from(PRIMS), write=st.booleans())
    def blocking_acquire(self, data: st.DataObject, prim: str, write: bool) -> None:
        owner = data.draw(st.sampled_from(self._idle()), label="owner")
        m = self.models[prim]
        n = data.draw(st.integers(1, m.capacity + 1) if prim == "sem" else st.just(1), label="n")
        permits, mode = self._request(prim, n, write)
        fut = self._submit_acquire(self.actors[owner], prim, permits, mode, True)
        if permits > m.capacity:
            try:
                fut.result(LONG)
            except interlock.InvalidArgument:
                event("over capacity")
                return
            raise AssertionError(f"acquire({permits}) of capacity {m.capacity} did not raise")
        if permits <= m.available and not m.queue:
            self._record_grant(prim, owner, permits, mode, fut.result(LONG))
            return
        if self._hopeless(owner, prim, {owner}):
            try:
                lease = fut.result(LONG)
            except interlock.DeadlockError as exc:
                assert prim in str(exc)
                event(f"deadlock reported ({len(self.waiting_on)} other owners blocked)")
                return
            raise AssertionError(f"hopeless wait on {prim} by owner{owner} was granted: {lease}")
        event(f"queued on {prim} behind {len(m.queue)}")
        m.queue.append(Waiting(owner, permits, mode, fut))
        if m.owned:
            self.waiting_on[owner] = prim
        want = len(m.queue)
        wait_until(lambda: len(self.prims[prim].statistics().waiters) == want or fut.done(),
                   what=f"owner{owner} queued on {prim}")
        assert not fut.done(), f"owner{owner} on {prim} should queue, got {fut.exception() or fut.result()}"

    @precondition(lambda self: bool(self._idle()))
    @rule(data=st.data(), prim=st.sampled_from(PRIMS), write=st.booleans())
    def try_acquire(self, data: st.DataObject, prim: str, write: bool) -> None:
        owner = data.draw(st.sampled_from(self._idle()), label="owner")
        m = self.models[prim]
        n = data.draw(st.integers(1, m.capacity) if prim == "sem" else st.just(1), label="n")
        permits, mode = self._request(prim, n, write)
        fut = self._submit_acquire(self.actors[owner], prim, permits, mode, False)
        if permits <= m.available and not m.queue:
            self._record_grant(prim, owner, permits, mode, fut.result(LONG))
            return
        try:
            lease = fut.result(LONG)
        except interlock.WouldBlock:
            event("try refused" + (" with permits free (queue honoured)" if permits <= m.available else ""))
            return
        raise AssertionError(f"non-blocking {prim} acquire passed the queue or the holders: {lease}")

    @precondition(lambda self: any(m.held for m in self.models.values()))
    @rule(data=st.data())
    def release_lease(self, data: st.DataObject) -> None:
        choices = [(p, h) for p, m in self.models.items() for h in m.held]
        prim, h = data.draw(st.sampled_from(choices))
        h.lease.release()  # from the test thread: a Lease may be released anywhere
        assert not h.lease.held
        self.models[prim].held.remove(h)
        self._wake(prim)

    @precondition(lambda self: bool(self._idle()))
    @rule(data=st.data())
    def lock_release_by(self, data: st.DataObject) -> None:
        owner = data.draw(st.sampled_from(self._idle()), label="owner")
        m = self.models["lock"]
        mine = [h for h in m.held if h.owner == owner]
        fut = self.actors[owner].prim_release(self.prims["lock"])
        if mine:
            fut.result(LONG)
            m.held.remove(mine[0])
            self._wake("lock")
        else:
            try:
                fut.result(LONG)
            except interlock.NotOwnerError:
                return
            raise AssertionError(f"owner{owner} released a lock it does not hold")

    @precondition(lambda self: bool(self._idle()))
    @rule(data=st.data())
    def semaphore_over_release(self, data: st.DataObject) -> None:
        owner = data.draw(st.sampled_from(self._idle()), label="owner")
        try:
            self.actors[owner].prim_release(self.prims["sem"]).result(LONG)
        except interlock.OverRelease:
            return
        raise AssertionError("release() without a `with` permit did not raise OverRelease")

    @precondition(lambda self: any(h.mode == "exclusive" for h in self.models["rw"].held))
    @rule()
    def downgrade(self) -> None:
        m = self.models["rw"]
        h = next(h for h in m.held if h.mode == "exclusive")
        token = h.lease.token
        h.lease.downgrade()
        assert h.lease.token == token and h.lease.mode == "shared" and h.lease.permits == 1
        h.mode, h.permits = "shared", 1
        self._wake("rw")

    # -- invariants ----------------------------------------------------------------------------
    @invariant()
    def matches_statistics(self) -> None:
        for prim, p in self.prims.items():
            m = self.models[prim]
            s = p.statistics()
            assert s.available == m.available, (prim, s.available, m.available)
            got = sorted((h.token, h.permits, h.mode) for h in s.holders)
            want = sorted((h.lease.token, h.permits, h.mode) for h in m.held)
            assert got == want, (prim, got, want)
            assert [(w.permits, w.mode) for w in s.waiters] == [(w.permits, w.mode) for w in m.queue], prim
            assert p.locked() == (m.available < 1 or bool(m.queue)), prim

    def teardown(self) -> None:
        try:
            for _ in range(100):
                pending = [(p, h) for p, m in self.models.items() for h in m.held]
                if not pending:
                    break
                for prim, h in pending:
                    h.lease.release()
                    self.models[prim].held.remove(h)
                    self._wake(prim)
            assert not any(m.queue for m in self.models.values()), "waiters left after releasing everything"
        finally:
            for a in self.actors:
                a.stop()


QueueMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_queue_model = QueueMachine.TestCase

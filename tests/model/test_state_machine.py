"""Model-based test: Semaphore, Lock and RWLock on ``memory://`` against a reference model.

Hypothesis drives several simulated owners through non-blocking operations only (so a step can
never hang) and compares, after every step, what ``statistics()`` reports with a plain model:
available permits, the set of holders (token, permits, mode), one holder at most for a Lock, never a
writer together with readers, and fencing tokens that strictly increase with every grant.

Every Lease is kept referenced by the model: a dropped Lease is returned by the garbage collector
by design, which would make the implementation diverge from the model for a reason outside the test.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import interlock
from interlock import InvalidArgument, Lease, WouldBlock
from interlock._spi import RW_CAPACITY

OWNERS = ("alice", "bob", "carol", "dave")


@dataclass
class Grant:
    """One lease the model believes is held (``held`` False once released or forgotten)."""

    owner: str
    lease: Lease
    kind: str  # "sem", "lock", "rw", "sig"
    permits: int
    mode: str
    held: bool = True


@dataclass
class Model:
    sem_capacity: int = 1
    sig_available: int = 0
    grants: list[Grant] = field(default_factory=list)
    last_token: dict[str, int] = field(default_factory=dict)

    def held(self, kind: str) -> list[Grant]:
        return [g for g in self.grants if g.held and g.kind == kind]

    def sem_available(self) -> int:
        return self.sem_capacity - sum(g.permits for g in self.held("sem"))

    def readers(self) -> list[Grant]:
        return [g for g in self.held("rw") if g.mode == "shared"]

    def writer(self) -> Grant | None:
        ws = [g for g in self.held("rw") if g.mode == "exclusive"]
        assert len(ws) <= 1
        return ws[0] if ws else None

    def rw_available(self) -> int:
        return RW_CAPACITY - sum(g.permits for g in self.held("rw"))


def _holders(prim: interlock.Semaphore | interlock.Lock | interlock.RWLock) -> list[tuple[int, int, str]]:
    return sorted((h.token, h.permits, h.mode) for h in prim.statistics().holders)


class PrimitivesMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.url = f"memory://model-{uuid.uuid4().hex}"
        self.model = Model()
        self.lock = interlock.Lock("lock", url=self.url)
        self.rw = interlock.RWLock("rw", url=self.url)
        self.sig = interlock.Semaphore("sig", 0, url=self.url, bounded=False)
        self.sem: interlock.Semaphore | None = None

    @initialize(capacity=st.integers(1, 4))
    def make_semaphore(self, capacity: int) -> None:
        self.model.sem_capacity = capacity
        self.sem = interlock.Semaphore("sem", capacity, url=self.url)

    # -- helpers ---------------------------------------------------------------------------

    def _granted(self, owner: str, lease: Lease, kind: str, permits: int, mode: str) -> None:
        assert lease.held
        assert lease.permits == permits, (lease.permits, permits)
        last = self.model.last_token.get(kind)
        assert last is None or lease.token > last, f"{kind}: token {lease.token} after {last}"
        self.model.last_token[kind] = lease.token
        self.model.grants.append(Grant(owner, lease, kind, permits, mode))

    def _pick(self, kind: str, data: st.DataObject, mode: str | None = None) -> Grant:
        candidates = [g for g in self.model.grants if g.kind == kind and (mode is None or g.mode == mode)]
        return data.draw(st.sampled_from(candidates))

    def _has(self, kind: str, mode: str | None = None) -> bool:
        return any(g.kind == kind and (mode is None or g.mode == mode) for g in self.model.grants)

    # -- semaphore -------------------------------------------------------------------------

    @rule(owner=st.sampled_from(OWNERS), n=st.integers(1, 5))
    def sem_try_acquire(self, owner: str, n: int) -> None:
        assert self.sem is not None
        if n > self.model.sem_capacity:
            try:
                self.sem.try_acquire(n)
            except InvalidArgument:
                return
            raise AssertionError(f"try_acquire({n}) beyond capacity {self.model.sem_capacity} did not raise")
        lease = self.sem.try_acquire(n)
        if n <= self.model.sem_available():
            assert lease is not None, f"try_acquire({n}) refused with {self.model.sem_available()} free"
            self._granted(owner, lease, "sem", n, "permits")
        else:
            assert lease is None, f"try_acquire({n}) granted with {self.model.sem_available()} free"

    @rule(owner=st.sampled_from(OWNERS), n=st.integers(1, 4))
    def sem_acquire_nonblocking(self, owner: str, n: int) -> None:
        assert self.sem is not None
        n = min(n, self.model.sem_capacity)
        try:
            lease = self.sem.acquire(n, blocking=False)
        except WouldBlock:
            assert n > self.model.sem_available(), f"acquire({n}) refused with {self.model.sem_available()} free"
            return
        assert n <= self.model.sem_available(), f"acquire({n}) granted with {self.model.sem_available()} free"
        self._granted(owner, lease, "sem", n, "permits")

    @precondition(lambda self: self._has("sem"))
    @rule(data=st.data())
    def sem_release(self, data: st.DataObject) -> None:
        g = self._pick("sem", data)
        g.lease.release()  # idempotent: a second release of the same lease is a no-op
        g.held = False
        assert not g.lease.held

    # -- lock ------------------------------------------------------------------------------

    @rule(owner=st.sampled_from(OWNERS), use_try=st.booleans())
    def lock_acquire(self, owner: str, use_try: bool) -> None:
        free = not self.model.held("lock")
        lease: Lease | None
        if use_try:
            lease = self.lock.try_acquire()
        else:
            try:
                lease = self.lock.acquire(blocking=False)
            except WouldBlock:
                lease = None
        if free:
            assert lease is not None, "a free lock was refused"
            self._granted(owner, lease, "lock", 1, "exclusive")
        else:
            assert lease is None, "a held lock was granted twice"

    @precondition(lambda self: self._has("lock"))
    @rule(data=st.data())
    def lock_release(self, data: st.DataObject) -> None:
        g = self._pick("lock", data)
        g.lease.release()
        g.held = False

    # -- rwlock ----------------------------------------------------------------------------

    @rule(owner=st.sampled_from(OWNERS))
    def rw_read(self, owner: str) -> None:
        try:
            lease = self.rw.acquire_read(blocking=False)
        except WouldBlock:
            assert self.model.writer() is not None, "a reader was refused with no writer"
            return
        assert self.model.writer() is None, "a reader was granted beside a writer"
        self._granted(owner, lease, "rw", 1, "shared")

    @rule(owner=st.sampled_from(OWNERS))
    def rw_write(self, owner: str) -> None:
        try:
            lease = self.rw.acquire_write(blocking=False)
        except WouldBlock:
            assert self.model.held("rw"), "a writer was refused on a free rwlock"
            return
        assert not self.model.held("rw"), "a writer was granted beside other holders"
        self._granted(owner, lease, "rw", RW_CAPACITY, "exclusive")

    @precondition(lambda self: self._has("rw"))
    @rule(data=st.data())
    def rw_release(self, data: st.DataObject) -> None:
        g = self._pick("rw", data)
        g.lease.release()
        g.held = False

    @precondition(lambda self: self.model.writer() is not None)
    @rule()
    def rw_downgrade(self) -> None:
        g = self.model.writer()
        assert g is not None
        token = g.lease.token
        g.lease.downgrade()
        assert g.lease.held and g.lease.token == token
        assert g.lease.mode == "shared" and g.lease.permits == 1, (g.lease.mode, g.lease.permits)
        g.mode = "shared"
        g.permits = 1

    # -- signalling semaphore --------------------------------------------------------------

    @rule(n=st.integers(1, 3))
    def sig_release(self, n: int) -> None:
        self.sig.release(n)
        self.model.sig_available += n

    @rule(owner=st.sampled_from(OWNERS), n=st.integers(1, 3), forget=st.booleans())
    def sig_acquire(self, owner: str, n: int, forget: bool) -> None:
        try:
            lease = self.sig.acquire(n, blocking=False)
        except WouldBlock:
            assert n > self.model.sig_available, f"P({n}) refused with {self.model.sig_available} signalled"
            return
        assert n <= self.model.sig_available, f"P({n}) granted with {self.model.sig_available} signalled"
        self._granted(owner, lease, "sig", n, "permits")
        self.model.sig_available -= n
        if forget:
            lease.forget()  # consumed: the permits are gone for good
            self.model.grants[-1].held = False
            assert not lease.held

    @precondition(lambda self: bool(self.model.held("sig")))
    @rule(data=st.data())
    def sig_give_back(self, data: st.DataObject) -> None:
        g = self._pick("sig", data)
        if g.held:
            g.lease.release()
            g.held = False
            self.model.sig_available += g.permits

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def semaphore_matches(self) -> None:
        if self.sem is None:
            return
        s = self.sem.statistics()
        assert s.available == self.model.sem_available(), (s.available, self.model.sem_available())
        assert s.held <= s.capacity == self.model.sem_capacity
        want = sorted((g.lease.token, g.permits, "permits") for g in self.model.held("sem"))
        assert _holders(self.sem) == want
        assert not s.waiters

    @invariant()
    def lock_matches(self) -> None:
        s = self.lock.statistics()
        assert len(s.holders) <= 1
        want = sorted((g.lease.token, 1, "exclusive") for g in self.model.held("lock"))
        assert _holders(self.lock) == want
        assert s.available == 1 - len(want)
        assert self.lock.locked() == bool(want)

    @invariant()
    def rwlock_matches(self) -> None:
        s = self.rw.statistics()
        modes = {h.mode for h in s.holders}
        assert not ("exclusive" in modes and len(s.holders) > 1), f"writer with readers: {s.holders}"
        want = sorted((g.lease.token, g.permits, g.mode) for g in self.model.held("rw"))
        assert _holders(self.rw) == want
        assert s.available == self.model.rw_available()

    @invariant()
    def signalling_matches(self) -> None:
        s = self.sig.statistics()
        assert s.available == self.model.sig_available, (s.available, self.model.sig_available)
        want = sorted((g.lease.token, g.permits, "permits") for g in self.model.held("sig"))
        assert _holders(self.sig) == want

    def teardown(self) -> None:
        for g in self.model.grants:
            if g.held:
                g.lease.release()
        self.model.grants.clear()


PrimitivesMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_primitives_model = PrimitivesMachine.TestCase

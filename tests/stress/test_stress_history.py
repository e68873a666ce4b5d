"""Thread and asyncio stress with recorded histories checked by ``interlock.testing.history``.

Every acquire and release is logged ``(client, op, start, end, ok, token, permits, mode)`` on the
monotonic clock; the checker then verifies, from the history alone (no sleeps, no luck):

* at most N permits definitely held at any instant (one writer or many readers for RW locks);
* fencing tokens unique and strictly increasing in real-time order of grants;
* FIFO among blocked waiters (asyncio on one loop, where the request is queued in the same step as its
  ``start`` is taken, so the check is exact);
* every waiter that was never cancelled and had no timeout was eventually served;

and at the end that nothing leaked: every permit is back, nobody holds, nobody waits. Cancellation is
injected at random (``task.cancel()`` while waiting, in the critical section, or in the same loop step as
the grant it races with; ``asyncio.timeout``; ``wait_for``; ``timeout=``). ``INTERLOCK_STRESS`` scales the
iteration counts; the seed is printed.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import interlock
from contract.helpers import assert_idle
from interlock._spi import RW_CAPACITY
from interlock.testing.history import Event, Recorder, check, check_fifo, check_liveness, check_rw
from stress.helpers import scaled

pytestmark = [pytest.mark.stress, pytest.mark.timeout(300)]



def _url() -> str:
    return f"memory://stress-{uuid.uuid4().hex}"


def _assert_clean(errors: list[str], what: str) -> None:
    assert not errors, f"{what}: {len(errors)} violation(s), first: " + "; ".join(errors[:3])


def _run_all(threads: list[threading.Thread], errors: list[BaseException]) -> None:
    """Start the workers, wait for every one (a generous liveness bound), and report their errors."""
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a worker never finished"
    assert not errors, errors[:1]


# --------------------------------------------------------------------------------------------------
# threads


def test_threads_weighted_semaphore(seed: int) -> None:
    """10 threads, N=3, weights 1-3, blocking / timeout / try / `with`; some patient, some hasty."""
    n = 3
    sem = interlock.Semaphore("sem", n, url=_url())
    rec = Recorder(definite_failures=(interlock.AcquireTimeout, interlock.WouldBlock))
    inside = 0
    peak = 0
    guard = threading.Lock()
    errors: list[BaseException] = []
    iterations = scaled(150)
    patient = [f"p{i}" for i in range(5)]
    hasty = [f"h{i}" for i in range(5)]

    def worker(client: str, wseed: int) -> None:
        nonlocal inside, peak
        rng = random.Random(wseed)
        try:
            for _ in range(iterations):
                style = rng.choice(["block", "with"] if client in patient else ["timeout", "try", "block"])
                permits = 1 if style == "with" else rng.choice([1, 1, 2, 3])
                lease: interlock.Lease | None = None
                with rec.acquire(client, "sem", permits=permits) as op:
                    if style == "block":
                        lease = sem.acquire(permits)
                    elif style == "with":
                        lease = sem.__enter__()
                    elif style == "timeout":
                        lease = sem.acquire(permits, timeout=rng.uniform(0, 0.002))
                    else:
                        lease = sem.try_acquire(permits)
                        if lease is None:
                            op.failed()
                    if lease is not None:
                        op.token = lease.token
                if lease is None:
                    continue
                with guard:
                    inside += permits
                    peak = max(peak, inside)
                    assert inside <= n, f"{inside} permits inside a semaphore of {n}"
                if rng.random() < 0.3:
                    time.sleep(0.0002)
                with guard:
                    inside -= permits
                with rec.release(client, "sem", token=lease.token, permits=permits):
                    if style == "with":
                        sem.__exit__(None, None, None)
                    else:
                        lease.release()
        except interlock.AcquireTimeout:  # pragma: no cover - recorded; keep the thread going
            pass
        except BaseException as exc:
            errors.append(exc)

    rng = random.Random(seed)
    threads = [threading.Thread(target=worker, args=(c, rng.randrange(1 << 30)), name=c) for c in patient + hasty]
    _run_all(threads, errors)
    events = rec.events()
    _assert_clean(check(events, capacity=n), "capacity/tokens")
    _assert_clean(check_liveness(events, clients=patient), "liveness")
    assert 1 <= peak <= n
    assert_idle(sem)


def test_threads_rwlock_with_downgrades(seed: int) -> None:
    """8 threads: 70 % readers, writers that sometimes downgrade; one writer or many readers, always."""
    rw = interlock.RWLock("rw", url=_url())
    rec = Recorder(definite_failures=(interlock.AcquireTimeout, interlock.WouldBlock))
    state = {"readers": 0, "writers": 0}
    guard = threading.Lock()
    errors: list[BaseException] = []
    iterations = scaled(120)

    def enter(mode: str) -> None:
        with guard:
            state[mode] += 1
            assert state["writers"] <= 1 and not (state["writers"] and state["readers"]), state

    def leave(mode: str) -> None:
        with guard:
            state[mode] -= 1

    def worker(client: str, wseed: int) -> None:
        rng = random.Random(wseed)
        try:
            for _ in range(iterations):
                if rng.random() < 0.7:
                    with rec.acquire(client, "rw", mode="read") as op:
                        lease = rw.acquire_read()
                        op.token = lease.token
                    enter("readers")
                    time.sleep(0 if rng.random() < 0.7 else 0.0002)
                    leave("readers")
                    with rec.release(client, "rw", token=lease.token, mode="read"):
                        lease.release()
                    continue
                with rec.acquire(client, "rw", mode="write", permits=RW_CAPACITY) as op:
                    lease = rw.acquire_write()
                    op.token = lease.token
                enter("writers")
                time.sleep(0 if rng.random() < 0.7 else 0.0002)
                if rng.random() < 0.5:
                    # Downgrade: the write hold ends and a read hold (same lease) begins, atomically.
                    leave("writers")
                    rel = rec.release(client, "rw", token=lease.token, mode="write")
                    acq = rec.acquire(client, "rw", mode="read")
                    lease.downgrade()
                    rel.succeeded()
                    acq.succeeded()  # token None: the downgraded grant has no new token
                    enter("readers")
                    time.sleep(0)
                    leave("readers")
                    with rec.release(client, "rw", token=lease.token, mode="read"):
                        lease.release()
                else:
                    leave("writers")
                    with rec.release(client, "rw", token=lease.token, mode="write"):
                        lease.release()
        except BaseException as exc:
            errors.append(exc)

    rng = random.Random(seed)
    threads = [threading.Thread(target=worker, args=(f"c{i}", rng.randrange(1 << 30))) for i in range(8)]
    _run_all(threads, errors)
    events = rec.events()
    _assert_clean(check_rw(events), "rw exclusion/tokens")
    _assert_clean(check_liveness(events), "liveness")
    assert_idle(rw)


def test_threads_and_two_event_loops_share_one_semaphore(seed: int) -> None:
    """Threads and the tasks of two event loops in two more threads queue on one weighted semaphore."""
    n = 2
    sem = interlock.Semaphore("shared", n, url=_url())
    rec = Recorder(definite_failures=(interlock.AcquireTimeout,))
    errors: list[BaseException] = []
    iterations = scaled(80)

    def thread_worker(client: str, wseed: int) -> None:
        rng = random.Random(wseed)
        try:
            for _ in range(iterations):
                permits = rng.choice([1, 2])
                with rec.acquire(client, "shared", permits=permits) as op:
                    lease = sem.acquire(permits)
                    op.token = lease.token
                time.sleep(0 if rng.random() < 0.8 else 0.0002)
                with rec.release(client, "shared", token=lease.token, permits=permits):
                    lease.release()
        except BaseException as exc:
            errors.append(exc)

    async def task_worker(client: str, wseed: int) -> None:
        rng = random.Random(wseed)
        for _ in range(iterations):
            permits = rng.choice([1, 2])
            with rec.acquire(client, "shared", permits=permits) as op:
                lease = await sem.acquire_async(permits)
                op.token = lease.token
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
            with rec.release(client, "shared", token=lease.token, permits=permits):
                await lease.release_async()

    def loop_thread(prefix: str, lseed: int) -> None:
        rng = random.Random(lseed)

        async def main() -> None:
            await asyncio.gather(*(task_worker(f"{prefix}t{i}", rng.randrange(1 << 30)) for i in range(4)))

        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    rng = random.Random(seed)
    threads = [threading.Thread(target=thread_worker, args=(f"th{i}", rng.randrange(1 << 30))) for i in range(3)]
    threads += [threading.Thread(target=loop_thread, args=(f"L{j}", rng.randrange(1 << 30))) for j in range(2)]
    _run_all(threads, errors)
    events = rec.events()
    _assert_clean(check(events, capacity=n), "capacity/tokens")
    _assert_clean(check_liveness(events), "liveness")
    assert_idle(sem)


# --------------------------------------------------------------------------------------------------
# asyncio with cancellation


class _AsyncRun:
    """One asyncio stress run on one primitive kind (see the module docstring)."""

    def __init__(self, kind: str, seed: int, url: str | None = None) -> None:
        self.kind = kind
        self.rng = random.Random(seed)
        url = url or _url()
        self.capacity = {"semaphore": 3, "lock": 1, "rwlock": RW_CAPACITY}[kind]
        if kind == "semaphore":
            self.prim: Any = interlock.Semaphore("p", 3, url=url)
        elif kind == "lock":
            self.prim = interlock.Lock("p", url=url)
        else:
            self.prim = interlock.RWLock("p", url=url)
        self.rec = Recorder()
        self.acquiring: set[asyncio.Task[Any]] = set()
        self.ops: set[asyncio.Task[Any]] = set()
        self.inside = {"permits": 0, "readers": 0, "writers": 0}
        self.cancelled_outcomes = 0
        self.granted = 0

    def _request(self) -> tuple[int, str, Callable[[], Coroutine[Any, Any, interlock.Lease]]]:
        prim = self.prim
        if self.kind == "semaphore":
            permits = self.rng.choice([1, 1, 2, 3])
            return permits, "exclusive", lambda: prim.acquire_async(permits)
        if self.kind == "lock":
            return 1, "exclusive", prim.acquire_async
        if self.rng.random() < 0.7:
            return 1, "read", prim.acquire_read_async
        return RW_CAPACITY, "write", prim.acquire_write_async

    def _enter(self, permits: int, mode: str) -> None:
        ins = self.inside
        if self.kind == "rwlock":
            ins["readers" if mode == "read" else "writers"] += 1
            assert ins["writers"] <= 1 and not (ins["writers"] and ins["readers"]), ins
        else:
            ins["permits"] += permits
            assert ins["permits"] <= self.capacity, ins

    def _leave(self, permits: int, mode: str) -> None:
        ins = self.inside
        if self.kind == "rwlock":
            ins["readers" if mode == "read" else "writers"] -= 1
        else:
            ins["permits"] -= permits

    async def one(self, client: str, patient: bool) -> None:
        """One acquire -> critical section -> release, in its own task (the owner of the grant)."""
        rng = self.rng
        permits, mode, acquire = self._request()
        style = "plain" if patient else rng.choice(["plain", "timeout_cm", "wait_for", "timeout_arg"])
        if style == "timeout_cm" and sys.version_info < (3, 11):
            style = "timeout_arg"
        me = asyncio.current_task()
        assert me is not None
        # wait_for on 3.10/3.11 runs the acquire in a task of its own, queued later than `start`: such
        # requests are kept out of the FIFO check by their client name.
        who = client + ("/wf" if style == "wait_for" else "")
        op = self.rec.acquire(who, "p", permits=permits, mode=mode)
        if not patient:  # patient waiters are never cancelled: their liveness is checked
            self.acquiring.add(me)
        try:
            if style == "plain":
                lease = await acquire()
            elif style == "timeout_cm" and sys.version_info >= (3, 11):
                async with asyncio.timeout(rng.uniform(0, 0.003)):
                    lease = await acquire()
            elif style == "wait_for":
                lease = await asyncio.wait_for(acquire(), rng.uniform(0, 0.003))
            else:
                lease = await self._with_timeout_arg(rng.uniform(0, 0.003), permits, mode)
        except (asyncio.CancelledError, TimeoutError, asyncio.TimeoutError, interlock.AcquireTimeout):
            # The library promises that a cancelled or timed-out acquire holds nothing; the final
            # idle check catches a broken promise as a leak.
            op.failed()
            self.cancelled_outcomes += 1
            raise
        finally:
            self.acquiring.discard(me)
        op.succeeded(lease.token)
        self.granted += 1
        self._enter(permits, mode)
        try:
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)  # a cancel may land here: the finally still releases
        finally:
            self._leave(permits, mode)
            with self.rec.release(who, "p", token=lease.token, permits=permits, mode=mode):
                await lease.release_async()
            if self.acquiring and rng.random() < 0.3:
                # Cancel a waiter in the same loop step as this release: its grant may be on the way.
                victim = rng.choice(sorted(self.acquiring, key=id))
                victim.cancel()

    async def _with_timeout_arg(self, timeout: float, permits: int, mode: str) -> interlock.Lease:
        if self.kind == "semaphore":
            return await self.prim.acquire_async(permits, timeout=timeout)  # type: ignore[no-any-return]
        if self.kind == "lock":
            return await self.prim.acquire_async(timeout=timeout)  # type: ignore[no-any-return]
        if mode == "read":
            return await self.prim.acquire_read_async(timeout=timeout)  # type: ignore[no-any-return]
        return await self.prim.acquire_write_async(timeout=timeout)  # type: ignore[no-any-return]

    async def worker(self, client: str, patient: bool, iterations: int) -> None:
        for _ in range(iterations):
            t = asyncio.create_task(self.one(client, patient), name=f"{client}-op")
            if not patient:
                self.ops.add(t)
            try:
                await t
            except (asyncio.CancelledError, TimeoutError, asyncio.TimeoutError, interlock.AcquireTimeout):
                pass
            finally:
                self.ops.discard(t)
            if self.rng.random() < 0.2:
                await asyncio.sleep(0)

    async def chaos(self, stop: asyncio.Event) -> None:
        rng = self.rng
        while not stop.is_set():
            for _ in range(rng.randrange(4)):
                await asyncio.sleep(0)
            if self.ops and rng.random() < 0.5:
                rng.choice(sorted(self.ops, key=id)).cancel()

    async def main(self, workers: int, iterations: int) -> None:
        stop = asyncio.Event()
        chaos = asyncio.create_task(self.chaos(stop))
        patient = [f"p{i}" for i in range(workers // 4)]
        hasty = [f"h{i}" for i in range(workers - len(patient))]
        await asyncio.gather(*(self.worker(c, c in patient, iterations) for c in patient + hasty))
        stop.set()
        await chaos
        me = asyncio.current_task()
        assert [t for t in asyncio.all_tasks() if t is not me] == [], "tasks left behind"
        self.patient = patient


@pytest.mark.parametrize("kind", ["semaphore", "lock", "rwlock"])
def test_asyncio_random_cancellation(kind: str, seed: int) -> None:
    run = _AsyncRun(kind, seed)
    asyncio.run(run.main(workers=24, iterations=scaled(60)))
    events: list[Event] = run.rec.events()
    print(f"{kind}: {run.granted} grants, {run.cancelled_outcomes} cancelled/timed-out acquires")
    assert run.granted > 0 and run.cancelled_outcomes > 0
    if kind == "rwlock":
        _assert_clean(check_rw(events), "rw exclusion/tokens")
    else:
        _assert_clean(check(events, capacity=run.capacity), "capacity/tokens")
    fifo_events = [e for e in events if not e.client.endswith("/wf")]
    _assert_clean(check_fifo(fifo_events, capacity=run.capacity), "FIFO")
    _assert_clean(check_liveness(events, clients=run.patient), "liveness of never-cancelled waiters")
    assert_idle(run.prim)


@pytest.mark.parametrize("kind", ["semaphore", "lock", "rwlock"])
def test_asyncio_random_cancellation_on_every_backend(kind: str, backend_url: str, seed: int) -> None:
    """The same run, smaller, on every backend of tests/backends.py. FIFO is not checked here: on remote
    backends a request reaches the queue some time after its ``start`` was taken."""
    run = _AsyncRun(kind, seed, backend_url)
    asyncio.run(run.main(workers=12, iterations=scaled(15)))
    events = run.rec.events()
    where = backend_url.split('?', maxsplit=1)[0]
    print(f"{kind} on {where}: {run.granted} grants, {run.cancelled_outcomes} cancelled")
    if kind == "rwlock":
        _assert_clean(check_rw(events), "rw exclusion/tokens")
    else:
        _assert_clean(check(events, capacity=run.capacity), "capacity/tokens")
    _assert_clean(check_liveness(events, clients=run.patient), "liveness of never-cancelled waiters")
    settle_deadline = time.monotonic() + 30
    while time.monotonic() < settle_deadline:  # remote backends finish cancelled requests in the background
        s = run.prim.statistics()
        if not s.holders and not s.waiters and s.available == s.capacity:
            break
        time.sleep(0.05)
    assert_idle(run.prim)

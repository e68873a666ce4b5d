"""Stress tests of the in-process backend (``memory://``), judged from recorded histories.

Threads and asyncio tasks hammer one Semaphore(2) (weighted requests of 1..2 permits), one Lock and
one RWLock; every acquire and release is recorded with :class:`interlock.testing.history.Recorder`
and the history is checked for capacity, token order, read/write exclusion, FIFO and liveness.
A cancellation stress then cancels waiting tasks at random moments (``task.cancel()``,
``asyncio.wait_for`` time-outs) while threads acquire with small random ``timeout=`` values; the
semaphore must end full, with no holder and no waiter, and the history must show no double grant.

FIFO is checked exactly over the asyncio tasks' events only: a task records its start and enters
the queue in one synchronous step (no other task runs in between), whereas a thread can be
preempted between taking its start time and queueing, which would make an exact FIFO check of
threads flaky. Dropping the threads' events only removes blockers, so the check stays sound.

``INTERLOCK_STRESS`` (default 1) multiplies the iteration counts; randomness comes from the
printed ``seed`` fixture (replay with ``INTERLOCK_SEED``).
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import interlock
from interlock import AcquireTimeout, Lease, WouldBlock
from interlock._spi import RW_CAPACITY
from interlock.testing.history import (
    Event,
    Recorder,
    check,
    check_fifo,
    check_liveness,
    check_rw,
)

pytestmark = pytest.mark.stress

SCALE = max(1, int(os.environ.get("INTERLOCK_STRESS", "1")))
LIVENESS_TIMEOUT = 60.0  # generous: a waiter not served within this is a liveness failure
N_THREADS = 4
N_TASKS = 8


def _url() -> str:
    return f"memory://stress-{uuid.uuid4().hex}"


def _tasks_only(history: list[Event]) -> list[Event]:
    return [e for e in history if e.client.startswith("task")]


def _run_mixed(
    thread_body: Callable[[str, random.Random], None],
    task_body: Callable[[str, random.Random], Coroutine[Any, Any, None]],
    seed: int,
) -> None:
    """Run N_THREADS threads and N_TASKS tasks (on the main thread's loop) at once."""
    master = random.Random(seed)
    errors: list[BaseException] = []
    start = threading.Barrier(N_THREADS + 1)

    def wrap(name: str, rng: random.Random) -> None:
        try:
            start.wait()
            thread_body(name, rng)
        except BaseException as exc:  # reported below, after every thread ended
            errors.append(exc)

    threads = [
        threading.Thread(target=wrap, args=(f"thread{i}", random.Random(master.random())), name=f"thread{i}")
        for i in range(N_THREADS)
    ]
    task_rngs = [random.Random(master.random()) for _ in range(N_TASKS)]

    async def main() -> None:
        for t in threads:
            t.start()
        await asyncio.get_running_loop().run_in_executor(None, start.wait)
        await asyncio.gather(*(task_body(f"task{i}", rng) for i, rng in enumerate(task_rngs)))

    asyncio.run(main())
    for t in threads:
        t.join(LIVENESS_TIMEOUT)
        assert not t.is_alive(), f"{t.name} did not finish"
    if errors:
        raise errors[0]


def _assert_clean(errors: list[str]) -> None:
    assert errors == [], "\n".join(errors[:20])


# --------------------------------------------------------------------------------------------
# hammering


@pytest.mark.parametrize("fair", [True, False], ids=["fair", "unfair"])
def test_semaphore_weighted_threads_and_tasks(seed: int, fair: bool) -> None:
    sem = interlock.Semaphore("sem", 2, url=_url(), fair=fair)
    rec = Recorder()
    iters = 300 * SCALE

    def thread_body(client: str, rng: random.Random) -> None:
        for _ in range(iters):
            n = rng.randint(1, 2)
            with rec.acquire(client, "sem", permits=n) as op:
                lease = sem.acquire(n, timeout=LIVENESS_TIMEOUT)
                op.token = lease.token
            for _ in range(rng.randint(0, 2)):
                time.sleep(0)  # yield the GIL inside the critical section
            with rec.release(client, "sem", token=lease.token, permits=n):
                lease.release()

    async def task_body(client: str, rng: random.Random) -> None:
        for _ in range(iters):
            n = rng.randint(1, 2)
            with rec.acquire(client, "sem", permits=n) as op:
                lease = await sem.acquire_async(n, timeout=LIVENESS_TIMEOUT)
                op.token = lease.token
            for _ in range(rng.randint(0, 2)):
                await asyncio.sleep(0)
            with rec.release(client, "sem", token=lease.token, permits=n):
                await lease.release_async()

    _run_mixed(thread_body, task_body, seed)
    history = rec.events()
    assert sum(1 for e in history if e.op == "acquire") == (N_THREADS + N_TASKS) * iters
    _assert_clean(check(history, capacity=2))
    _assert_clean(check_liveness(history))
    if fair:
        _assert_clean(check_fifo(_tasks_only(history), capacity=2))
    s = sem.statistics()
    assert (s.available, s.holders, s.waiters) == (2, (), ())


def test_lock_threads_and_tasks(seed: int) -> None:
    lock = interlock.Lock("lock", url=_url())
    rec = Recorder()
    iters = 300 * SCALE

    def thread_body(client: str, rng: random.Random) -> None:
        for _ in range(iters):
            with rec.acquire(client, "lock") as op:
                lease = lock.acquire(timeout=LIVENESS_TIMEOUT)
                op.token = lease.token
            for _ in range(rng.randint(0, 2)):
                time.sleep(0)
            with rec.release(client, "lock", token=lease.token):
                lease.release()

    async def task_body(client: str, rng: random.Random) -> None:
        for _ in range(iters):
            with rec.acquire(client, "lock") as op:
                lease = await lock.acquire_async(timeout=LIVENESS_TIMEOUT)
                op.token = lease.token
            for _ in range(rng.randint(0, 2)):
                await asyncio.sleep(0)
            with rec.release(client, "lock", token=lease.token):
                await lease.release_async()

    _run_mixed(thread_body, task_body, seed)
    history = rec.events()
    _assert_clean(check(history, capacity=1))
    _assert_clean(check_liveness(history))
    _assert_clean(check_fifo(_tasks_only(history), capacity=1))
    s = lock.statistics()
    assert (s.available, s.holders, s.waiters) == (1, (), ())
    assert not lock.locked()


def test_rwlock_threads_and_tasks(seed: int) -> None:
    rw = interlock.RWLock("rw", url=_url())
    rec = Recorder()
    iters = 300 * SCALE

    def thread_body(client: str, rng: random.Random) -> None:
        for _ in range(iters):
            write = rng.random() < 0.3
            mode, n = ("write", RW_CAPACITY) if write else ("read", 1)
            with rec.acquire(client, "rw", permits=n, mode=mode) as op:
                lease = (rw.acquire_write if write else rw.acquire_read)(timeout=LIVENESS_TIMEOUT)
                op.token = lease.token
            for _ in range(rng.randint(0, 2)):
                time.sleep(0)
            with rec.release(client, "rw", token=lease.token, permits=n, mode=mode):
                lease.release()

    async def task_body(client: str, rng: random.Random) -> None:
        for _ in range(iters):
            write = rng.random() < 0.3
            mode, n = ("write", RW_CAPACITY) if write else ("read", 1)
            with rec.acquire(client, "rw", permits=n, mode=mode) as op:
                acquire = rw.acquire_write_async if write else rw.acquire_read_async
                lease = await acquire(timeout=LIVENESS_TIMEOUT)
                op.token = lease.token
            for _ in range(rng.randint(0, 2)):
                await asyncio.sleep(0)
            with rec.release(client, "rw", token=lease.token, permits=n, mode=mode):
                await lease.release_async()

    _run_mixed(thread_body, task_body, seed)
    history = rec.events()
    # Readers share the lock, so tokens of concurrent readers need not be in any order, but every
    # grant gets a fresh token and a grant that starts after another returned gets a larger one.
    _assert_clean(check_rw(history))
    _assert_clean(check(history, capacity=RW_CAPACITY))
    _assert_clean(check_liveness(history))
    _assert_clean(check_fifo(_tasks_only(history), capacity=RW_CAPACITY))
    s = rw.statistics()
    assert (s.available, s.holders, s.waiters) == (RW_CAPACITY, (), ())


# --------------------------------------------------------------------------------------------
# cancellation


async def _cancel_round(rng: random.Random, rec: Recorder, sem: interlock.Semaphore, n_threads: int) -> None:
    """One interleaving: tasks waiting on ``sem`` are cancelled or time out at random moments
    while threads acquire with small random time-outs."""
    cap = sem.capacity
    leases: list[Lease] = []  # every grant stays referenced until it is released
    thread_errors: list[BaseException] = []

    async def hold(client: str, lease: Lease, n: int, yields: int) -> None:
        try:
            for _ in range(yields):
                await asyncio.sleep(0)
        finally:  # cancelled while holding: still give the permits back
            with rec.release(client, "sem", token=lease.token, permits=n):
                lease.release()

    async def worker(client: str, wrng: random.Random) -> None:
        n = wrng.randint(1, cap)
        how = wrng.choice(("plain", "wait_for", "timeout"))
        op = rec.acquire(client, "sem", permits=n)
        try:
            if how == "wait_for":
                lease = await asyncio.wait_for(sem.acquire_async(n), wrng.choice((0, 1e-4, 1e-3, 5e-3)))
            elif how == "timeout":
                lease = await sem.acquire_async(n, timeout=wrng.choice((0.0, 1e-4, 1e-3, 5e-3)))
            else:
                lease = await sem.acquire_async(n)
        except (asyncio.CancelledError, asyncio.TimeoutError, AcquireTimeout, WouldBlock):
            op.failed()  # the guarantee under test: a cancelled or timed-out acquire holds nothing
            raise
        op.succeeded(lease.token)
        leases.append(lease)
        await hold(client, lease, n, wrng.randint(0, 3))

    def thread_worker(client: str, trng: random.Random) -> None:
        try:
            for _ in range(5):
                n = trng.randint(1, cap)
                with rec.acquire(client, "sem", permits=n) as op:
                    try:
                        lease = sem.acquire(n, timeout=trng.choice((0.0, 1e-4, 1e-3, 5e-3)))
                    except (AcquireTimeout, WouldBlock):  # timeout=0 is a try: WouldBlock
                        op.failed()
                        continue
                    op.token = lease.token
                leases.append(lease)
                for _ in range(trng.randint(0, 2)):
                    time.sleep(0)
                with rec.release(client, "sem", token=lease.token, permits=n):
                    lease.release()
        except BaseException as exc:
            thread_errors.append(exc)

    loop = asyncio.get_running_loop()
    threads = [
        threading.Thread(target=thread_worker, args=(f"thread{i}", random.Random(rng.random())))
        for i in range(n_threads)
    ]
    tasks = [asyncio.create_task(worker(f"task{i}", random.Random(rng.random()))) for i in range(rng.randint(3, 12))]
    for t in threads:
        t.start()
    # Cancel random tasks after random numbers of loop iterations: before they ran, while queued,
    # just as a grant raced in, or while holding.
    for _ in range(rng.randint(0, len(tasks))):
        for _ in range(rng.randint(0, 4)):
            await asyncio.sleep(0)
        rng.choice(tasks).cancel()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), LIVENESS_TIMEOUT)
    for r in results:
        if isinstance(r, BaseException) and not isinstance(
            r, (asyncio.CancelledError, asyncio.TimeoutError, AcquireTimeout, WouldBlock)
        ):
            raise r

    def join_all() -> None:
        for t in threads:
            t.join(LIVENESS_TIMEOUT)

    await loop.run_in_executor(None, join_all)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    if thread_errors:
        raise thread_errors[0]
    assert all(not lease.held for lease in leases), "a lease is still held after its release"


def test_cancellation_never_leaks_or_double_grants(seed: int) -> None:
    rng = random.Random(seed)
    rounds = 150 * SCALE
    for round_no in range(rounds):
        cap = rng.randint(1, 3)
        sem = interlock.Semaphore("sem", cap, url=_url(), fair=rng.random() < 0.8)
        rec = Recorder()
        asyncio.run(_cancel_round(random.Random(rng.random()), rec, sem, n_threads=rng.randint(0, 2)))
        s = sem.statistics()
        where = f"round {round_no} (capacity {cap})"
        assert s.available == cap, f"{where}: {s.available}/{cap} permits free after the round: {s}"
        assert s.holders == (), f"{where}: holders left: {s.holders}"
        assert s.waiters == (), f"{where}: waiters left: {s.waiters}"
        history = rec.events()
        errors = check(history, capacity=cap)
        assert errors == [], f"{where}:\n" + "\n".join(errors[:20])

"""Safety the standard library does not give (issue 2, item 3), on every backend: leaked permits come
back, dead owners are detected, wait-for cycles are reported, interrupts never leak a permit."""

from __future__ import annotations

import asyncio
import gc
import signal
import threading
import time
import warnings

import pytest

import interlock
from interlock._core import reaper


def _acquire_and_drop(sem: interlock.Semaphore) -> int:
    lease = sem.acquire(timeout=10)  # this line is named in the warning
    return lease.token  # the Lease dies with this frame, still held


def test_gc_lease_returns_permits_with_warning_naming_the_site(backend_url: str) -> None:
    sem = interlock.Semaphore("gc-leak", 2, url=backend_url)
    keep = sem.acquire(timeout=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        _acquire_and_drop(sem)
        gc.collect()
    msgs = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert msgs, "no ResourceWarning for a garbage-collected Lease"
    assert "_acquire_and_drop" in msgs[0] and "test_safety.py" in msgs[0], msgs[0]
    # The dropped permit is back: both permits can be held again (keep + one more).
    again = sem.acquire(timeout=10)
    assert again.previous_owner_died
    again.release()
    keep.release()
    reaper.drain()


def test_thread_that_ends_holding_a_lock_frees_it(backend_url: str) -> None:
    lock = interlock.Lock("thread-death", url=backend_url)
    holder: list[interlock.Lease] = []  # keeps the Lease alive: only the thread's end may free it

    t = threading.Thread(target=lambda: holder.append(lock.acquire(timeout=10)), name="doomed")
    t.start()
    t.join()
    assert holder and holder[0].token > 0
    nxt = lock.acquire(timeout=10)  # would hang forever with threading.Lock
    assert nxt.previous_owner_died, "the next owner must learn that its predecessor died"
    assert nxt.token > holder[0].token
    assert not holder[0].held
    nxt.release()
    # A clean handoff afterwards is not reported as a death.
    with lock.acquire(timeout=10) as clean:
        assert not clean.previous_owner_died


def test_task_that_ends_holding_a_lock_frees_it(backend_url: str) -> None:
    lock = interlock.Lock("task-death", url=backend_url)
    kept: list[interlock.Lease] = []

    async def doomed() -> None:
        kept.append(await lock.acquire_async(timeout=10))

    async def main() -> interlock.Lease:
        await asyncio.create_task(doomed(), name="doomed-task")
        return await lock.acquire_async(timeout=10)

    nxt = asyncio.run(main())
    assert nxt.previous_owner_died
    assert nxt.token > kept[0].token
    nxt.release()


def _cycle(url: str, n: int) -> list[BaseException]:
    """n threads each hold lock i and then want lock i+1 (mod n): exactly one must get DeadlockError,
    the others finish once it backs off."""
    locks = [interlock.Lock(f"cycle{n}-{i}", url=url) for i in range(n)]
    holding = threading.Barrier(n)
    errors: list[BaseException] = []
    done: list[int] = []

    def worker(i: int) -> None:
        with locks[i]:
            holding.wait()
            time.sleep(0.05 * i)  # the last one closes the cycle
            try:
                with locks[(i + 1) % n].acquire(timeout=30):
                    done.append(i)
            except interlock.DeadlockError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), name=f"w{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert len(done) == n - 1
    return errors


@pytest.mark.parametrize("n", [2, 3])
def test_wait_for_cycle_raises_deadlock_error(n: int) -> None:
    errors = _cycle(f"memory://cycle-{n}", n)
    assert len(errors) == 1
    msg = str(errors[0])
    for i in range(n):
        assert f"cycle{n}-{i}" in msg, msg
    assert len(errors[0].cycle) == n


def test_lock_contention_is_never_reported_as_deadlock(backend_url: str) -> None:
    """Regression: a waiter that was just granted (but not yet running) once looked like 'holds X and
    waits for X' and the next waiter got a false DeadlockError."""
    lock = interlock.Lock("busy", url=backend_url)
    count = 0
    failures: list[BaseException] = []

    def add() -> None:
        nonlocal count
        try:
            for _ in range(20):
                with lock:
                    seen = count
                    time.sleep(0)
                    count = seen + 1
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=add) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures[:1]
    assert count == 240


def test_keyboard_interrupt_in_a_waiting_thread_leaks_nothing() -> None:
    url = "memory://interrupt"
    sem = interlock.Semaphore("kbi", 1, url=url)
    holder = sem.acquire()
    interrupted = False
    main = threading.main_thread().ident
    assert main is not None and threading.current_thread() is threading.main_thread()

    def interrupter() -> None:
        while not sem.statistics().waiters:
            time.sleep(0.001)
        # A real SIGINT to the main thread, as Ctrl-C sends: it interrupts the blocked wait itself.
        signal.pthread_kill(main, signal.SIGINT)

    t = threading.Thread(target=interrupter)
    t.start()
    try:
        sem.acquire(timeout=30)
    except KeyboardInterrupt:
        interrupted = True
    t.join()
    assert interrupted
    st = sem.statistics()
    assert not st.waiters and st.available == 0  # the interrupted waiter left the queue
    holder.release()
    st = sem.statistics()
    assert st.available == 1 and not st.holders  # and nothing was granted to it behind our back

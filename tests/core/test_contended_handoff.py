"""The contended handoff of memory://: a release hands the permits to the head waiter(s) in FIFO order.

On the native channel the handoff and a semaphore's blocking wait run in C (the "contended handoff"
section of ``_speedups.c``), which calls the Python methods for every case it does not handle (a task at
the head of the queue, timeouts, owned primitives, exceptions while blocked). Each test runs on the
native channel and on its pure-Python twin (``?native=0``) and expects the same behaviour of both.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import uuid
import warnings
from typing import Any

import pytest
from tests.contract.helpers import wait_until, wait_waiters

import interlock
from interlock.backends import memory

IMPLS = ["native", "pure"]


def _url(impl: str) -> str:
    label = f"memory://handoff-{uuid.uuid4().hex}"
    return label if impl == "native" else label + "?native=0"


def _start_queued(sem: Any, n: int, body: Any) -> list[threading.Thread]:
    """Start ``n`` threads that block in ``body(i)``, one at a time, so the queue order is 0..n-1."""
    threads = []
    for i in range(n):
        t = threading.Thread(target=body, args=(i,), daemon=True)
        t.start()
        wait_waiters(sem, i + 1)
        threads.append(t)
    return threads


def _join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(30)
        assert not t.is_alive()


@pytest.mark.skipif(not memory.accelerated(), reason="the native accelerator is not built")
def test_native_channel_uses_the_c_handoff() -> None:
    from interlock import _speedups

    sem = interlock.Semaphore("h", 1, url=_url("native"))
    assert type(sem._ch).acquire is _speedups.ChannelState._acquire_contended
    assert type(sem._ch)._release_py is _speedups.ChannelState._release_contended
    pure = interlock.Semaphore("h", 1, url=_url("pure"))
    assert type(pure._ch).acquire is memory._MemoryChannelBase.acquire


@pytest.mark.parametrize("impl", IMPLS)
def test_grants_follow_queue_order_and_tokens_increase(impl: str) -> None:
    """Grant order is token order (tokens are drawn at the grant): it must be the queue order."""
    sem = interlock.Semaphore("fifo", 2, url=_url(impl))
    held = [sem.acquire(), sem.acquire()]
    grants: list[tuple[int, int]] = []
    lock = threading.Lock()

    def body(i: int) -> None:
        with sem as lease, lock:
            grants.append((lease.token, i))

    threads = _start_queued(sem, 6, body)
    for lease in held:
        lease.release()
    _join(threads)
    grants.sort()
    assert [i for _tok, i in grants] == list(range(6))
    assert grants[0][0] > max(h.token for h in held)
    stats = sem.statistics()
    assert stats.available == 2 and not stats.holders and not stats.waiters


@pytest.mark.parametrize("impl", IMPLS)
def test_head_of_line_blocks_smaller_requests(impl: str) -> None:
    """A release that frees too little for the head grants nobody, even if a later request fits."""
    sem = interlock.Semaphore("hol", 3, url=_url(impl))
    held = [sem.acquire(), sem.acquire(), sem.acquire()]
    got: list[str] = []

    def body(i: int) -> None:
        with sem.acquire(2 if i == 0 else 1):
            got.append(f"w{i}")

    threads = _start_queued(sem, 2, body)
    held[0].release()  # 1 free: the head wants 2, so the waiter wanting 1 must not pass it
    assert sem.statistics().available == 1 and len(sem.statistics().waiters) == 2
    held[1].release()  # 2 free: the head goes first
    _join(threads[:1])
    held[2].release()
    _join(threads)
    assert got[0] == "w0" and sorted(got) == ["w0", "w1"]


@pytest.mark.parametrize("impl", IMPLS)
def test_partial_release_hands_off_what_it_frees(impl: str) -> None:
    sem = interlock.Semaphore("part", 3, url=_url(impl))
    big = sem.acquire(3)
    got = threading.Event()

    def body(i: int) -> None:
        with sem:
            got.set()

    threads = _start_queued(sem, 1, body)
    sem._ch.release(big, 1)  # keep 2, give 1 to the waiter
    assert got.wait(30)
    _join(threads)
    stats = sem.statistics()
    assert [h.permits for h in stats.holders] == [2] and stats.available == 1
    big.release()
    assert sem.statistics().available == 3


@pytest.mark.parametrize("impl", IMPLS)
def test_a_task_in_the_queue_keeps_its_place(impl: str) -> None:
    """The native handoff serves threads at the head itself and passes a task at the head to Python."""
    sem = interlock.Semaphore("mixed", 1, url=_url(impl))
    first = sem.acquire()
    order: list[str] = []
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    loop_thread.start()

    async def task_body() -> None:
        async with sem:
            order.append("task")

    def thread_body(i: int) -> None:
        with sem:
            order.append(f"thread{i}")

    try:
        t0 = _start_queued(sem, 1, thread_body)
        fut = asyncio.run_coroutine_threadsafe(task_body(), loop)
        wait_waiters(sem, 2)
        t1 = threading.Thread(target=thread_body, args=(1,), daemon=True)
        t1.start()
        wait_waiters(sem, 3)
        first.release()
        fut.result(30)
        _join([*t0, t1])
    finally:
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join(30)
        loop.close()
    assert order == ["thread0", "task", "thread1"]
    assert sem.statistics().available == 1


@pytest.mark.parametrize("impl", IMPLS)
def test_abandoned_lease_is_handed_on_and_reported(impl: str) -> None:
    """A holder that drops its Lease: the finalizer's release hands the permit to the queued thread,
    whose grant says that the previous owner died."""
    sem = interlock.Semaphore("dead", 1, url=_url(impl))
    lease: Any = sem.acquire()
    flags: list[bool] = []

    def body(i: int) -> None:
        with sem.acquire() as got:
            flags.append(got.previous_owner_died)

    threads = _start_queued(sem, 1, body)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del lease
        gc.collect()
    _join(threads)
    assert flags == [True]
    wait_until(lambda: sem.statistics().available == 1, what="the permit back")


@pytest.mark.parametrize("impl", IMPLS)
def test_timeouts_and_doomed_requests_still_raise(impl: str) -> None:
    sem = interlock.Semaphore("to", 1, url=_url(impl))
    with sem:
        with pytest.raises(interlock.AcquireTimeout):
            sem.acquire(timeout=0.01)
        with pytest.raises(interlock.WouldBlock):
            sem.acquire(blocking=False)
    with pytest.raises(ValueError):
        sem.acquire(2)
    assert not sem.statistics().waiters and sem.statistics().available == 1


@pytest.mark.parametrize("impl", IMPLS)
def test_blocking_wait_inside_a_running_loop_raises(impl: str) -> None:
    sem = interlock.Semaphore("loop", 1, url=_url(impl))

    async def main() -> None:
        with sem, pytest.raises(interlock.BlockingCallInEventLoop):
            sem.acquire()

    asyncio.run(main())
    assert not sem.statistics().waiters and sem.statistics().available == 1


@pytest.mark.parametrize("impl", IMPLS)
def test_tasks_of_the_releasing_loop_are_served_in_order(impl: str) -> None:
    """A release from a task hands the permit to queued tasks of the same loop (the native handoff
    resolves their futures itself), in queue order."""
    sem = interlock.Semaphore("tasks", 1, url=_url(impl))
    grants: list[tuple[int, int]] = []

    async def body(i: int) -> None:
        async with sem as lease:
            grants.append((lease.token, i))
            await asyncio.sleep(0)

    async def main() -> None:
        async with sem:
            tasks = []
            for i in range(5):
                tasks.append(asyncio.create_task(body(i)))
                while len(sem.statistics().waiters) < i + 1:
                    await asyncio.sleep(0)
        await asyncio.gather(*tasks)

    asyncio.run(main())
    grants.sort()
    assert [i for _tok, i in grants] == list(range(5))
    assert sem.statistics().available == 1


@pytest.mark.parametrize("impl", IMPLS)
def test_a_cancelled_task_granted_before_it_ran_passes_the_permit_on(impl: str) -> None:
    """The head task is cancelled (its future is done) and, before it runs, a release grants it: the
    handoff must not resolve the future, and the task, on seeing CancelledError, gives the grant on."""
    sem = interlock.Semaphore("cancel", 1, url=_url(impl))
    got: list[str] = []

    async def body(name: str) -> None:
        async with sem:
            got.append(name)

    async def main() -> None:
        first = await sem.acquire_async()
        a = asyncio.create_task(body("a"))
        b = asyncio.create_task(body("b"))
        while len(sem.statistics().waiters) < 2:
            await asyncio.sleep(0)
        a.cancel()
        first.release()  # same loop iteration: `a` is still queued, its future already cancelled
        with pytest.raises(asyncio.CancelledError):
            await a
        await b

    asyncio.run(main())
    assert got == ["b"]
    stats = sem.statistics()
    assert stats.available == 1 and not stats.holders and not stats.waiters


@pytest.mark.parametrize("impl", IMPLS)
def test_interrupted_waits_never_spoil_the_next_wait(impl: str) -> None:
    """A thread keeps the waiter of its last wait for the next one (native). A wait ended by
    KeyboardInterrupt, even one that a grant raced with, must not leave a waiter whose lock is open:
    every later contended wait of the thread still blocks until it is granted, in queue order."""
    import signal
    import time

    assert threading.current_thread() is threading.main_thread()
    main = threading.main_thread().ident
    assert main is not None
    sem = interlock.Semaphore("kbi-reuse", 1, url=_url(impl))
    interrupted = raced = 0
    for i in range(60):
        holder = sem.acquire()
        race = i % 2 == 1  # odd rounds: a grant races with the interrupt

        def interrupter(holder: Any = holder, race: bool = race) -> None:
            wait_waiters(sem, 1)
            # the signal first: the grant then lands while the woken thread waits for the GIL
            signal.pthread_kill(main, signal.SIGINT)
            if race:
                holder.release()

        t = threading.Thread(target=interrupter)
        t.start()
        try:
            with sem:
                raced += 1  # granted before the signal was handled: the interrupt comes after
                time.sleep(0.01)
        except KeyboardInterrupt:
            interrupted += 1
        t.join()
        holder.release()
        st = sem.statistics()
        assert st.available == 1 and not st.holders and not st.waiters, st
        # the next contended wait of this thread blocks until a release grants it
        holder = sem.acquire()
        got: list[int] = []

        def releaser(holder: Any = holder, got: list[int] = got) -> None:
            wait_waiters(sem, 1)
            got.append(1)
            holder.release()

        t = threading.Thread(target=releaser)
        t.start()
        with sem as lease:
            assert got == [1] and lease.held
        t.join()
    assert interrupted > 0
    assert sem.statistics().available == 1

"""Contract: asyncio specifics -- cancellation and timeouts never leak or double-grant (G5), blocking
calls on a loop thread raise, and one object serves several event loops."""

from __future__ import annotations

import asyncio
import functools
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import interlock
from contract.helpers import LONG, assert_idle, await_until, settle, unique


def _names(url: str) -> tuple[interlock.Lock, interlock.Semaphore, interlock.RWLock]:
    return (
        interlock.Lock(unique("lock"), url=url),
        interlock.Semaphore(unique("sem"), 2, url=url),
        interlock.RWLock(unique("rw"), url=url),
    )


async def _waiters(prim: object, n: int) -> None:
    await await_until(lambda: len(prim.statistics().waiters) == n, what=f"{n} waiters")  # type: ignore[attr-defined]


def test_cancel_while_queued(backend_url: str) -> None:
    lock, sem, _ = _names(backend_url)

    async def main() -> None:
        for prim, permits in ((lock, None), (sem, 2)):
            args = () if permits is None else (permits,)
            held = await prim.acquire_async(*args)
            waiter = asyncio.create_task(prim.acquire_async(*args))
            await _waiters(prim, 1)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert waiter.cancelled()
            await _waiters(prim, 0)
            await held.release_async()
            assert_idle(prim)
            again = await prim.acquire_async(*args, timeout=LONG)
            await again.release_async()

    asyncio.run(main())


def test_cancel_races_with_grant(backend_url: str) -> None:
    """The waiter is granted and cancelled before it runs: the grant passes to the next waiter."""
    lock, sem, rw = _names(backend_url)

    async def main() -> None:
        for prim in (lock, sem, rw):
            acq: Callable[[], Coroutine[Any, Any, interlock.Lease]]
            if prim is rw:
                acq = rw.acquire_write_async
            elif prim is sem:
                acq = functools.partial(sem.acquire_async, 2)  # all permits
            else:
                acq = lock.acquire_async
            first = await acq()
            victim = asyncio.create_task(acq())
            await _waiters(prim, 1)
            nxt = asyncio.create_task(acq())
            await _waiters(prim, 2)
            await first.release_async()
            victim.cancel()  # same loop step as the release: the grant may already be on its way
            try:
                lease = await victim
            except asyncio.CancelledError:
                lease = None
            if lease is not None:  # the grant arrived before the cancel: it is the victim's to release
                await lease.release_async()
            lease2 = await asyncio.wait_for(nxt, LONG)
            assert lease2.token > first.token
            await lease2.release_async()
            assert_idle(prim)

    asyncio.run(main())


def test_asyncio_timeout_and_wait_for(backend_url: str) -> None:
    lock, sem, rw = _names(backend_url)

    async def hold(coro: object, release: asyncio.Event, got: asyncio.Event) -> None:
        lease = await coro  # type: ignore[misc]
        got.set()
        await release.wait()
        await lease.release_async()

    async def held_by_other_task(coro: object) -> tuple[asyncio.Task[None], asyncio.Event]:
        release, got = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(hold(coro, release, got))
        await got.wait()
        return task, release

    async def main() -> None:
        holder, release = await held_by_other_task(lock.acquire_async())
        if sys.version_info >= (3, 11):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await lock.acquire_async()
        with pytest.raises((asyncio.TimeoutError, TimeoutError)):
            await asyncio.wait_for(lock.acquire_async(), 0.2)
        with pytest.raises(interlock.AcquireTimeout):
            await lock.acquire_async(timeout=0.2)
        await _waiters(lock, 0)
        release.set()
        await holder
        holder, release = await held_by_other_task(rw.acquire_write_async())
        with pytest.raises(interlock.AcquireTimeout):
            async with rw.read(timeout=0.2):
                pass
        release.set()
        await holder
        holder, release = await held_by_other_task(sem.acquire_async(2))
        with pytest.raises((asyncio.TimeoutError, TimeoutError)):
            await asyncio.wait_for(sem.acquire_async(1), 0.2)
        release.set()
        await holder
        for prim in (lock, sem, rw):
            assert_idle(prim)

    asyncio.run(main())


def test_taskgroup_failure_cancels_waiters(backend_url: str) -> None:
    if sys.version_info < (3, 11):
        pytest.skip("TaskGroup needs Python 3.11")
    sem = interlock.Semaphore(unique("sem"), 1, url=backend_url)

    async def main() -> None:
        held = await sem.acquire_async()

        async def waiter() -> None:
            async with sem:
                pass

        async def failer() -> None:
            await _waiters(sem, 3)
            raise ValueError("boom")

        if sys.version_info >= (3, 11):  # (the test is skipped before 3.11)
            with pytest.raises(BaseExceptionGroup):  # noqa: F821 - a builtin on 3.11+
                async with asyncio.TaskGroup() as tg:
                    for _ in range(3):
                        tg.create_task(waiter())
                    tg.create_task(failer())
        await _waiters(sem, 0)
        await held.release_async()
        assert_idle(sem)

    asyncio.run(main())


def test_async_with_all_primitives(backend_url: str) -> None:
    lock, sem, rw = _names(backend_url)
    rlock = interlock.RLock(unique("rlock"), url=backend_url)

    async def main() -> None:
        async with lock as lease:
            assert lease.held and lock.locked()
        assert not lease.held
        async with sem as l1, sem as l2:
            assert sem.statistics().available == 0 and l1.token < l2.token
        async with rlock, rlock:
            assert len(rlock.statistics().holders) == 1
        async with rw.read() as r1, rw.read() as r2:
            assert r1.mode == r2.mode == "shared"
        async with rw.write() as w:
            await w.downgrade_async()
            assert w.mode == "shared"
        async with await sem.acquire_async(2) as both:
            assert both.permits == 2
        for prim in (lock, sem, rw, rlock):
            assert_idle(prim)

    asyncio.run(main())


def test_blocking_call_in_event_loop(backend_url: str) -> None:
    """A blocking acquire on a thread whose loop runs raises instead of freezing the loop."""
    lock, sem, rw = _names(backend_url)
    holder_ready = threading.Event()
    done = threading.Event()
    leases: list[interlock.Lease] = []

    def holder() -> None:
        leases.extend([lock.acquire(), sem.acquire(2), rw.acquire_write()])
        holder_ready.set()
        done.wait(LONG)
        for le in leases:
            le.release()

    t = threading.Thread(target=holder)
    t.start()
    assert holder_ready.wait(LONG)

    async def main() -> None:
        calls: list[Callable[[], object]] = [lock.acquire, sem.acquire, rw.acquire_read,
                                             lambda: lock.acquire(timeout=5), lambda: sem.acquire(timeout=5)]
        for call in calls:
            with pytest.raises(interlock.BlockingCallInEventLoop) as ei:
                call()
            assert isinstance(ei.value, RuntimeError)
            assert "async" in str(ei.value)
        with pytest.raises(interlock.BlockingCallInEventLoop), lock:
            pass
        with pytest.raises(interlock.BlockingCallInEventLoop), rw.read():
            pass

    try:
        asyncio.run(main())
    finally:
        done.set()
        t.join(LONG)
    for prim in (lock, sem, rw):
        assert_idle(prim)


def test_two_event_loops_share_one_primitive(backend_url: str) -> None:
    """Tasks of two loops in two threads queue on one semaphore; never more than 2 inside."""
    sem = interlock.Semaphore(unique("sem"), 2, url=backend_url)
    inside = 0
    peak = 0
    guard = threading.Lock()
    errors: list[BaseException] = []

    async def worker() -> None:
        nonlocal inside, peak
        for _ in range(5):
            async with sem:
                with guard:
                    inside += 1
                    peak = max(peak, inside)
                await asyncio.sleep(0)
                with guard:
                    inside -= 1

    def loop_thread() -> None:
        async def main() -> None:
            await asyncio.gather(*(worker() for _ in range(6)))

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=loop_thread) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert 1 <= peak <= 2
    assert_idle(sem)


def test_lease_returned_through_a_helper_task_stays_held(backend_url: str) -> None:
    """``wait_for`` (a helper task on 3.10/3.11), ``create_task`` and ``gather`` run the acquire in a task
    that ends by returning the Lease: that hands the grant over, it does not abandon it."""
    lock, _, rw = _names(backend_url)

    async def main() -> None:
        for get in (
            lambda: asyncio.wait_for(lock.acquire_async(), LONG),
            lambda: asyncio.create_task(lock.acquire_async()),
            lambda: asyncio.create_task(rw.acquire_write_async()),
        ):
            lease = await get()
            for _ in range(5):
                await asyncio.sleep(0)  # let the helper task's done-callbacks run
            await asyncio.to_thread(settle)
            assert lease.held, "the grant was reclaimed as if its owner had died"
            prim = rw if lease.mode == "exclusive" and lease.permits > 1 else lock
            assert prim.locked()
            with pytest.raises(interlock.WouldBlock):
                await asyncio.create_task(_nonblocking(prim))
            await lease.release_async()
            assert_idle(prim)
        leases = await asyncio.gather(rw.acquire_read_async(), rw.acquire_read_async())
        await asyncio.to_thread(settle)
        assert all(le.held for le in leases) and len(rw.statistics().holders) == 2
        for le in leases:
            await le.release_async()
        assert_idle(rw)

    asyncio.run(main())


async def _nonblocking(prim: object) -> interlock.Lease:
    if isinstance(prim, interlock.RWLock):
        return await prim.acquire_read_async(blocking=False)
    return await prim.acquire_async(blocking=False)  # type: ignore[attr-defined, no-any-return]

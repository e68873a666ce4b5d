"""Test helpers shared by the contract, core, model and stress suites (public API only).

**Actors.** An :class:`Actor` is one long-lived owner -- a thread (``kind="thread"``) or an asyncio task
(``kind="task"``) on a shared event loop running in its own thread -- that executes commands sent from
the test's thread and returns ``concurrent.futures.Future`` results. Because the actor lives across
commands, the locks it acquires stay owned by it (a task per command would end, and task death frees
its locks). The same test body drives threads or tasks: ``actor.acquire(sem, 2)`` calls
``sem.acquire(2)`` on a thread actor and ``await sem.acquire_async(2)`` on a task actor.

**Waiting.** :func:`wait_until` polls a predicate (usually over ``statistics()``) until it holds or a
generous deadline passes. Tests use it to know that a waiter is queued before the next step, so their
assertions follow from recorded order, never from sleeping and hoping.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import itertools
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

# Generous bounds: noisy 2-core CI machines and remote backends. Liveness only, never an oracle.
LONG = 20.0
# A timeout that is certain to expire while the permit stays held.
SHORT = 0.3

_ids = itertools.count()

Fut = concurrent.futures.Future[Any]


def wait_until(pred: Callable[[], bool], timeout: float = LONG, what: str = "condition") -> None:
    """Poll ``pred`` until it returns true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


async def await_until(pred: Callable[[], bool], timeout: float = LONG, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.002)


def n_waiters(prim: Any) -> int:
    return len(prim.statistics().waiters)


def n_holders(prim: Any) -> int:
    return len(prim.statistics().holders)


def wait_waiters(prim: Any, n: int, timeout: float = LONG) -> None:
    wait_until(lambda: n_waiters(prim) == n, timeout, f"{n} waiter(s) queued on {prim.name!r}")


def assert_idle(prim: Any) -> None:
    """Nothing held, nobody waiting, every permit back (after the reaper had its chance)."""
    s = prim.statistics()
    if s.holders or s.waiters or s.available != s.capacity:
        settle()
        s = prim.statistics()
    assert s.holders == (), f"holders left: {s.holders}"
    assert s.waiters == (), f"waiters left: {s.waiters}"
    assert s.available == s.capacity, f"permits leaked: {s.available}/{s.capacity} available"


def settle() -> None:
    """Collect garbage and let the reaper return abandoned leases."""
    gc.collect()
    try:
        from interlock._core import reaper

        reaper.drain()
    except ImportError:  # pragma: no cover - reaper is an implementation detail
        time.sleep(0.1)


def unique(prefix: str = "n") -> str:
    return f"{prefix}-{next(_ids)}"


# ------------------------------------------------------------------------------------------------
# actors


class _Loop:
    """One event loop in a daemon thread, shared by every task actor of a test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="actor-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def close(self) -> None:
        async def _cancel_all() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(_cancel_all(), self.loop).result(LONG)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(LONG)
        self.loop.close()


class Actor:
    """One owner (a thread or a task) executing commands in order. See the module docstring."""

    def __init__(self, kind: str, name: str, loop: _Loop | None = None) -> None:
        assert kind in ("thread", "task")
        self.kind = kind
        self.name = name
        self._thread_q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._loop = loop
        self._task_q: asyncio.Queue[Any] | None = None
        self._thread: threading.Thread | None = None
        if kind == "thread":
            self._thread = threading.Thread(target=self._thread_main, name=name, daemon=True)
            self._thread.start()
        else:
            assert loop is not None

            async def _start() -> None:
                self._task_q = asyncio.Queue()
                asyncio.get_running_loop().create_task(self._task_main(), name=name)

            asyncio.run_coroutine_threadsafe(_start(), loop.loop).result(LONG)

    # -- plumbing ---------------------------------------------------------------------------------
    def _thread_main(self) -> None:
        while True:
            item = self._thread_q.get()
            if item is None:
                return
            fut, sync_fn, _ = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(sync_fn())
            except BaseException as exc:
                fut.set_exception(exc)

    async def _task_main(self) -> None:
        assert self._task_q is not None
        while True:
            item = await self._task_q.get()
            if item is None:
                return
            fut, _, async_fn = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(await async_fn())
            except asyncio.CancelledError as exc:
                fut.set_exception(exc)
                raise
            except BaseException as exc:
                fut.set_exception(exc)

    def do(self, sync_fn: Callable[[], Any], async_fn: Callable[[], Awaitable[Any]]) -> Fut:
        """Run ``sync_fn()`` on a thread actor or ``await async_fn()`` on a task actor."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        item = (fut, sync_fn, async_fn)
        if self.kind == "thread":
            self._thread_q.put(item)
        else:
            assert self._loop is not None and self._task_q is not None
            self._loop.loop.call_soon_threadsafe(self._task_q.put_nowait, item)
        return fut

    def run(self, sync_fn: Callable[[], Any], async_fn: Callable[[], Awaitable[Any]], timeout: float = LONG) -> Any:
        return self.do(sync_fn, async_fn).result(timeout)

    def stop(self) -> None:
        if self.kind == "thread":
            self._thread_q.put(None)
            assert self._thread is not None
            self._thread.join(LONG)
        else:
            assert self._loop is not None
            if self._task_q is not None and self._loop.loop.is_running():
                self._loop.loop.call_soon_threadsafe(self._task_q.put_nowait, None)

    # -- commands (each returns a Future) --------------------------------------------------------
    def acquire(self, prim: Any, permits: int | None = None, *, timeout: float | None = None,
                blocking: bool = True) -> Fut:
        """``prim.acquire([permits], timeout=, blocking=)`` or its async twin."""
        kw: dict[str, Any] = {"timeout": timeout, "blocking": blocking}
        args = () if permits is None else (permits,)

        async def a() -> Any:
            return await prim.acquire_async(*args, **kw)

        return self.do(lambda: prim.acquire(*args, **kw), a)

    def acquire_read(self, rw: Any, *, timeout: float | None = None, blocking: bool = True) -> Fut:
        async def a() -> Any:
            return await rw.acquire_read_async(timeout=timeout, blocking=blocking)

        return self.do(lambda: rw.acquire_read(timeout=timeout, blocking=blocking), a)

    def acquire_write(self, rw: Any, *, timeout: float | None = None, blocking: bool = True) -> Fut:
        async def a() -> Any:
            return await rw.acquire_write_async(timeout=timeout, blocking=blocking)

        return self.do(lambda: rw.acquire_write(timeout=timeout, blocking=blocking), a)

    def release(self, lease: Any) -> Fut:
        async def a() -> None:
            await lease.release_async()

        return self.do(lease.release, a)

    def prim_release(self, prim: Any, *args: Any) -> Fut:
        """``lock.release()`` / ``sem.release(n)`` (facade release) or the async twin."""

        async def a() -> None:
            await prim.release_async(*args)

        return self.do(lambda: prim.release(*args), a)

    def enter(self, cm: Any) -> Fut:
        async def a() -> Any:
            return await cm.__aenter__()

        return self.do(cm.__enter__, a)

    def exit(self, cm: Any, exc: BaseException | None = None) -> Fut:
        et = type(exc) if exc is not None else None

        async def a() -> Any:
            return await cm.__aexit__(et, exc, None)

        return self.do(lambda: cm.__exit__(et, exc, None), a)

    def downgrade(self, lease: Any) -> Fut:
        async def a() -> None:
            await lease.downgrade_async()

        return self.do(lease.downgrade, a)


class Actors:
    """A set of actors of the given flavour: ``thread``, ``task``, or ``mixed`` (alternating)."""

    def __init__(self, flavour: str) -> None:
        assert flavour in ("thread", "task", "mixed")
        self.flavour = flavour
        self._loop: _Loop | None = None
        self._all: list[Actor] = []

    def new(self, name: str | None = None, kind: str | None = None) -> Actor:
        i = len(self._all)
        if kind is None:
            kind = self.flavour if self.flavour != "mixed" else ("thread", "task")[i % 2]
        if kind == "task" and self._loop is None:
            self._loop = _Loop()
        actor = Actor(kind, name or f"actor{i}-{kind}", self._loop)
        self._all.append(actor)
        return actor

    def many(self, n: int) -> list[Actor]:
        return [self.new() for _ in range(n)]

    def close(self) -> None:
        for a in self._all:
            a.stop()
        if self._loop is not None:
            self._loop.close()


def actors_cm(flavour: str) -> Iterator[Actors]:
    """Generator for fixtures (``yield from actors_cm(...)``)."""
    acts = Actors(flavour)
    try:
        yield acts
    finally:
        acts.close()


actors_ctx = contextlib.contextmanager(actors_cm)

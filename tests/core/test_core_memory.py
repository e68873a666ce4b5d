"""memory:// specifics beyond test_safety.py: leak warnings in debug mode, dead owners with queued waiters,
deadlock cycles of tasks and of threads with tasks, errors raised for real (typed, helpful, picklable),
and bad input refused before any state is created."""

from __future__ import annotations

import asyncio
import gc
import pickle
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator

import pytest

import interlock
from contract.helpers import (
    LONG,
    Actors,
    actors_cm,
    actors_ctx,
    assert_idle,
    await_until,
    settle,
    wait_until,
    wait_waiters,
)
from interlock import _lease


def _url() -> str:
    return f"memory://core-{uuid.uuid4().hex}"


@pytest.fixture
def threads() -> Iterator[Actors]:
    yield from actors_cm("thread")


@pytest.fixture
def tasks() -> Iterator[Actors]:
    yield from actors_cm("task")


# -- leaked leases ------------------------------------------------------------------------------------


def _drop_write_lease(rw: interlock.RWLock) -> None:
    rw.acquire_write(timeout=10)  # the Lease is dropped at once, still held


def test_debug_mode_warning_names_the_exact_line() -> None:
    rw = interlock.RWLock("debug-site", url=_url())
    _lease.set_debug(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            _drop_write_lease(rw)
            gc.collect()
    finally:
        _lease.set_debug(False)
    msgs = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert msgs, "no ResourceWarning for a dropped write lease"
    line = _drop_write_lease.__code__.co_firstlineno + 1
    assert f"test_core_memory.py:{line} in _drop_write_lease()" in msgs[0], msgs[0]
    assert "rwlock 'debug-site'" in msgs[0]
    settle()
    lease = rw.acquire_write(blocking=False)  # the writer's permits all came back
    assert lease.previous_owner_died
    lease.release()
    assert_idle(rw)


def test_released_lease_is_collected_silently() -> None:
    sem = interlock.Semaphore("quiet", 1, url=_url())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        sem.acquire().release()
        with sem:
            pass
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    again = sem.acquire()
    assert not again.previous_owner_died
    again.release()


# -- dead owners --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lock", "rlock", "rwlock"])
def test_dead_thread_hands_the_lock_to_a_queued_waiter(kind: str, threads: Actors) -> None:
    url = _url()
    prim: interlock.Lock | interlock.RWLock
    if kind == "rwlock":
        prim = interlock.RWLock("dead-owner", url=url)
    else:
        prim = (interlock.RLock if kind == "rlock" else interlock.Lock)("dead-owner", url=url)
    kept: list[interlock.Lease] = []
    started = threading.Event()
    finish = threading.Event()

    def doomed() -> None:
        kept.append(prim.acquire_write() if isinstance(prim, interlock.RWLock) else prim.acquire())
        started.set()
        finish.wait(LONG)  # then end without releasing

    t = threading.Thread(target=doomed, name="doomed-holder")
    t.start()
    assert started.wait(LONG)
    waiter = threads.new("next-owner")
    fut = waiter.acquire_write(prim) if isinstance(prim, interlock.RWLock) else waiter.acquire(prim)
    wait_waiters(prim, 1)
    s = prim.statistics()
    assert s.holders[0].owner == "thread 'doomed-holder'"
    assert s.waiters[0].owner == "thread 'next-owner'"
    finish.set()
    t.join(LONG)
    lease = fut.result(LONG)  # woken by the death, not by polling
    assert lease.previous_owner_died and lease.token > kept[0].token
    assert not kept[0].held
    waiter.release(lease).result(LONG)
    assert_idle(prim)


def test_dead_thread_keeps_semaphore_permits_whose_lease_lives_on() -> None:
    """Semaphore permits are not owned: a Lease handed to someone else survives its acquirer's thread."""
    sem = interlock.Semaphore("handed-over", 2, url=_url())
    box: list[interlock.Lease] = []
    t = threading.Thread(target=lambda: box.append(sem.acquire()))
    t.start()
    t.join(LONG)
    settle()
    assert box[0].held and sem.statistics().available == 1
    box[0].release()  # released by the thread it was handed to
    assert_idle(sem)


def test_task_that_fails_while_holding_frees_the_lock() -> None:
    lock = interlock.Lock("task-fails", url=_url())

    async def doomed() -> None:
        lease = await lock.acquire_async()
        raise RuntimeError(f"crashed inside the critical section (token {lease.token})")

    async def main() -> interlock.Lease:
        with pytest.raises(RuntimeError):
            await asyncio.create_task(doomed())
        return await lock.acquire_async(timeout=LONG)

    lease = asyncio.run(main())
    assert lease.previous_owner_died
    lease.release()
    assert_idle(lock)


def test_cancelled_task_holding_a_write_lock_frees_it() -> None:
    rw = interlock.RWLock("task-cancelled", url=_url())

    async def main() -> None:
        got = asyncio.Event()

        async def holder() -> None:
            lease = await rw.acquire_write_async()  # kept referenced: only the task's end frees it
            got.set()
            await asyncio.sleep(3600)
            lease.release()  # pragma: no cover - cancelled before

        t = asyncio.create_task(holder())
        await got.wait()
        reader = asyncio.create_task(rw.acquire_read_async())
        await await_until(lambda: bool(rw.statistics().waiters), what="reader queued")
        t.cancel()
        lease = await asyncio.wait_for(reader, LONG)
        assert lease.previous_owner_died
        await lease.release_async()

    asyncio.run(main())
    assert_idle(rw)


# -- deadlocks ----------------------------------------------------------------------------------------


def _deadlock_ring(actors: list[interlock.Lock], owners: list, names: list[str]) -> interlock.DeadlockError:  # type: ignore[type-arg]
    """owners[i] holds lock i; owners[0..n-2] block on lock i+1; the last one closes the ring."""
    n = len(owners)
    leases = [owners[i].acquire(actors[i]).result(LONG) for i in range(n)]
    futs = []
    for i in range(n - 1):
        futs.append(owners[i].acquire(actors[i + 1]))
        wait_waiters(actors[i + 1], 1)
    with pytest.raises(interlock.DeadlockError) as ei:
        owners[n - 1].acquire(actors[0], timeout=LONG).result(LONG)
    # Back off from the end of the ring: every blocked owner is then served in turn.
    owners[n - 1].release(leases[n - 1]).result(LONG)
    for i in range(n - 2, -1, -1):
        got = futs[i].result(LONG)
        owners[i].release(got).result(LONG)
        owners[i].release(leases[i]).result(LONG)
    for lock in actors:
        assert_idle(lock)
    return ei.value


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("flavour", ["task", "mixed"])
def test_wait_for_cycles_of_tasks_and_threads(n: int, flavour: str) -> None:
    url = _url()
    names = [f"ring{n}-{i}" for i in range(n)]
    locks = [interlock.Lock(name, url=url) for name in names]
    with actors_ctx(flavour) as acts:
        owners = [acts.new(f"{flavour}-owner{i}") for i in range(n)]
        err = _deadlock_ring(locks, owners, names)
    msg = str(err)
    for name, owner in zip(names, owners, strict=True):
        assert f"lock {name!r}" in msg, msg
        assert owner.name in msg, msg
    cycle = vars(err)["cycle"]
    assert len(cycle) == n
    assert {name for _, name in cycle} == set(names)
    assert "global order" in msg or "timeout" in msg  # says what to do
    clone = pickle.loads(pickle.dumps(err))
    assert vars(clone)["cycle"] == cycle and str(clone) == msg


def test_rwlock_cycle_is_detected(threads: Actors) -> None:
    url = _url()
    rw = interlock.RWLock("rw-ring", url=url)
    lock = interlock.Lock("lock-ring", url=url)
    a, b = threads.many(2)
    la = a.acquire_read(rw).result(LONG)
    lb = b.acquire(lock).result(LONG)
    fa = a.acquire(lock)
    wait_waiters(lock, 1)
    with pytest.raises(interlock.DeadlockError) as ei:
        b.acquire_write(rw, timeout=LONG).result(LONG)
    assert "rwlock 'rw-ring'" in str(ei.value) and "lock 'lock-ring'" in str(ei.value)
    b.release(lb).result(LONG)
    a.release(fa.result(LONG)).result(LONG)
    a.release(la).result(LONG)
    assert_idle(rw)
    assert_idle(lock)


def test_semaphore_waits_are_never_reported(threads: Actors) -> None:
    """Permits may be released by any thread, so waiting on a semaphore you hold is not a deadlock."""
    sem = interlock.Semaphore("sem-self", 1, url=_url())
    a, b = threads.many(2)
    la = a.acquire(sem).result(LONG)
    with pytest.raises(interlock.AcquireTimeout):
        a.acquire(sem, timeout=0.2).result(LONG)
    fut = a.acquire(sem)  # blocks its own thread...
    wait_waiters(sem, 1)
    b.release(la).result(LONG)  # ...until another thread releases the permit it holds
    a.release(fut.result(LONG)).result(LONG)
    assert_idle(sem)


# -- errors raised for real ---------------------------------------------------------------------------

HINTS = ("pass ", "use ", "release", "ask for", "create ", "instead", "or pass", "acquire primitives")


def _raised(fn: object) -> interlock.InterlockError:
    try:
        fn()  # type: ignore[operator]
    except interlock.InterlockError as exc:
        return exc
    raise AssertionError(f"{fn} did not raise")


def test_real_errors_are_typed_helpful_and_picklable(threads: Actors) -> None:
    url = _url()
    sem = interlock.Semaphore("errs", 2, url=url)
    lock = interlock.Lock("errs-lock", url=url)
    holder = threads.new()
    held = holder.acquire(lock).result(LONG)
    errors = {
        "timeout": _raised(lambda: lock.acquire(timeout=0.05)),
        "wouldblock": _raised(lambda: lock.acquire(blocking=False)),
        "notowner": _raised(lock.release),
        "overrelease": _raised(sem.release),
        "capacity": _raised(lambda: interlock.Semaphore("errs", 3, url=url)),
        "too_many": _raised(lambda: sem.acquire(3)),
        "bad_permits": _raised(lambda: sem.acquire(0)),
        "bad_type": _raised(lambda: sem.acquire(1.5)),  # type: ignore[arg-type]
        "nan": _raised(lambda: sem.acquire(timeout=float("nan"))),
        "name": _raised(lambda: interlock.Lock("", url=url)),
    }
    holder.release(held).result(LONG)
    expected = {
        "timeout": interlock.AcquireTimeout, "wouldblock": interlock.WouldBlock,
        "notowner": interlock.NotOwnerError, "overrelease": interlock.OverRelease,
        "capacity": interlock.CapacityMismatch, "too_many": interlock.InvalidArgument,
        "bad_permits": interlock.InvalidArgument, "bad_type": interlock.InvalidArgumentType,
        "nan": interlock.InvalidArgument, "name": interlock.InvalidArgument,
    }
    for key, err in errors.items():
        assert type(err) is expected[key], (key, err)
        clone = pickle.loads(pickle.dumps(err))
        assert type(clone) is type(err) and str(clone) == str(err) and clone.__dict__ == err.__dict__
        if key not in ("timeout", "wouldblock"):
            assert any(h in str(err).lower() for h in HINTS), f"{key}: message gives no advice: {err}"
    attrs = {key: vars(err) for key, err in errors.items()}
    assert attrs["timeout"]["timeout"] == 0.05 and attrs["timeout"]["name"] == "errs-lock"
    assert attrs["too_many"]["capacity"] == 2 and attrs["too_many"]["permits"] == 3
    assert attrs["capacity"]["capacity"] == 2
    assert attrs["bad_permits"]["argument"] == "permits"
    assert_idle(sem)


def test_bad_input_creates_no_state() -> None:
    url = _url()
    bad_calls: list[Callable[[], object]] = [
        lambda: interlock.Semaphore("ghost", 0, url=url),
        lambda: interlock.Semaphore("ghost", True, url=url),
        lambda: interlock.Semaphore("ghost", 2, url=url, fair="yes"),  # type: ignore[arg-type]
    ]
    for bad in bad_calls:
        with pytest.raises(interlock.InterlockError):
            bad()
    assert "ghost" not in {s.name for s in interlock.status(url)}


def test_statistics_name_owners_and_ages(threads: Actors, tasks: Actors) -> None:
    sem = interlock.Semaphore("stats", 2, url=_url())
    t, k = threads.new("stat-thread"), tasks.new("stat-task")
    lt = t.acquire(sem, 2).result(LONG)
    fk = k.acquire(sem, 1)
    wait_waiters(sem, 1)
    s = sem.statistics()
    assert s.holders[0].owner == "thread 'stat-thread'" and s.holders[0].permits == 2
    assert s.waiters[0].owner == "task 'stat-task'" and s.waiters[0].permits == 1
    wait_until(lambda: sem.statistics().holders[0].held_for > 0.01, what="hold time grows")
    text = repr(sem)
    assert "stat-thread" in text and "0/2 free" in text and "waiters=1" in text
    t.release(lt).result(LONG)
    k.release(fk.result(LONG)).result(LONG)
    assert_idle(sem)

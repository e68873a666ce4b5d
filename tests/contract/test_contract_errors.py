"""Contract: bad input raises typed, picklable interlock errors; names are data (G6)."""

from __future__ import annotations

import asyncio
import math
import pickle
from collections.abc import Callable
from typing import Any

import pytest

import interlock
from contract.helpers import assert_idle, unique

BAD_NAMES: list[tuple[object, type[Exception]]] = [
    ("", interlock.InvalidArgument),
    (1, interlock.InvalidArgumentType),
    (None, interlock.InvalidArgumentType),
    (b"orders", interlock.InvalidArgumentType),
    (["orders"], interlock.InvalidArgumentType),
]

BAD_PERMITS: list[tuple[object, type[Exception]]] = [
    (0, interlock.InvalidArgument),
    (-1, interlock.InvalidArgument),
    (1.0, interlock.InvalidArgumentType),
    (1.5, interlock.InvalidArgumentType),
    (True, interlock.InvalidArgumentType),
    ("2", interlock.InvalidArgumentType),
    (None, interlock.InvalidArgumentType),
]

BAD_TIMEOUTS: list[tuple[object, type[Exception]]] = [
    (math.nan, interlock.InvalidArgument),
    (-1, interlock.InvalidArgument),
    (-0.001, interlock.InvalidArgument),
    ("1", interlock.InvalidArgumentType),
    (True, interlock.InvalidArgumentType),
]


def _check_error(exc: BaseException, expected: type[Exception]) -> None:
    """Typed, a ValueError/TypeError where that fits, a helpful message, and picklable intact."""
    assert type(exc) is expected, f"{type(exc).__name__}: {exc}"
    assert isinstance(exc, interlock.InterlockError)
    if expected is interlock.InvalidArgument:
        assert isinstance(exc, ValueError)
    if expected is interlock.InvalidArgumentType:
        assert isinstance(exc, TypeError)
    assert len(str(exc)) > 15
    clone = pickle.loads(pickle.dumps(exc))
    assert type(clone) is type(exc) and str(clone) == str(exc)
    assert clone.__dict__ == exc.__dict__


def _raises(expected: type[Exception], fn: Callable[[], Any]) -> BaseException:
    with pytest.raises(expected) as ei:
        fn()
    _check_error(ei.value, expected)
    return ei.value


@pytest.mark.parametrize(("bad", "expected"), BAD_NAMES)
def test_bad_names(backend_url: str, bad: object, expected: type[Exception]) -> None:
    for make in (
        lambda: interlock.Lock(bad, url=backend_url),  # type: ignore[arg-type]
        lambda: interlock.RLock(bad, url=backend_url),  # type: ignore[arg-type]
        lambda: interlock.Semaphore(bad, 2, url=backend_url),  # type: ignore[arg-type]
        lambda: interlock.RWLock(bad, url=backend_url),  # type: ignore[arg-type]
    ):
        err = _raises(expected, make)
        assert getattr(err, "argument", "name") == "name"


@pytest.mark.parametrize(("bad", "expected"), BAD_PERMITS)
def test_bad_permits(backend_url: str, bad: object, expected: type[Exception]) -> None:
    _raises(expected, lambda: interlock.Semaphore(unique(), bad, url=backend_url))  # type: ignore[arg-type]
    sem = interlock.Semaphore(unique(), 3, url=backend_url)
    _raises(expected, lambda: sem.acquire(bad))  # type: ignore[arg-type]
    _raises(expected, lambda: sem.acquire(bad, blocking=False))  # type: ignore[arg-type]
    _raises(expected, lambda: sem.try_acquire(bad))  # type: ignore[arg-type]
    _raises(expected, lambda: asyncio.run(sem.acquire_async(bad)))  # type: ignore[arg-type]
    sig = interlock.Semaphore(unique(), 0, url=backend_url, bounded=False)
    _raises(expected, lambda: sig.release(bad))  # type: ignore[arg-type]
    assert_idle(sem)
    assert sig.statistics().available == 0


def test_zero_permits_only_for_signalling(backend_url: str) -> None:
    _raises(interlock.InvalidArgument, lambda: interlock.Semaphore(unique(), 0, url=backend_url))
    assert interlock.Semaphore(unique(), 0, url=backend_url, bounded=False).capacity == 0
    _raises(interlock.InvalidArgumentType,
            lambda: interlock.Semaphore(unique(), 1, url=backend_url, bounded=1))  # type: ignore[arg-type]
    _raises(interlock.InvalidArgumentType,
            lambda: interlock.Semaphore(unique(), 1, url=backend_url, fair=1))  # type: ignore[arg-type]


@pytest.mark.parametrize(("bad", "expected"), BAD_TIMEOUTS)
def test_bad_timeouts(backend_url: str, bad: object, expected: type[Exception]) -> None:
    lock = interlock.Lock(unique(), url=backend_url)
    sem = interlock.Semaphore(unique(), 2, url=backend_url)
    rw = interlock.RWLock(unique(), url=backend_url)
    calls: list[Callable[[], Any]] = [
        lambda: lock.acquire(timeout=bad),  # type: ignore[arg-type]
        lambda: sem.acquire(timeout=bad),  # type: ignore[arg-type]
        lambda: rw.acquire_read(timeout=bad),  # type: ignore[arg-type]
        lambda: rw.acquire_write(timeout=bad),  # type: ignore[arg-type]
        lambda: rw.read(timeout=bad).__enter__(),  # type: ignore[arg-type]
        lambda: rw.write(timeout=bad).__enter__(),  # type: ignore[arg-type]
        lambda: asyncio.run(lock.acquire_async(timeout=bad)),  # type: ignore[arg-type]
        lambda: asyncio.run(sem.acquire_async(timeout=bad)),  # type: ignore[arg-type]
        lambda: asyncio.run(rw.acquire_read_async(timeout=bad)),  # type: ignore[arg-type]
        lambda: asyncio.run(rw.acquire_write_async(timeout=bad)),  # type: ignore[arg-type]
    ]
    for call in calls:
        err = _raises(expected, call)
        assert getattr(err, "argument", "timeout") == "timeout"
    for prim in (lock, sem, rw):
        assert_idle(prim)


def test_infinite_timeout_means_wait_forever(backend_url: str) -> None:
    sem = interlock.Semaphore(unique(), 1, url=backend_url)
    lease = sem.acquire(timeout=math.inf)
    lease.release()
    assert_idle(sem)


def test_more_than_capacity(backend_url: str) -> None:
    sem = interlock.Semaphore(unique(), 3, url=backend_url)
    for call in (
        lambda: sem.acquire(4),
        lambda: sem.acquire(4, timeout=1),
        lambda: sem.acquire(4, blocking=False),
        lambda: sem.try_acquire(4),
        lambda: asyncio.run(sem.acquire_async(4)),
        lambda: asyncio.run(sem.acquire_async(4, blocking=False)),
    ):
        err = _raises(interlock.InvalidArgument, call)
        assert "3" in str(err)
    assert_idle(sem)
    held = sem.acquire(2)  # also when part of it is held (the request could never be served)
    _raises(interlock.InvalidArgument, lambda: sem.acquire(4, timeout=1))
    held.release()
    assert_idle(sem)


def test_capacity_mismatch(backend_url: str) -> None:
    name = unique()
    sem = interlock.Semaphore(name, 3, url=backend_url)
    lease = sem.acquire()
    err = _raises(interlock.CapacityMismatch, lambda: interlock.Semaphore(name, 4, url=backend_url))
    assert vars(err)["name"] == name
    _raises(interlock.CapacityMismatch, lambda: interlock.Lock(name, url=backend_url))
    _raises(interlock.CapacityMismatch, lambda: interlock.RWLock(name, url=backend_url))
    _raises(interlock.CapacityMismatch, lambda: interlock.Semaphore(name, 3, url=backend_url, bounded=False))
    lock_name = unique()
    lock = interlock.Lock(lock_name, url=backend_url)
    _raises(interlock.CapacityMismatch, lambda: interlock.Semaphore(lock_name, 1, url=backend_url))
    assert interlock.RLock(lock_name, url=backend_url).name == lock.name  # RLock and Lock are both locks
    lease.release()
    assert_idle(sem)


def test_bad_url() -> None:
    _raises(interlock.InvalidArgument, lambda: interlock.Lock("x", url="nosuchscheme://x"))
    _raises(interlock.InvalidArgumentType, lambda: interlock.Lock("x", url=42))  # type: ignore[arg-type]


ODD_NAMES = [
    "a*", "ab", "a?", "[a]", "{tag}", "{tag}x", "../escape", "..", ".", "a/b", "a\\b", "it's", 'say "x"',
    "a b", "a\nb", "a\tb", "ünïcödé", "e\u0301", "\u00e9", "名前", "🔒", "-", "%2e%2e", "a:b", "a;DROP",
    "x" * 200,
]


def test_odd_names_are_isolated(backend_url: str) -> None:
    """Every name is its own lock: no glob, path, key or quoting trick merges two names."""
    prefix = unique("odd") + "-"
    locks = [interlock.Lock(prefix + n, url=backend_url) for n in ODD_NAMES]
    bare = [interlock.Lock(n + "-" + prefix, url=backend_url) for n in ODD_NAMES]
    leases = []
    for lock in locks + bare:
        lease = lock.acquire(blocking=False)  # would raise WouldBlock if two names collided
        assert lease.name == lock.name
        leases.append(lease)
    names = {s.name for s in interlock.status(backend_url) if s.holders}
    assert {lk.name for lk in locks + bare} <= names
    for lease in leases:
        lease.release()
    for lock in locks:
        assert_idle(lock)


def test_error_tree_is_picklable_with_attributes() -> None:
    for cls in (
        interlock.AcquireTimeout, interlock.WouldBlock, interlock.NotOwnerError, interlock.OverRelease,
        interlock.LeaseLost, interlock.DeadlockError, interlock.CapacityMismatch, interlock.BackendError,
        interlock.BlockingCallInEventLoop, interlock.InvalidArgument, interlock.InvalidArgumentType,
    ):
        err = cls("something went wrong; do this instead", name="orders", permits=2, cycle=[("t", "x")])
        assert isinstance(err, interlock.InterlockError)
        clone = pickle.loads(pickle.dumps(err))
        assert type(clone) is cls and str(clone) == str(err)
        attrs = vars(clone)
        assert (attrs["name"], attrs["permits"], attrs["cycle"]) == ("orders", 2, [("t", "x")])
    assert issubclass(interlock.AcquireTimeout, TimeoutError)

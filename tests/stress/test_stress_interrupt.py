"""KeyboardInterrupt in a thread's acquire never leaks or double-grants a permit (issue 2, item 3; G5).

The main thread acquires a primitive over and over while two contender threads compete for it (so the
main thread sometimes queues and is handed a grant), and an interrupter thread delivers SIGINT to the
main thread at random moments: a real signal (``signal.pthread_kill``, which also interrupts a blocked
wait) or a simulated one (``_thread.interrupt_main``). The SIGINT handler raises KeyboardInterrupt only
while the main thread is inside an acquire ("armed"), once per acquire, like one Ctrl-C.

After every interrupt (and a garbage collection, which returns a Lease that was dropped by the
interrupted call), the main thread must hold nothing and the primitive must still answer; at the end
every permit is back and a fresh thread can acquire. On failure the message names the place inside
interlock where the KeyboardInterrupt was raised, which is the diagnosis.
"""

from __future__ import annotations

import _thread
import gc
import random
import signal
import sys
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import pytest

import interlock
from contract.helpers import assert_idle, settle
from stress.helpers import call_with_timeout, scaled

pytestmark = [pytest.mark.stress, pytest.mark.timeout(240)]

KINDS = ["lock", "rlock", "semaphore", "rwlock-write", "rwlock-read"]

_ARMED = [False]


def _handler(signum: int, frame: Any) -> None:
    # One KeyboardInterrupt per armed acquire, like one Ctrl-C; signals outside an acquire are dropped.
    if _ARMED[0]:
        _ARMED[0] = False
        raise KeyboardInterrupt


def _make(kind: str, url: str) -> Any:
    name = f"ki-{kind}"
    if kind == "lock":
        return interlock.Lock(name, url=url)
    if kind == "rlock":
        return interlock.RLock(name, url=url)
    if kind == "semaphore":
        return interlock.Semaphore(name, 2, url=url)
    return interlock.RWLock(name, url=url)


def _cm(kind: str, prim: Any, write: bool | None = None) -> Any:
    if kind.startswith("rwlock"):
        return prim.write() if (write if write is not None else kind == "rwlock-write") else prim.read()
    return prim


def _acquire(kind: str, prim: Any, timeout: float | None) -> interlock.Lease:
    if kind == "rwlock-write":
        return prim.acquire_write(timeout=timeout)  # type: ignore[no-any-return]
    if kind == "rwlock-read":
        return prim.acquire_read(timeout=timeout)  # type: ignore[no-any-return]
    if kind == "semaphore":
        return prim.acquire(2, timeout=timeout)  # type: ignore[no-any-return]
    return prim.acquire(timeout=timeout)  # type: ignore[no-any-return]


def _interlock_frames(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "interlock" in f.filename]
    return " -> ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}: {f.line}" for f in frames) or (
        "outside interlock (between the call and its return)"
    )


@pytest.mark.parametrize("how", ["pthread_kill", "interrupt_main"])
@pytest.mark.parametrize("kind", KINDS)
def test_keyboard_interrupt_in_acquire_leaks_nothing(kind: str, how: str, seed: int) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread only")
    rng = random.Random(seed)
    url = f"memory://ki-{uuid.uuid4().hex}"
    prim = _make(kind, url)
    main_label = f"thread {threading.current_thread().name!r}"
    main_ident = threading.get_ident()
    stop = threading.Event()
    unraisable: list[str] = []
    wanted = scaled(100)

    def contender(i: int) -> None:
        crng = random.Random(seed + i)
        while not stop.is_set():
            try:
                with _cm(kind, prim, write=crng.random() < 0.5):
                    time.sleep(0 if crng.random() < 0.8 else 0.0005)
            except interlock.AcquireTimeout:  # pragma: no cover - only with timeouts
                pass

    def interrupter() -> None:
        irng = random.Random(seed ^ 0x5EED)
        while not stop.is_set():
            time.sleep(irng.uniform(0, 0.0015))
            if how == "pthread_kill":
                signal.pthread_kill(main_ident, signal.SIGINT)
            else:
                _thread.interrupt_main()

    def held_by_main() -> list[Any]:
        stats = call_with_timeout(prim.statistics, 15)
        return [h for h in stats.holders if h.owner == main_label]

    old_handler = signal.signal(signal.SIGINT, _handler)
    old_hook = sys.unraisablehook

    def hook(u: Any) -> None:
        unraisable.append(f"{u.exc_type.__name__} in {u.object!r}")

    sys.unraisablehook = hook
    threads = [threading.Thread(target=contender, args=(i,), name=f"ki-contender-{i}", daemon=True)
               for i in range(2)]
    threads.append(threading.Thread(target=interrupter, name="ki-interrupter", daemon=True))
    interrupts = completed = 0
    failure: str | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            for t in threads:
                t.start()
            step = 0
            while interrupts < wanted and step < wanted * 200:
                step += 1
                style = rng.randrange(3)
                where = ""
                try:
                    if style == 0:
                        _ARMED[0] = True
                        with _cm(kind, prim):
                            _ARMED[0] = False
                            completed += 1
                    else:
                        _ARMED[0] = True
                        lease = _acquire(kind, prim, None if style == 1 else 30.0)
                        _ARMED[0] = False
                        completed += 1
                        lease.release()
                        del lease
                except KeyboardInterrupt as exc:
                    _ARMED[0] = False
                    interrupts += 1
                    where = _interlock_frames(exc)
                    del exc
                if where:
                    # A Lease dropped by the interrupted call was returned by its finalizer when the
                    # traceback went away; a full collection (slow in a big test process) only if not.
                    mine = held_by_main()
                    if mine:
                        gc.collect()
                        mine = held_by_main()
                    if mine:
                        failure = (f"after KeyboardInterrupt #{interrupts} raised at {where}, the main thread "
                                   f"still holds {mine}")
                        break
    finally:
        _ARMED[0] = False
        stop.set()
        for t in threads:
            t.join(30)
        signal.signal(signal.SIGINT, old_handler)
        sys.unraisablehook = old_hook
    print(f"{kind}/{how}: {interrupts} interrupts, {completed} completed acquires, {step} steps")
    assert failure is None, failure
    assert not unraisable, unraisable[:3]
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"{alive} still blocked; {call_with_timeout(prim.statistics, 15)}"
    settle()
    call_with_timeout(lambda: assert_idle(prim), 30)

    def fresh() -> None:
        lease = _acquire(kind, prim, 10.0)
        lease.release()

    call_with_timeout(fresh, 30)
    assert interrupts > 0


def test_interrupted_blocked_waiter_never_gets_a_grant_later() -> None:
    """A waiter interrupted while blocked leaves the queue; the next release goes to the next waiter."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread only")
    url = f"memory://ki-{uuid.uuid4().hex}"
    lock = interlock.Lock("blocked", url=url)
    got: list[interlock.Lease] = []
    ready = threading.Event()
    release = threading.Event()

    def holder() -> None:
        lease = lock.acquire()
        ready.set()
        release.wait(30)
        lease.release()

    def second() -> None:
        got.append(lock.acquire(timeout=30))
        got[-1].release()

    h = threading.Thread(target=holder)
    h.start()
    assert ready.wait(30)
    main_ident = threading.get_ident()

    def kill_when_queued(n: int) -> Callable[[], None]:
        def run() -> None:
            deadline = time.monotonic() + 30
            while len(lock.statistics().waiters) < n and time.monotonic() < deadline:
                time.sleep(0.001)
            signal.pthread_kill(main_ident, signal.SIGINT)

        return run

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        k = threading.Thread(target=kill_when_queued(1))
        k.start()
        with pytest.raises(KeyboardInterrupt):
            lock.acquire(timeout=30)
        k.join()
    finally:
        signal.signal(signal.SIGINT, old)
    assert lock.statistics().waiters == ()
    s = threading.Thread(target=second)
    s.start()
    while not lock.statistics().waiters:
        time.sleep(0.001)
    release.set()
    h.join(30)
    s.join(30)
    assert len(got) == 1
    holders = lock.statistics().holders
    assert holders == (), holders

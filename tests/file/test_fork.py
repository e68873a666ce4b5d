"""fork(): a child never holds its parent's grants, and can use the same primitives as a process of its
own (the multiprocessing pattern: create at module level, fork workers)."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time

import pytest

import interlock
from contract.helpers import wait_until
from file.helpers import LONG

CTX = mp.get_context("fork")

# Python 3.12+ warns when a process with threads forks; forking such a process is what is tested here.
pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


def _report(conn: object, fn: object) -> None:
    try:
        conn.send(fn())  # type: ignore[attr-defined, operator]
    except BaseException as exc:
        conn.send(f"error: {exc!r}")  # type: ignore[attr-defined]
    finally:
        os._exit(0)


def _in_child(fn: object) -> object:
    r, w = CTX.Pipe(duplex=False)
    p = CTX.Process(target=_report, args=(w, fn))
    p.start()
    w.close()
    assert r.poll(LONG), "child did not answer"
    out = r.recv()
    p.join(LONG)
    return out


def test_a_child_does_not_hold_its_parents_grant(url: str) -> None:
    lock = interlock.Lock("f", url=url)
    lease = lock.acquire()

    def child() -> list[object]:
        out: list[object] = [lease.held]
        try:
            lease.ensure_held()
            out.append("ensure_held passed")
        except interlock.LeaseLost as exc:
            out.append("lost" if "forked" in str(exc) else str(exc))
        try:
            lease.release()
            out.append("released the parent's grant!")
        except interlock.LeaseLost:
            out.append("release refused")
        try:
            lock.acquire(timeout=0.2)
            out.append("acquired while the parent holds it!")
        except interlock.AcquireTimeout:
            out.append("timeout")
        return out

    assert _in_child(child) == [False, "lost", "release refused", "timeout"]
    assert lease.held
    st = lock.statistics()
    assert [h.token for h in st.holders] == [lease.token] and st.holders[0].pid == os.getpid()
    lease.release()


def test_a_child_waits_in_line_with_its_parent_and_gets_the_lock(url: str) -> None:
    lock = interlock.Lock("g", url=url)
    lease = lock.acquire()
    r, w = CTX.Pipe(duplex=False)

    def child() -> object:
        with lock as l2:
            return ("got", l2.token)

    p = CTX.Process(target=_report, args=(w, child))
    p.start()
    w.close()
    wait_until(lambda: len(lock.statistics().waiters) == 1, what="child queued")
    lease.release()
    assert r.poll(LONG)
    kind, token = r.recv()
    assert kind == "got" and token > lease.token
    p.join(LONG)


def test_fork_while_another_thread_waits(url: str) -> None:
    lock = interlock.Lock("h", url=url)
    lease = lock.acquire()
    got: list[interlock.Lease] = []
    t = threading.Thread(target=lambda: got.append(lock.acquire()))
    t.start()
    wait_until(lambda: len(lock.statistics().waiters) == 1, what="thread queued")

    def child() -> object:
        # The waiting thread does not exist here; the child is a new process in the same queue.
        s = lock.statistics()
        return len(s.waiters), [h.pid for h in s.holders] == [os.getppid()]

    assert _in_child(child) == (1, True)
    lease.release()
    t.join(LONG)
    assert got and got[0].token > lease.token
    # that thread ended while holding the lock: the lock comes back, the next holder is told
    wait_until(lambda: not lock.locked(), what="the ended thread's lock reclaimed")
    with lock as again:
        assert again.previous_owner_died


SEM: interlock.Semaphore | None = None


def _worker(n: int, out: object) -> None:
    assert SEM is not None
    peak = 0
    for _ in range(n):
        with SEM:
            peak = max(peak, SEM.statistics().held)
            time.sleep(0.0005)
    out.put(peak)  # type: ignore[attr-defined]


@pytest.mark.stress
def test_module_level_semaphore_shared_by_forked_workers(url: str) -> None:
    global SEM
    SEM = interlock.Semaphore("pool", 2, url=url)
    q = CTX.Queue()
    procs = [CTX.Process(target=_worker, args=(40, q)) for _ in range(4)]
    for p in procs:
        p.start()
    peaks = [q.get(timeout=LONG) for _ in procs]
    for p in procs:
        p.join(LONG)
    assert all(p.exitcode == 0 for p in procs)
    assert max(peaks) <= 2
    assert SEM.statistics().available == 2

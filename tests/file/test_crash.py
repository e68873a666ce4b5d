"""Crash safety: SIGKILLed holders and waiters, PID reuse, torn state updates (marker ``fault``)."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time

import pytest

import interlock
from contract.helpers import wait_until
from file.helpers import LONG, Child
from interlock.backends.file import FileBackend
from interlock.backends.file._state import MODES, encode_label

pytestmark = pytest.mark.fault


def _holder(url: str, name: str, permits: int, weight: int) -> Child:
    c = Child(url, f"""
        lease = interlock.Semaphore({name!r}, {permits}, url=URL).acquire({weight})
        say("held", lease.token)
        time.sleep(600)
    """)
    c.expect("held")
    return c


def test_killed_holder_returns_its_permits_at_once(url: str, children: list[Child]) -> None:
    holder = _holder(url, "k", 3, 2)
    children.append(holder)
    sem = interlock.Semaphore("k", 3, url=url)
    got: dict[str, object] = {}

    def waiter() -> None:
        lease = sem.acquire(3)  # needs the holder's 2 permits
        got["t"] = time.monotonic()
        got["lease"] = lease

    t = threading.Thread(target=waiter)
    t.start()
    wait_until(lambda: len(sem.statistics().waiters) == 1, what="waiter queued")
    killed = time.monotonic()
    os.kill(holder.pid, signal.SIGKILL)
    t.join(LONG)
    assert not t.is_alive(), "the dead holder's permits never came back"
    lease = got["lease"]
    assert isinstance(lease, interlock.Lease)
    print(f"kill -> grant: {(float(got['t']) - killed) * 1000:.1f} ms")  # type: ignore[arg-type]
    assert lease.previous_owner_died
    lease.release()
    assert sem.statistics().available == 3


def test_killed_waiter_does_not_block_the_queue(url: str, children: list[Child]) -> None:
    lock = interlock.Lock("q", url=url)
    lease = lock.acquire()
    w1 = Child(url, """
        say("waiting"); interlock.Lock("q", url=URL).acquire(); say("w1 granted"); time.sleep(600)
    """)
    children.append(w1)
    w1.expect("waiting")
    wait_until(lambda: len(lock.statistics().waiters) == 1, what="w1 queued")
    w2 = Child(url, """
        say("waiting"); l = interlock.Lock("q", url=URL).acquire(); say("w2 granted", l.previous_owner_died)
    """)
    children.append(w2)
    w2.expect("waiting")
    wait_until(lambda: len(lock.statistics().waiters) == 2, what="w2 queued")
    w1.kill()  # dies at the head of the queue
    wait_until(lambda: [w.pid for w in lock.statistics().waiters] == [w2.pid], what="dead waiter removed")
    lease.release()
    assert w2.expect("w2 granted").split()[2] == "False", "a dead waiter held nothing: nobody died holding"


def test_dead_waiter_granted_with_nobody_behind_is_reclaimed_by_the_next_acquirer(
        url: str, children: list[Child]) -> None:
    lock = interlock.Lock("g", url=url)
    lease = lock.acquire()
    w = Child(url, """
        say("waiting"); interlock.Lock("g", url=URL).acquire(); say("granted"); time.sleep(600)
    """)
    children.append(w)
    w.expect("waiting")
    wait_until(lambda: len(lock.statistics().waiters) == 1, what="queued")
    w.kill()
    lease.release()  # may hand the lock to the dead waiter if its death was not noticed yet
    again = lock.acquire(timeout=LONG)
    assert again.token > lease.token
    again.release()


def test_releaser_killed_between_commit_and_wake_up_still_hands_over(url: str, children: list[Child]) -> None:
    """A release commits the grant to the state before it wakes the grantee. A releaser SIGKILLed in
    between (here: at the moment it would post the wake-up) leaves a grant nobody told its waiter of;
    the waiter's death watch wakes it to look at the state, where the grant is."""
    releaser = Child(url, """
        import signal
        from interlock.backends.file import FileBackend
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        lease = interlock.Lock("mid", url=URL).acquire()
        backend = interlock.connect(URL)
        assert isinstance(backend, FileBackend)
        for ch in list(backend._channels.values()):  # the release path's bound wake-up: die instead
            ch._deliver = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
            ch._posts = {}  # (an empty cache: the C release, if built, hands every grant to _deliver)
        say("held", lease.token)
        signal.sigwait({signal.SIGUSR1})
        lease.release()
        say("not reached")
    """)
    children.append(releaser)
    token = int(releaser.expect("held").split()[1])
    lock = interlock.Lock("mid", url=url)
    got: list[interlock.Lease] = []
    t = threading.Thread(target=lambda: got.append(lock.acquire()))
    t.start()
    wait_until(lambda: len(lock.statistics().waiters) == 1, what="waiter queued")
    os.kill(releaser.pid, signal.SIGUSR1)  # release now
    t.join(LONG)
    assert not t.is_alive(), "the committed grant never reached its waiter"
    assert releaser.proc.wait(LONG) == -signal.SIGKILL, "the releaser died where the wake-up was due"
    (lease,) = got
    assert lease.token == token + 1
    assert not lease.previous_owner_died, "the releaser had released: nothing half-done"
    lease.release()
    assert lock.statistics().available == 1


def test_waiter_killed_after_its_grant_was_delivered_returns_it(url: str, children: list[Child]) -> None:
    """The grant is written into a stopped waiter's mailbox and its wake-up posted; the waiter is then
    SIGKILLed before it ever runs: it is a dead holder, and its permit goes to the next waiter."""
    lock = interlock.Lock("dw", url=url)
    lease = lock.acquire()
    w1 = Child(url, """
        say("waiting"); interlock.Lock("dw", url=URL).acquire(); say("w1 granted"); time.sleep(600)
    """)
    children.append(w1)
    w1.expect("waiting")
    wait_until(lambda: len(lock.statistics().waiters) == 1, what="w1 queued")
    os.kill(w1.pid, signal.SIGSTOP)
    got: list[interlock.Lease] = []
    t = threading.Thread(target=lambda: got.append(lock.acquire()))
    try:
        lease.release()  # commits the grant to w1 and posts its wake-up; w1 cannot run
        s = lock.statistics()
        assert [h.pid for h in s.holders] == [w1.pid] and not s.waiters
        # Queue behind w1 (a second thread of this process: the owner of `lease` released it).
        t.start()
        wait_until(lambda: len(lock.statistics().waiters) == 1, what="second waiter queued")
    finally:
        os.kill(w1.pid, signal.SIGKILL)
        os.kill(w1.pid, signal.SIGCONT)
    t.join(LONG)
    assert not t.is_alive(), "the dead grantee's permit never came back"
    (again,) = got
    assert again.previous_owner_died and again.token == lease.token + 2
    again.release()


def test_try_acquire_reclaims_a_dead_holder(url: str, children: list[Child]) -> None:
    holder = _holder(url, "t", 1, 1)
    children.append(holder)
    holder.kill()
    sem = interlock.Semaphore("t", 1, url=url)
    lease = sem.try_acquire()
    assert lease is not None and lease.previous_owner_died, "a dead process's permit is free, not busy"
    lease.release()


def _fake_process(url: str, info: dict[str, object]) -> tuple[int, str]:
    """Files of a process that is not running: (id, path of its .live file)."""
    procs = url[len("file://"):] + "/procs"
    os.makedirs(procs, exist_ok=True)
    proc = int.from_bytes(os.urandom(8), "little") | 1
    live = f"{procs}/{proc:016x}.live"
    with open(live, "w") as f:
        json.dump(info, f)
    os.mkfifo(f"{procs}/{proc:016x}.fifo")
    return proc, live


def _plant_grant(url: str, name: str, proc: int) -> int:
    """Write a holder record of ``proc`` into lock ``name``'s state, as that process would have."""
    backend = FileBackend(url)
    sf = backend.open_state(name)
    sf.setup(name.encode(), "lock", 1, True, url)
    sf.lock()
    try:
        r = sf.grant_fast_locked(1, True, proc, MODES["exclusive"], encode_label("t", "MainThread"), time.monotonic())
    finally:
        sf.unlock()
        sf.close()
    assert r is not None
    return r[0]


def test_a_reused_pid_is_not_proof_of_life(url: str) -> None:
    # The record's pid belongs to a live process (this one), but its owner's liveness lock is free: the
    # owner is dead and its grant must be reclaimed. A pid check would wrongly keep it.
    lock = interlock.Lock("pid", url=url)
    lock.locked()  # join the directory first (joining sweeps provably dead processes away)
    proc, _ = _fake_process(url, {"pid": os.getpid(), "host": "here", "command": "dead"})
    planted = _plant_grant(url, "pid", proc)
    (h,) = lock.statistics().holders
    assert h.pid == os.getpid() and "process gone" in h.owner
    lease = lock.acquire(timeout=LONG)
    assert lease.token > planted and lease.previous_owner_died
    lease.release()


def test_the_liveness_lock_is_proof_of_life_whatever_the_pid(url: str, children: list[Child]) -> None:
    # The record names a pid that does not exist, but its liveness file is locked by a running
    # process: the grant is valid and must not be taken.
    lock = interlock.Lock("alive", url=url)
    lock.locked()  # join the directory first (joining sweeps provably dead processes away)
    proc, live = _fake_process(url, {"pid": 2 ** 22 + 12345, "host": "here", "command": "alive"})
    keeper = Child(url, f"""
        import fcntl
        fd = os.open({live!r}, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        fifo = os.open({live[:-5] + '.fifo'!r}, os.O_RDWR)
        say("locked")
        time.sleep(600)
    """)
    children.append(keeper)
    keeper.expect("locked")
    _plant_grant(url, "alive", proc)
    with pytest.raises(interlock.AcquireTimeout):
        lock.acquire(timeout=0.3)
    with pytest.raises(interlock.WouldBlock):
        lock.acquire(blocking=False)
    got: list[interlock.Lease] = []
    t = threading.Thread(target=lambda: got.append(lock.acquire()))
    t.start()
    wait_until(lambda: len(lock.statistics().waiters) == 1, what="queued")
    keeper.kill()  # now the kernel drops its lock: proof of death, pushed through the FIFO hang-up
    t.join(LONG)
    assert got and got[0].previous_owner_died
    got[0].release()


def test_state_survives_kills_in_the_middle_of_updates(url: str, children: list[Child], seed: int) -> None:
    rng = random.Random(seed)
    sem = interlock.Semaphore("torn", 3, url=url)
    for round_ in range(12):
        c = Child(url, """
            s = interlock.Semaphore("torn", 3, url=URL)
            say("go")
            while True:
                a = s.acquire(2); b = s.acquire(1); a.release(); b.release()
        """)
        children.append(c)
        c.expect("go")
        time.sleep(rng.uniform(0.0, 0.05))
        c.kill()
        # Whatever instant the kill hit, the state is consistent; the dead process's grants come back.
        lease = sem.acquire(3, timeout=LONG)
        st = sem.statistics()
        assert st.available == 0 and [h.permits for h in st.holders] == [3], f"round {round_}"
        lease.release()
        assert sem.statistics().available == 3


@pytest.mark.stress
def test_random_kills_keep_exclusion_and_fencing(url: str, tmp_path: object, seed: int, children: list[Child]) -> None:
    """Workers loop on a weighted semaphore, recording a history; random workers are SIGKILLed at
    random moments (holding, queued, or in between) and replaced. The history is checked."""
    from interlock.testing.history import Recorder, check, check_liveness, load_dir

    rng = random.Random(seed)
    hist = str(tmp_path) + "/history"  # type: ignore[operator]
    parent = Recorder(hist)
    code = f"""
        import random
        from interlock.testing.history import Recorder
        rec = Recorder({hist!r})
        sem = interlock.Semaphore("rk", 3, url=URL)
        me = "p%d" % os.getpid()
        rnd = random.Random(os.getpid())
        say("go")
        while True:
            k = rnd.choice((1, 1, 2, 3))
            with rec.acquire(me, "rk", permits=k) as op:
                lease = sem.acquire(k)
                op.token = lease.token
            time.sleep(rnd.uniform(0, 0.004))
            with rec.release(me, "rk", token=lease.token, permits=k):
                lease.release()
    """
    workers = [Child(url, code) for _ in range(5)]
    children.extend(workers)
    for w in workers:
        w.expect("go")
    deadline = time.monotonic() + 3.0
    kills = 0
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.02, 0.15))
        victim = rng.randrange(len(workers))
        # A killed holder's grant ends with its process; stamp the end before the signal is sent (the
        # backend may re-grant the permits before kill() has reaped the child).
        parent.lost(f"p{workers[victim].pid}", "rk")
        workers[victim].kill()
        kills += 1
        workers[victim] = Child(url, code)
        children.append(workers[victim])
        workers[victim].expect("go")
    for w in workers:
        parent.lost(f"p{w.pid}", "rk")
        w.kill()
    parent.close()
    sem = interlock.Semaphore("rk", 3, url=url)
    lease = sem.acquire(3, timeout=LONG)  # everything dead is reclaimed
    lease.release()
    events = load_dir(hist)
    grants = [e for e in events if e.op == "acquire" and e.ok]
    print(f"{kills} kills, {len(grants)} grants")
    assert len(grants) > 50
    assert check(events, capacity=3) == []
    # every acquire that finished was granted (the unfinished ones belong to killed processes)
    assert check_liveness([e for e in events if e.end != float("inf")]) == []

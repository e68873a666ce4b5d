"""The C twin of the hot state transitions (``_fastfile``) against the pure-Python twin.

Two state files receive the same operations, one through ``_fastfile`` and one through ``StateFile``'s
Python methods; after every operation both files must be byte for byte the same, and both must return
the same result. Also checked: which results leave the file lock held (the contract in _fastfile.c), that
a not-handled case changes nothing, and that delivery goes through the Waker's cache.

(The rest of tests/file runs end to end on both twins: see the ``url`` fixture in conftest.py.)
"""

from __future__ import annotations

import fcntl
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from interlock.backends.file._state import GRANT, MODES, PREV_DIED, REC, StateFile, encode_label

ff: Any = pytest.importorskip("interlock.backends.file._fastfile", reason="the C twin is not built")

LABEL = encode_label("t", "MainThread")
LONG_LABEL = encode_label("t", "x" * 200)
P1, P2, P3 = 0x1111, 0x2222, 0x3333


def _open(path: Path, kind: str, capacity: int) -> StateFile:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    sf = StateFile(fd, str(path))
    sf.setup(b"n", kind, capacity, True, "file://test")
    return sf


def _held_by_other(path: Path) -> bool:
    """Whether some open file description holds the flock of ``path`` (probed from a new one)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class Pair:
    """The same primitive twice: ``c`` is driven through _fastfile, ``py`` through StateFile."""

    def __init__(self, tmp: Path, kind: str = "semaphore", capacity: int = 5) -> None:
        self.cpath, self.pypath = tmp / "c.state", tmp / "py.state"
        self.c = _open(self.cpath, kind, capacity)
        self.py = _open(self.pypath, kind, capacity)
        # The two files were created a few microseconds apart: give them the same token origin.
        self.py.m[:] = self.c.m[:]

    def same(self) -> None:
        assert not _held_by_other(self.cpath), "the C twin left the file lock held"
        assert os.pread(self.c.fd, 1 << 20, 0) == os.pread(self.py.fd, 1 << 20, 0)

    def grant(self, permits: int, fair: bool, proc: int, label: bytes = LABEL, now: float = 1.5) -> Any:
        r = ff.grant(self.c.m, self.c.fd, permits, fair, proc, MODES["permits"], label, now)
        if r is None or r is False:
            assert _held_by_other(self.cpath), "None/False must return with the file lock held"
            try:
                if r is False:
                    r = self.c.grant_fast_locked(permits, fair, proc, MODES["permits"], label, now)
            finally:
                self.c.unlock()
        self.py.lock()
        try:
            expect = self.py.grant_fast_locked(permits, fair, proc, MODES["permits"], label, now)
        finally:
            self.py.unlock()
        assert r == expect
        self.same()
        return r

    def enqueue(self, permits: int, proc: int, wid: int, sock: int, label: bytes = LABEL) -> None:
        self.c.lock()
        try:
            r = ff.enqueue(self.c.m, permits, proc, wid, sock, MODES["permits"], label, 2.5)
            if r is None:  # not handled: the slot must grow
                r = self.c.enqueue_locked(permits, proc, wid, sock, MODES["permits"], label, 2.5)
        finally:
            self.c.unlock()
        self.py.lock()
        try:
            expect = self.py.enqueue_locked(permits, proc, wid, sock, MODES["permits"], label, 2.5)
        finally:
            self.py.unlock()
        assert r == expect
        self.same()

    def release(self, token: int, proc: int, permits: int, abandoned: bool = False,
                posts: dict[Any, Any] | None = None, prime: Any = None) -> Any:
        r = ff.release(self.c.m, self.c.fd, token, proc, permits, abandoned, 3.5, {} if posts is None else posts,
                       prime)
        if r is None or r.__class__ is list:
            assert _held_by_other(self.cpath), "None/list must return with the file lock held"
            try:
                if r is None:
                    r = self.c.release_locked(token, proc, permits, abandoned, 3.5)[1]
            finally:
                self.c.unlock()
        self.py.lock()
        try:
            found, wakes = self.py.release_locked(token, proc, permits, abandoned, 3.5)
        finally:
            self.py.unlock()
        self.same()
        return r, found, wakes


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    p = Pair(tmp_path)
    yield p
    p.c.close()
    p.py.close()


def test_uncontended_grant_and_release_match(pair: Pair) -> None:
    t1 = pair.grant(2, True, P1)
    t2 = pair.grant(1, True, P2, LONG_LABEL)  # a label cut to its 35 bytes
    t3 = pair.grant(2, True, P1)
    assert (t1[0] + 1, t2[0] + 1) == (t2[0], t3[0])
    assert pair.grant(1, True, P3) is None  # full: no room
    r, found, wakes = pair.release(t2[0], P2, 1)  # a holder in the middle
    assert (r, found, wakes) == (True, True, [])
    r, found, _ = pair.release(t3[0], P1, 2)  # the last holder
    assert (r, found) == (True, True)
    r, found, _ = pair.release(t1[0], P1, 2)
    assert (r, found) == (True, True)


def test_release_of_an_unknown_grant_or_another_process_changes_nothing(pair: Pair) -> None:
    t = pair.grant(1, True, P1)[0]
    assert pair.release(t + 100, P1, 1)[:2] == (False, False)
    assert pair.release(t, P2, 1)[:2] == (False, False)  # another process's token
    assert pair.release(t, P1, 1)[:2] == (True, True)


def test_handoff_grants_the_fitting_head_waiters_in_fifo_order(pair: Pair) -> None:
    t = pair.grant(5, True, P1)[0]
    pair.enqueue(2, P2, 7, 0x80000003)
    pair.enqueue(2, P3, 8, 0x80000004)
    pair.enqueue(3, P2, 9, 5, LONG_LABEL)  # does not fit after the first two: stays queued
    assert pair.grant(1, True, P3) is None  # fair: others queue
    assert pair.grant(1, False, P3) is None  # barging, but no room either
    r, found, wakes = pair.release(t, P1, 5, posts={})
    assert found
    assert r == wakes  # nothing in the cache: both grants handed back for the caller to deliver
    assert [(p, n, GRANT.unpack(d)[:3]) for p, n, d in wakes] == [
        (P2, 0x80000003, (7, t + 1, 2)), (P3, 0x80000004, (8, t + 2, 2))]


def test_abandoned_release_marks_the_next_grant(pair: Pair) -> None:
    t = pair.grant(5, True, P1)[0]
    pair.enqueue(1, P2, 7, 0x80000001)
    _, _, wakes = pair.release(t, P1, 5, abandoned=True)
    assert GRANT.unpack(wakes[0][2])[3] & PREV_DIED
    r = pair.grant(1, True, P3)  # the flag went to the first grant only
    assert r is not None and r[1] is False


def test_abandoned_release_without_waiters_marks_the_next_fast_grant(pair: Pair) -> None:
    t = pair.grant(1, True, P1)[0]
    pair.release(t, P1, 1, abandoned=True)
    r = pair.grant(1, True, P2)
    assert r is not None and r[1] is True


def test_barging_grant_passes_the_waiters_and_bumps_the_epoch(pair: Pair) -> None:
    pair.grant(3, True, P1)
    pair.enqueue(3, P2, 7, 1)
    assert pair.grant(1, True, P3) is None
    r = pair.grant(1, False, P3)
    assert r is not None and r[2] == 1


def test_partial_release_is_left_to_python_unchanged(pair: Pair) -> None:
    t = pair.grant(3, True, P1)[0]
    before = os.pread(pair.c.fd, 1 << 20, 0)
    r = ff.release(pair.c.m, pair.c.fd, t, P1, 1, False, 3.5, {})
    try:
        assert r is None
        assert os.pread(pair.c.fd, 1 << 20, 0) == before, "a not-handled case must not write"
    finally:
        pair.c.unlock()
    pair.py.m[:] = pair.c.m[:]  # (back in step)
    pair.release(t, P1, 1)


def test_growing_past_a_page_goes_through_python_and_back(tmp_path: Path) -> None:
    p = Pair(tmp_path, "semaphore", 120)  # full after the 120 grants below
    tokens = [p.grant(1, True, P1 + i)[0] for i in range(120)]  # 120 x 80 bytes > one page per slot
    assert os.fstat(p.c.fd).st_size > 3 * 4096
    for i in range(60):  # and a queue that grows the slots again
        p.enqueue(1, P3, 1000 + i, i)
    for i, t in enumerate(tokens[::3]):  # each release hands its permit to the head waiter
        r, found, wakes = p.release(t, P1 + 3 * i, 1)
        assert found and r == wakes and len(wakes) == 1


def test_a_file_grown_by_another_process_is_remapped_by_python(pair: Pair, tmp_path: Path) -> None:
    other = StateFile(os.open(pair.cpath, os.O_RDWR), str(pair.cpath))
    other_py = StateFile(os.open(pair.pypath, os.O_RDWR), str(pair.pypath))
    try:
        for sf in (other, other_py):  # another process grows both files (60 waiters)
            sf.setup(b"n", "semaphore", 5, True, "file://test")
            sf.lock()
            try:
                sf.grant_fast_locked(5, True, P3, MODES["permits"], LABEL, 1.0)
                for i in range(60):
                    sf.enqueue_locked(1, P3, 100 + i, 1, MODES["permits"], LABEL, 1.0)
            finally:
                sf.unlock()
        assert pair.c.mlen < os.fstat(pair.c.fd).st_size
        assert pair.grant(1, True, P1) is None  # C: not handled (mapping too short); Python remaps
        assert pair.c.mlen == os.fstat(pair.c.fd).st_size
    finally:
        other.close()
        other_py.close()


def test_delivery_through_the_waker_cache(pair: Pair) -> None:
    """A cached (mailbox, offset, post) receives the grant with its waiter id, and is posted once."""
    t = pair.grant(5, True, P1)[0]
    pair.enqueue(2, P2, 7, 0x80000003)
    pair.enqueue(2, P3, 8, 0x80000004)
    box = mmap.mmap(-1, 4096)
    posted: list[int] = []
    posts = {(P2, 0x80000003): (box, 64, lambda: posted.append(1))}
    r, _, wakes = pair.release(t, P1, 5, posts=posts)
    assert posted == [1]
    assert GRANT.unpack(box[64:64 + GRANT.size]) == GRANT.unpack(wakes[0][2])
    assert r == wakes[1:], "the grant without a cached slot is handed back"


def test_a_failing_post_is_ignored_like_in_python(pair: Pair) -> None:
    t = pair.grant(1, True, P1)[0]
    pair.enqueue(1, P2, 7, 0x80000003)
    box = mmap.mmap(-1, 4096)

    def full() -> None:
        raise ValueError("semaphore or lock released too many times")

    r, _, _ = pair.release(t, P1, 1, posts={(P2, 0x80000003): (box, 0, full)})
    assert r is True


def test_record_size_is_what_the_c_twin_assumes() -> None:
    assert REC == 80 and GRANT.size == 25


def test_the_url_fixture_runs_the_twin_it_names(url: str, request: pytest.FixtureRequest) -> None:
    import interlock

    lock = interlock.Lock("twin", url=url)
    with lock:
        pass
    ch: Any = lock._ch
    assert (ch._c_grant is None) == (request.node.callspec.params["url"] == "pure")


@pytest.mark.parametrize("kind", ["Lease", "plain"])
def test_wait_returns_the_grant_of_its_own_waiter_id_only(kind: str) -> None:
    """wait(): timeout -> False; a post for another (stale) waiter id -> None (look at the state); a post
    for its id -> the pre-built lease filled, the wait marked done, the grant recorded and the wait ended
    (waits, wait-for graph, slot back to the pool); neither of the others ends the wait. The lease is
    filled by direct stores when it is _speedups' C Lease ("Lease", where _speedups is built), by
    setattr otherwise ("plain": any object, as the pure-Python Lease)."""
    import _multiprocessing
    import threading

    from interlock._lease import HELD, RELEASED, Lease

    name = f"/interlock-test-{os.getpid()}"
    sem = _multiprocessing.SemLock(1, 0, 1 << 30, name, True)
    box = mmap.mmap(-1, 4096)
    slot = object()

    class W:
        done = False
        slot: object = None

    w, local, owner = W(), {}, object()
    w.slot = slot
    waits: dict[int, Any] = {7: w}
    pool: list[Any] = []
    graph_lock = threading.Lock()
    graph: dict[Any, Any] = {owner: ("ch", w), "other": ("ch", None)}
    class Plain:
        previous_owner_died = False

    lease: Any = Lease.__new__(Lease) if kind == "Lease" else Plain()
    lease._state = RELEASED
    args = (sem.handle, box, 32, 7, 0.01, w, lease, local, owner, "permits", waits, pool, slot, graph_lock, graph)
    assert ff.wait(*args) is False
    box[32:32 + GRANT.size] = GRANT.pack(6, 99, 2, 0)  # a stale grant of an earlier waiter on this slot
    sem.release()
    assert ff.wait(*args) is None
    assert not w.done and not local and waits == {7: w} and not pool and w.slot is slot and owner in graph
    box[32:32 + GRANT.size] = GRANT.pack(7, 100, 2, MODES["permits"] | PREV_DIED)
    sem.release()
    assert ff.wait(*args) is lease
    assert w.done and lease._state == HELD and lease.token == 100 and lease.permits == 2
    assert lease.previous_owner_died
    assert local == {100: (owner, 2, "permits", lease.acquired_at)}
    assert waits == {} and pool == [slot] and w.slot is None and list(graph) == ["other"]
    assert not graph_lock.locked()
    lease._state = RELEASED  # (nothing to return: no channel behind it)


def test_release_without_a_time_reads_the_monotonic_clock_for_the_grants(pair: Pair) -> None:
    import time

    from interlock.backends.file._state import Record

    t = pair.grant(1, True, P1)[0]
    pair.enqueue(1, P2, 7, 0x80000001)
    before = time.monotonic()
    r = ff.release(pair.c.m, pair.c.fd, t, P1, 1, False, None, {})
    pair.c.unlock()
    assert isinstance(r, list) and len(r) == 1
    pair.c.lock()
    try:
        (holder,) = pair.c.snapshot_locked().holders
    finally:
        pair.c.unlock()
    assert isinstance(holder, Record) and holder.key == t + 1
    assert before <= holder.since <= time.monotonic()


def test_accelerated_reports_the_twin_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    from interlock.backends.file import _channel, accelerated

    assert accelerated()  # (this module is skipped where the C twin is not built)
    monkeypatch.setattr(_channel, "_native", None)
    assert not accelerated()


# -- head-of-queue pokes and spinning (see "spinning" in _fastfile.c) ---------------------------------

BOX_POKE, BOX_SPINS = 25, 26


@pytest.fixture
def spin() -> Iterator[Any]:
    """The C twin's spin settings, restored afterwards (they are process-wide)."""
    before = ff.configure_spin(50.0)
    yield ff
    ff.configure_spin(before)


@pytest.fixture
def yielding() -> Iterator[Any]:
    """The C twin's yield setting, on, restored afterwards (it is process-wide)."""
    before = ff.configure_yield(True)
    yield ff
    ff.configure_yield(before)


def _sem(tag: str) -> Any:
    import _multiprocessing

    return _multiprocessing.SemLock(1, 0, 1 << 30, f"/interlock-test-{os.getpid()}-{tag}", True)


def test_bad_spin_settings_are_refused(spin: Any) -> None:
    for bad in (-1.0, 1e7, float("nan")):
        with pytest.raises(ValueError, match="between 0 and 1000000"):
            ff.configure_spin(bad)
    assert ff.configure_spin(70.0) == 50.0 and ff.configure_spin(50.0) == 70.0


@pytest.mark.parametrize(
    ("var", "bad", "good"),
    [
        ("INTERLOCK_FILE_SPIN_US", ("fast", "-5", "1e9"), "120"),
        ("INTERLOCK_FILE_HANDOFF_YIELD", ("yes", "2", "off"), "0"),
    ],
)
def test_the_c_twin_settings_are_checked_before_any_io(
    var: str, bad: tuple[str, ...], good: str, spin: Any, yielding: Any, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A malformed INTERLOCK_FILE_SPIN_US / INTERLOCK_FILE_HANDOFF_YIELD raises InvalidArgument naming
    the variable before the directory is created; a good one is applied to the C twin."""
    from interlock import InvalidArgument
    from interlock.backends.file import FileBackend

    for value in bad:
        monkeypatch.setenv(var, value)
        with pytest.raises(InvalidArgument, match=var):
            FileBackend("file://" + str(tmp_path / "never"))
        assert not (tmp_path / "never").exists()
    monkeypatch.setenv(var, good)
    FileBackend("file://" + str(tmp_path / "d")).close()
    if var == "INTERLOCK_FILE_SPIN_US":
        assert ff.configure_spin(50.0) == 120.0
    else:
        assert ff.configure_yield(True) is False


def test_a_handoff_pokes_the_new_head_only_if_it_takes_pokes(pair: Pair, spin: Any) -> None:
    """The release grants the head (posted through the cached sem_t address) and pokes the waiter behind
    it, which became the head: BOX_POKE set and its semaphore posted, once. A new head whose slot does
    not take pokes (BOX_SPINS clear: a pure-Python waiter) is left alone."""
    t = pair.grant(5, True, P1)[0]
    pair.enqueue(5, P2, 7, 0x80000003)
    pair.enqueue(5, P3, 8, 0x80000004)
    box = mmap.mmap(-1, 4096)
    s3, s4, s5 = _sem("3"), _sem("4"), _sem("5")
    posts = {(P2, 0x80000003): (box, 64, s3.release, s3.handle),
             (P3, 0x80000004): (box, 96, s4.release, s4.handle),
             (P1, 0x80000005): (box, 128, s5.release, s5.handle)}
    box[96 + BOX_SPINS] = 1
    sent = ff.spin_stats()[0]
    r, _, wakes = pair.release(t, P1, 5, posts=posts)
    assert r is True
    assert GRANT.unpack(box[64:64 + GRANT.size]) == GRANT.unpack(wakes[0][2])
    assert s3.acquire(False) and not s3.acquire(False), "the grant is posted once"
    assert box[96 + BOX_POKE] == 1 and s4.acquire(False) and not s4.acquire(False)
    assert box[96:96 + 8] == bytes(8), "a poke writes no grant"
    assert ff.spin_stats()[0] == sent + 1
    # P3 is the head now; P1 queues behind it in a slot that does not take pokes.
    pair.enqueue(5, P1, 9, 0x80000005)
    t2 = GRANT.unpack(box[64:64 + GRANT.size])[1]
    r, _, _ = pair.release(t2, P2, 5, posts=posts)
    assert r is True and s4.acquire(False)
    assert box[128 + BOX_POKE] == 0 and not s5.acquire(False)
    assert ff.spin_stats()[0] == sent + 1


@pytest.mark.parametrize("prime_works", [True, False])
def test_a_new_head_never_granted_to_is_primed_then_poked(pair: Pair, spin: Any, prime_works: bool) -> None:
    """The Waker's cache is filled by deliveries, so in a strict rotation (A hands to B, B to C, C to A)
    a releaser never has its new head's entry: the release asks ``prime`` for it (once), then pokes.
    When priming finds nothing (the waiter is gone) the head is just not poked."""
    box = mmap.mmap(-1, 4096)
    s3, s4 = _sem("p3"), _sem("p4")
    box[96 + BOX_SPINS] = 1
    t = pair.grant(5, True, P1)[0]
    pair.enqueue(5, P2, 7, 0x80000003)
    pair.enqueue(5, P3, 8, 0x80000004)
    posts = {(P2, 0x80000003): (box, 64, s3.release, s3.handle)}
    asked: list[tuple[int, int]] = []

    def prime(proc: int, n: int) -> None:
        asked.append((proc, n))
        if prime_works:
            posts[(proc, n)] = (box, 96, s4.release, s4.handle)

    sent, primes = ff.spin_stats()[0], ff.spin_stats()[5]
    r, _, _ = pair.release(t, P1, 5, posts=posts, prime=prime)
    assert r is True and s3.acquire(False), "the grant is delivered either way"
    assert asked == [(P3, 0x80000004)], "only the new head, once"
    assert ff.spin_stats()[5] == primes + 1
    assert (box[96 + BOX_POKE] == 1) is prime_works
    assert s4.acquire(False) is prime_works and not s4.acquire(False)
    assert ff.spin_stats()[0] == sent + prime_works
    # The next handoff goes to P3: delivered by C through the primed entry (else left to Python, which
    # opens what it needs, and no poke is sent: see release()); its new head, P1, is primed in turn.
    pair.enqueue(5, P1, 9, 0x80000005)
    t2 = GRANT.unpack(box[64:64 + GRANT.size])[1]
    r, _, _ = pair.release(t2, P2, 5, posts=posts, prime=prime)
    assert (r is True) is prime_works
    assert s4.acquire(False) is prime_works
    assert asked == [(P3, 0x80000004)] + ([(P1, 0x80000005)] if prime_works else [])


@pytest.mark.parametrize("error", [OSError("no such mailbox"), KeyboardInterrupt()])
def test_an_error_inside_prime_loses_no_grant(pair: Pair, spin: Any, error: BaseException) -> None:
    """``prime`` opens files and runs Python code. An exception inside it is dropped with the poke (a
    hint): the release returns True. An interrupt (KeyboardInterrupt: a signal handler runs in any
    Python code) goes on to the releaser's caller instead. Either way the release is complete: the file
    lock is free and the grant is committed and posted to its waiter."""
    box = mmap.mmap(-1, 4096)
    s3 = _sem("e3")
    t = pair.grant(5, True, P1)[0]
    pair.enqueue(5, P2, 7, 0x80000003)
    pair.enqueue(5, P3, 8, 0x80000004)

    def prime(proc: int, n: int) -> None:
        raise error

    posts = {(P2, 0x80000003): (box, 64, s3.release, s3.handle)}
    if isinstance(error, Exception):
        assert pair.release(t, P1, 5, posts=posts, prime=prime)[0] is True
    else:
        with pytest.raises(KeyboardInterrupt):
            ff.release(pair.c.m, pair.c.fd, t, P1, 5, False, 3.5, posts, prime)
        assert not _held_by_other(pair.cpath), "the file lock is free"
    assert s3.acquire(False), "the grant was posted"
    assert GRANT.unpack(box[64:64 + GRANT.size])[0] == 7, "to its waiter"


def _wait_args(sem: Any, box: mmap.mmap, off: int, wid: int, timeout: float | None) -> tuple[Any, ...]:
    from interlock._lease import RELEASED, Lease

    class W:
        done = False
        slot: object = None

    w = W()
    w.slot = slot = object()
    lease = Lease.__new__(Lease)
    lease._state = RELEASED
    return (sem.handle, box, off, wid, timeout, w, lease, {}, object(), "permits", {wid: w}, [], slot, None, None)


def _until(cond: Any, what: str) -> None:
    import time

    deadline = time.monotonic() + 10
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.001)


def _in_thread(fn: Any, *args: Any) -> tuple[Any, list[Any]]:
    import threading

    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn(*args)))
    t.start()
    return t, out


def _start_poked_wait(tag: str, off: int, wid: int) -> tuple[Any, mmap.mmap, tuple[Any, ...], Any, Any, list[Any]]:
    """A thread in wait() on a fresh slot, poked once it takes pokes: (sem, box, args, stats, thread, out)."""
    sem, box = _sem(tag), mmap.mmap(-1, 4096)
    args = _wait_args(sem, box, off, wid, None)
    before = ff.spin_stats()
    t, out = _in_thread(ff.wait, *args)
    _until(lambda: box[off + BOX_SPINS] == 1, "the waiter takes pokes")
    box[off + BOX_POKE] = 1
    sem.release()
    return sem, box, args, before, t, out


def test_a_poked_waiter_takes_its_grant_while_spinning(spin: Any) -> None:
    from interlock._lease import HELD

    ff.configure_spin(1e6, False)  # (a fixed budget of 1 s: the grant below comes well within it)
    sem, box, args, before, t, out = _start_poked_wait("spin", 32, 7)
    _until(lambda: ff.spin_stats()[1] == before[1] + 1, "the poke is taken")
    box[32 + 8:32 + GRANT.size] = GRANT.pack(7, 100, 1, MODES["permits"])[8:]
    box[32:32 + 8] = GRANT.pack(7, 100, 1, MODES["permits"])[:8]
    sem.release()
    t.join(10)
    lease = args[6]
    assert out == [lease] and lease._state == HELD and lease.token == 100
    after = ff.spin_stats()
    assert (after[2] - before[2], after[3] - before[3]) == (1, 0), "granted while spinning, never parked"
    assert box[32 + BOX_POKE] == 0 and not sem.acquire(False), "every post taken"
    lease._state = 1  # RELEASED (no channel behind it)


def test_a_poked_waiter_whose_spin_runs_out_parks_and_is_still_woken(spin: Any) -> None:
    ff.configure_spin(200.0, False)
    sem, box, args, before, t, out = _start_poked_wait("park", 64, 9)
    _until(lambda: ff.spin_stats()[3] == before[3] + 1, "the spin runs out")
    assert t.is_alive(), "parked again, not returned"
    box[64:64 + GRANT.size] = GRANT.pack(9, 200, 1, MODES["permits"])
    sem.release()
    t.join(10)
    assert out == [args[6]] and args[6].token == 200
    args[6]._state = 1


def test_a_poke_that_raced_with_the_grant_leaves_no_post_behind(spin: Any) -> None:
    """Poked and granted before the wait ran: the grant is taken and the poke's post drained, so the
    slot's next wait does not wake for nothing."""
    sem, box = _sem("race"), mmap.mmap(-1, 4096)
    args = _wait_args(sem, box, 96, 11, None)
    box[96 + BOX_POKE] = 1
    sem.release()
    box[96:96 + GRANT.size] = GRANT.pack(11, 300, 1, MODES["permits"])
    sem.release()
    taken = ff.spin_stats()[1]
    assert ff.wait(*args) is args[6] and args[6].token == 300
    assert box[96 + BOX_POKE] == 0 and not sem.acquire(False)
    assert ff.spin_stats()[1] == taken, "no spin: the grant was already there"
    args[6]._state = 1


def test_a_poked_waiter_never_spins_past_its_timeout(spin: Any) -> None:
    import time

    ff.configure_spin(1e6, False)  # 1 s budget, 50 ms timeout
    sem, box = _sem("timeout"), mmap.mmap(-1, 4096)
    args = _wait_args(sem, box, 128, 13, 0.05)
    box[128 + BOX_POKE] = 1
    sem.release()
    t0 = time.monotonic()
    assert ff.wait(*args) is False
    assert time.monotonic() - t0 < 0.9, "the spin is bounded by the wait's timeout"
    assert box[128 + BOX_POKE] == 0 and not args[5].done


def test_after_long_head_waits_waiters_stop_taking_pokes_but_one_in_16(spin: Any) -> None:
    """Adaptive budget: once the moving average of poke -> grant exceeds the maximum, waits stop asking
    for pokes (which would wake a parked head for nothing), except one in 16 that keeps measuring."""
    ff.configure_spin(50.0)
    sem, box = _sem("adapt"), mmap.mmap(-1, 4096)
    args = _wait_args(sem, box, 160, 15, None)
    t, out = _in_thread(ff.wait, *args)
    _until(lambda: box[160 + BOX_SPINS] == 1, "a fresh average takes pokes")
    box[160 + BOX_POKE] = 1
    sem.release()
    _until(lambda: ff.spin_stats()[3] >= 1, "the short spin runs out")
    import time

    time.sleep(0.005)  # (a long hold: the head waits 5 ms more for its grant; only makes the average long)
    box[160:160 + GRANT.size] = GRANT.pack(15, 400, 1, MODES["permits"])
    sem.release()
    t.join(10)
    assert out == [args[6]]
    args[6]._state = 1
    # The first sample (over 5 ms) seeds the average, counted as at most twice the cap (not 1/8 of it).
    assert ff.spin_stats()[4] == pytest.approx(100.0)
    takes = []
    for _ in range(32):
        assert ff.wait(*_wait_args(sem, box, 160, 16, 0.0)) is False
        takes.append(box[160 + BOX_SPINS])
    assert sum(takes) == 2, takes


def test_one_long_head_wait_does_not_stop_the_spinning(spin: Any) -> None:
    """A sample counts at most twice the cap in the moving average: after short head waits, one wait
    of ten caps (a holder the host preempted, say) leaves the average under the cap, so the next wait
    still takes pokes. (Counted in full it would lift the average over the cap, 0.5 + 99.5 / 8 ms.)"""
    import time

    ff.configure_spin(10_000.0)  # a 10 ms cap: the short waits below stay far under it on any machine

    def one_wait(wid: int, hold: float) -> None:
        sem, box, args, before, t, out = _start_poked_wait(f"long{wid}", 192, wid)
        # (The poke taken before the grant is written: a grant found with it would end the wait unmeasured.)
        _until(lambda: ff.spin_stats()[1] == before[1] + 1, "the poke is taken")
        time.sleep(hold)
        box[192:192 + GRANT.size] = GRANT.pack(wid, 500 + wid, 1, MODES["permits"])
        sem.release()
        t.join(10)
        assert out == [args[6]]
        args[6]._state = 1

    one_wait(40, 0.0)
    short = ff.spin_stats()[4]
    assert short < 5_000.0, "a short first wait seeds the average"
    one_wait(41, 0.1)  # ten caps
    assert short < ff.spin_stats()[4] <= short + (20_000.0 - short) / 8 + 1e-6
    sem, box = _sem("long42"), mmap.mmap(-1, 4096)
    assert ff.wait(*_wait_args(sem, box, 192, 42, 0.0)) is False
    assert box[192 + BOX_SPINS] == 1, "the next wait still takes pokes"


def test_a_pure_python_waiter_is_never_poked(tmp_path: Path, spin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A C releaser and pure-Python waiters (another backend object: another process id) share a
    semaphore. The pure waiters clear their slots' BOX_SPINS (here set beforehand, as a C waiter of
    that slot would have left it), so no poke is ever sent to them; C waiters in the same scenario are."""
    import threading

    import interlock
    from interlock.backends.file import FileBackend, _channel

    url = "file://" + str(tmp_path / "mix")
    native_b = FileBackend(url)
    native = interlock.Semaphore("mix", 1, backend=native_b)
    monkeypatch.setattr(_channel, "_native", None)
    pure_b = FileBackend(url)
    pure = interlock.Semaphore("mix", 1, backend=pure_b)
    monkeypatch.undo()
    pure_b.proc_id()
    mbox = pure_b._proc.mbox  # type: ignore[union-attr]
    ff.configure_spin(50.0, False)

    def rounds(waiting: Any, spins_of: Any) -> int:
        sent = ff.spin_stats()[0]
        for _ in range(4):
            held = native.acquire()
            ts = [threading.Thread(target=lambda: waiting.acquire().release()) for _ in range(2)]
            for t in ts:
                t.start()
            _until(lambda: len(native.statistics().waiters) == 2, "both threads queue")
            _until(spins_of, "the waiters are asleep")
            held.release()
            for t in ts:
                t.join(10)
        return int(ff.spin_stats()[0] - sent)

    for i in range(64):
        mbox[i * 32 + BOX_SPINS] = 1
    assert rounds(pure, lambda: sum(mbox[i * 32 + BOX_SPINS] for i in range(64)) == 62) == 0
    native_mbox = native_b._proc.mbox  # type: ignore[union-attr]
    assert rounds(native, lambda: sum(native_mbox[i * 32 + BOX_SPINS] for i in range(64)) >= 2) >= 1
    native_b.close()
    pure_b.close()


# -- a release yields its CPU to a grantee of another process ("yielding after a handoff", _fastfile.c) --


def _handoff_to(pair: Pair, grantee: int, slot: int, sem: Any, box: mmap.mmap) -> None:
    t = pair.grant(5, True, P1)[0]
    pair.enqueue(5, grantee, 7, slot)
    r, _, wakes = pair.release(t, P1, 5, posts={(grantee, slot): (box, 64, sem.release, sem.handle)})
    assert r is True and GRANT.unpack(box[64:64 + GRANT.size]) == GRANT.unpack(wakes[0][2])
    assert sem.acquire(False) and not sem.acquire(False), "the grant is posted once"


def test_a_handoff_to_another_process_yields_once(pair: Pair, yielding: Any) -> None:
    box = mmap.mmap(-1, 4096)
    before = ff.handoff_yields()
    _handoff_to(pair, P2, 0x80000003, _sem("y1"), box)
    assert ff.handoff_yields() == before + 1


def test_a_handoff_within_the_process_does_not_yield(pair: Pair, yielding: Any) -> None:
    """The grantee is a thread of the releasing process: it needs this thread's GIL before anything,
    so yielding the CPU to it would gain nothing."""
    box = mmap.mmap(-1, 4096)
    before = ff.handoff_yields()
    _handoff_to(pair, P1, 0x80000003, _sem("y2"), box)
    assert ff.handoff_yields() == before


def test_configure_yield_turns_the_yield_off(pair: Pair, yielding: Any) -> None:
    assert ff.configure_yield(False) is True and ff.configure_yield(False) is False
    box = mmap.mmap(-1, 4096)
    before = ff.handoff_yields()
    _handoff_to(pair, P2, 0x80000003, _sem("y3"), box)
    assert ff.handoff_yields() == before


def test_a_strict_rotation_of_processes_pokes_every_new_head(tmp_path: Path) -> None:
    """Three processes take a lock in a strict rotation (A hands to B, B to C, C to A), each releasing
    only once the other two are queued. A release then grants the process behind it and pokes the one
    after, which it never grants to, so only a primed cache entry lets it poke (before Waker.prime, not
    one poke was sent here). Every process sends a poke in each release that had a new head, and the
    grants still follow the queue (tokens strictly increase in rotation order)."""
    import interlock
    from file.helpers import Child

    url = "file://" + str(tmp_path / "rot")
    lock = interlock.Lock("rot", url=url)
    held = lock.acquire()
    rounds = 5
    kids = []
    try:
        for i in range(3):
            c = Child(url, f"""
                from interlock.backends.file import _fastfile as ff
                lock = interlock.Lock("rot", url=URL)  # (its backend applies INTERLOCK_FILE_SPIN_US, if set)
                ff.configure_spin(1e6, False)  # then: take every poke (no adaptive opt-out)
                say("queued")
                for r in range({rounds}):
                    with lock as lease:
                        deadline = time.monotonic() + 10
                        want = 2 if r < {rounds} - 1 or {i} == 0 else {2 - i}
                        while len(lock.statistics().waiters) < want and time.monotonic() < deadline:
                            time.sleep(0.001)
                        say("held", {i}, r, lease.token)
                say("pokes", ff.spin_stats()[0], ff.spin_stats()[5])
            """)
            kids.append(c)
            c.expect("queued")
            _until(lambda n=i + 1: len(lock.statistics().waiters) == n, "queued in order")
        held.release()
        tokens: list[tuple[int, int, int]] = []
        for c in kids:
            for _ in range(rounds):
                _, i, r, tok = c.expect("held").split()
                tokens.append((int(tok), int(i), int(r)))
        tokens.sort()
        assert [i for _, i, _ in tokens] == [0, 1, 2] * rounds, "a strict rotation, in queue order"
        for c in kids:
            _, sent, primed = c.expect("pokes").split()
            # Every release but the last one or two (fewer than two others left queued) had a new head.
            assert int(sent) >= rounds - 2, f"pokes sent {sent} (primed {primed}) in {rounds} releases"
            assert 1 <= int(primed) <= 2, "each new head is primed once"
    finally:
        for c in kids:
            c.close()


def test_waker_prime_caches_a_peer_slot_once_and_never_evicts(tmp_path: Path) -> None:
    """Waker.prime opens a peer's mailbox and slot semaphore into the poke cache, posting nothing; a
    second call opens nothing; with the cache full it adds nothing (no eviction for a hint); a peer
    that is gone is ignored."""
    from interlock.backends.file import FileBackend

    url = "file://" + str(tmp_path / "prime")
    a, b = FileBackend(url), FileBackend(url)  # two process records in one directory, as two processes
    try:
        proc = a.proc_id()
        slot = a.take_slot()
        waker = b.waker
        waker.prime(proc, slot.n)
        entry = waker._posts[(proc, slot.n)]
        assert entry[1] == (slot.n & ~0x80000000) * 32, "the slot's offset in the peer's mailbox"
        assert not slot.sem.acquire(False), "priming posts nothing"
        waker.prime(proc, slot.n)
        assert waker._posts[(proc, slot.n)] is entry, "cached once"
        waker.prime(proc + 1, 0x80000001)  # no such process: ignored
        assert (proc + 1, 0x80000001) not in waker._posts
        del waker._posts[(proc, slot.n)]
        filler = {(i, 0x80000000 | i): entry for i in range(1, waker.MAX_CONNECTED + 1)}
        waker._posts.update(filler)
        waker.prime(proc, slot.n)
        assert (proc, slot.n) not in waker._posts, "a full cache gets no new entry"
        assert len(waker._posts) == waker.MAX_CONNECTED, "and loses none"
        a.give_slot(slot)
    finally:
        b.close()
        a.close()

"""The state file's operations, one by one, against the invariants written next to the format:
available + held == capacity, FIFO grants, strictly increasing tokens, double-buffered commits."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import pytest

from interlock.backends.file._state import GRANT, MODES, PAGE, StateFile, encode_label, parse

LABEL = encode_label("t", "test")
PERM = MODES["permits"]


@pytest.fixture
def sem(tmp_path: Path) -> StateFile:
    fd = os.open(tmp_path / "s.state", os.O_RDWR | os.O_CREAT, 0o600)
    sf = StateFile(fd, "s")
    sf.setup(b"s", "semaphore", 4, True, "file://")
    return sf


def snap(sf: StateFile) -> object:
    sf.lock()
    try:
        return sf.snapshot_locked()
    finally:
        sf.unlock()


def invariant(sf: StateFile) -> None:
    s = snap(sf)
    assert s.available + sum(h.permits for h in s.holders) == s.capacity  # type: ignore[attr-defined]
    if s.waiters:  # type: ignore[attr-defined]
        assert s.waiters[0].permits > s.available, "grants are eager: the head never fits"  # type: ignore[attr-defined]


def test_grant_and_release_without_waiters(sem: StateFile) -> None:
    r = sem.grant_fast_locked(3, True, 7, PERM, LABEL, 1.0)
    assert r is not None
    token, prev, passed = r
    assert not prev and passed == 0
    assert sem.grant_fast_locked(2, True, 7, PERM, LABEL, 1.0) is None
    invariant(sem)
    sent: list[object] = []
    assert sem.release_locked(token, 7, None, False, 2.0, deliver=lambda *a: sent.append(a)) == (True, [])
    assert sent == []
    assert sem.release_locked(token, 7, None, False, 2.0) == (False, []), "idempotent"
    invariant(sem)
    assert snap(sem).available == 4  # type: ignore[attr-defined]


def test_a_release_hands_off_to_the_head_and_delivers_after_committing(sem: StateFile) -> None:
    t1 = sem.grant_fast_locked(4, True, 7, PERM, LABEL, 1.0)[0]  # type: ignore[index]
    tk_a, _ = sem.enqueue_locked(2, 8, 101, 1, PERM, LABEL, 1.0)
    tk_b, _ = sem.enqueue_locked(3, 9, 102, 2, PERM, LABEL, 1.0)
    sem.enqueue_locked(1, 10, 103, 3, PERM, LABEL, 1.0)  # behind b: must not overtake it
    invariant(sem)
    seen: list[tuple[object, object]] = []

    def deliver(proc: int, n: int, payload: bytes) -> None:
        # called after the commit: the state already shows the grantee as the holder (a releaser killed
        # between commit and delivery leaves a grant the waiter finds by looking, never a grant the
        # state does not know)
        seen.append(((proc, n, payload), [h.key for h in snap_unlocked(sem).holders]))

    found, rest = sem.release_locked(t1, 7, None, False, 2.0, deliver=deliver)
    assert found and rest == []
    ((wake, holders_then),) = seen
    assert holders_then == [t1 + 1]
    assert wake[:2] == (8, 1), "only the head fits (2 of 4); b (3) waits, c waits behind b"
    wid, token, permits, _mode = GRANT.unpack(wake[2])
    assert (wid, token, permits) == (101, t1 + 1, 2)
    s = snap(sem)
    assert [(h.proc, h.key) for h in s.holders] == [(8, t1 + 1)]  # type: ignore[attr-defined]
    assert next(w.key for w in s.waiters) == tk_b  # type: ignore[attr-defined]
    invariant(sem)
    del tk_a


def snap_unlocked(sf: StateFile) -> object:
    return sf.snapshot_locked()  # the caller (send, inside release_locked) already holds the lock


def test_partial_release_and_forget(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "u.state", os.O_RDWR | os.O_CREAT, 0o600)
    sf = StateFile(fd, "u")
    sf.setup(b"u", "semaphore", 0, False, "file://")
    assert sf.signal_locked(3, 1.0) == []
    t = sf.grant_fast_locked(3, True, 7, PERM, LABEL, 1.0)[0]  # type: ignore[index]
    sf.release_locked(t, 7, 1, False, 2.0)  # give back 1 of 3
    s = snap(sf)
    assert s.available == 1 and [h.permits for h in s.holders] == [2]  # type: ignore[attr-defined]
    sf.release_locked(t, 7, None, False, 2.0, forget=True, bounded=False)  # consume the other 2
    s = snap(sf)
    assert (s.capacity, s.available, s.holders) == (1, 1, [])  # type: ignore[attr-defined]


def test_withdraw_from_the_middle_and_the_head(sem: StateFile) -> None:
    t = sem.grant_fast_locked(3, True, 7, PERM, LABEL, 1.0)[0]  # type: ignore[index]
    a, _ = sem.enqueue_locked(4, 8, 1, 1, PERM, LABEL, 1.0)
    b, _ = sem.enqueue_locked(1, 9, 2, 2, PERM, LABEL, 1.0)
    c, _ = sem.enqueue_locked(1, 10, 3, 3, PERM, LABEL, 1.0)
    assert sem.withdraw_locked(c, 1.0) == (True, [])
    found, wakes = sem.withdraw_locked(a, 1.0)  # the big head leaves: b fits now
    assert found and [(p, n) for p, n, _ in wakes] == [(9, 2)]
    assert sem.withdraw_locked(a, 1.0) == (False, [])
    invariant(sem)
    del b, t


def test_reclaim_dead_holders_and_waiters(sem: StateFile) -> None:
    sem.grant_fast_locked(4, True, 66, PERM, LABEL, 1.0)
    sem.enqueue_locked(1, 66, 5, 1, PERM, LABEL, 1.0)  # the dead process was also queued
    sem.enqueue_locked(4, 8, 6, 2, PERM, LABEL, 1.0)
    removed, wakes = sem.reclaim_locked({66}, 2.0)
    assert removed == 2
    ((proc, n, payload),) = wakes
    assert (proc, n) == (8, 2)
    assert GRANT.unpack(payload)[3] & 0x80, "the next holder learns its predecessor died"
    invariant(sem)


def test_random_operations_keep_the_invariants(sem: StateFile, seed: int) -> None:
    rng = random.Random(seed)
    held: list[tuple[int, int]] = []  # (token, proc)
    queued: list[int] = []
    last = 0
    for step in range(400):
        op = rng.random()
        if op < 0.35:
            r = sem.grant_fast_locked(rng.randint(1, 4), True, 7, PERM, LABEL, step)
            if r is not None:
                assert r[0] > last
                last = r[0]
                held.append((r[0], 7))
        elif op < 0.6:  # as the channel does: enqueue only when an immediate grant is refused
            k = rng.randint(1, 4)
            r = sem.grant_fast_locked(k, True, 8, PERM, LABEL, step)
            if r is None:
                tk, _ = sem.enqueue_locked(k, 8, step + 1000, 1, PERM, LABEL, step)
                queued.append(tk)
        elif op < 0.9 and held:
            tok, proc = held.pop(rng.randrange(len(held)))
            found, _wakes = sem.release_locked(tok, proc, None, False, step, deliver=lambda *a: None)
            assert found
        elif queued:
            sem.withdraw_locked(queued.pop(rng.randrange(len(queued))), step)
        s = snap(sem)
        held = [(h.key, h.proc) for h in s.holders]  # type: ignore[attr-defined]
        for h in s.holders:  # type: ignore[attr-defined]
            assert h.key <= s.last_token  # type: ignore[attr-defined]
        last = max(last, s.last_token)  # type: ignore[attr-defined]
        queued = [w.key for w in s.waiters]  # type: ignore[attr-defined]
        invariant(sem)


def test_garbage_in_the_inactive_slot_changes_nothing(sem: StateFile) -> None:
    # A writer killed before its commit leaves garbage in the inactive slot, never in the active one.
    sem.grant_fast_locked(2, True, 7, PERM, LABEL, 1.0)
    before = snap(sem)
    m = sem.m
    sel = m[8]
    off, size = struct.unpack_from("<QQ", m, 24 + 16 * (sel ^ 1))
    m[off:off + size] = os.urandom(size)
    after = snap(sem)
    assert [(h.key, h.permits) for h in after.holders] == [(h.key, h.permits) for h in before.holders]  # type: ignore[attr-defined]
    assert after.available == before.available == 2  # type: ignore[attr-defined]
    assert sem.grant_fast_locked(2, True, 7, PERM, LABEL, 2.0) is not None  # and it keeps working
    invariant(sem)


def test_a_half_written_new_file_is_initialised_again(tmp_path: Path) -> None:
    path = tmp_path / "h.state"
    path.write_bytes(b"\x00" * (3 * PAGE))  # a creator died before writing the magic
    fd = os.open(path, os.O_RDWR)
    sf = StateFile(fd, "h")
    sf.setup(b"h", "lock", 1, True, "file://")
    s = parse(path.read_bytes())
    assert (s.name, s.kind, s.capacity, s.available) == ("h", "lock", 1, 1)
    sf.close()


def test_the_channel_hands_off_through_the_fast_path(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Guards against a regression that sent every release through the generic (slower) path.
    import threading

    import interlock
    from contract.helpers import wait_until
    from interlock.backends.file import _state

    def generic(*args: object, **kwargs: object) -> object:
        raise AssertionError("the generic grant loop was used for a plain release")

    lock = interlock.Lock("fast", url=url)
    lease = lock.acquire()
    got: list[interlock.Lease] = []
    t = threading.Thread(target=lambda: got.append(lock.acquire()))
    t.start()
    wait_until(lambda: len(lock.statistics().waiters) == 1, what="queued")
    monkeypatch.setattr(_state.StateFile, "_grant_loop", generic)
    lease.release()
    t.join(20)
    assert got and got[0].token == lease.token + 1

"""The history checker against synthetic histories that must fail and must pass, plus the recorder."""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interlock.testing.history import (
    Event,
    Recorder,
    check,
    check_fifo,
    check_liveness,
    check_rw,
    check_tokens,
    check_writes,
    dump,
    handoff_gap,
    holds,
    load,
    load_dir,
)

# -- tiny event builders ---------------------------------------------------------------------------


def acq(
    client: str,
    start: float,
    end: float,
    token: int | None = None,
    *,
    ok: bool | None = True,
    permits: int = 1,
    name: str = "L",
    mode: str = "exclusive",
) -> Event:
    return Event(client, "acquire", start, end, ok, token, permits, name, mode)


def rel(client: str, start: float, token: int | None = None, *, name: str = "L") -> Event:
    return Event(client, "release", start, start + 0.001, True, token, 1, name)


def renew(client: str, start: float, token: int | None = None, *, ok: bool = True, name: str = "L") -> Event:
    return Event(client, "renew", start, start + 0.001, ok, token, 1, name)


def write(client: str, at: float, token: int, *, ok: bool = True, name: str = "R") -> Event:
    return Event(client, "write", at, at + 0.001, ok, token, 1, name)


def held(client: str, a: float, b: float, token: int | None = None, **kw: object) -> list[Event]:
    """Acquire returning at *a* (asked 1 ms before), release invoked at *b*."""
    return [acq(client, a - 0.001, a, token, **kw), rel(client, b, token, name=str(kw.get("name", "L")))]  # type: ignore[arg-type]


def grep(errors: list[str], word: str) -> list[str]:
    return [e for e in errors if word in e]


# -- must fail ----------------------------------------------------------------------------------


def test_double_grant_is_reported() -> None:
    h = held("A", 0.01, 1.0, 1) + held("B", 0.31, 1.2, 2)
    errors = check(h, capacity=1, ttl=2.0)
    assert grep(errors, "over capacity"), errors
    assert "B/2" in errors[0] and "A/1" in errors[0]
    assert check(h, capacity=1), "no ttl: every overlap counts"


def test_grant_inside_a_renewed_lease_is_reported() -> None:
    # A's lease was renewed at 1.5 (valid to ~3.48), B was granted at 2.21: a double grant.
    h = [*held("A", 0.01, 5.0, 1), renew("A", 1.5, 1), *held("B", 2.21, 6.0, 2)]
    assert grep(check(h, capacity=1, ttl=2.0), "over capacity")
    # Without the renew A's lease ran out at ~1.99: B's grant is legitimate (a paused holder).
    h2 = held("A", 0.01, 5.0, 1) + held("B", 2.21, 6.0, 2)
    assert check(h2, capacity=1, ttl=2.0) == []


def test_failed_renew_does_not_extend_the_lease() -> None:
    h = [*held("A", 0.01, 5.0, 1), renew("A", 1.5, 1, ok=False), *held("B", 2.21, 6.0, 2)]
    assert check(h, capacity=1, ttl=2.0) == []


def test_semaphore_three_holders_of_two_permits() -> None:
    h = held("A", 0.0, 1.0, 1) + held("B", 0.1, 1.0, 2) + held("C", 0.2, 1.0, 3)
    errors = check(h, capacity=2)
    assert len(grep(errors, "over capacity")) == 1, errors
    assert "3 > 2" in errors[0]


def test_weighted_permits_over_capacity() -> None:
    h = held("A", 0.0, 1.0, 1, permits=2) + held("B", 0.5, 1.5, 2, permits=2)
    assert grep(check(h, capacity=3), "over capacity")
    assert check(h, capacity=4) == []
    assert grep(check(held("A", 0.0, 1.0, 1, permits=5), capacity=4), "5 > 4")


def test_token_regression() -> None:
    h = held("A", 0.01, 0.5, 5) + held("B", 1.01, 1.5, 3)
    errors = check(h)
    assert grep(errors, "non-monotonic"), errors
    assert not grep(errors, "over capacity")


def test_token_regression_after_restart_across_many_grants() -> None:
    tokens = [1, 2, 3, 4, 1, 2]  # a counter that restarted at 1
    h = [e for i, t in enumerate(tokens) for e in held(f"c{i}", i + 0.01, i + 0.5, t)]
    errors = check_tokens(h)
    assert len(grep(errors, "non-monotonic")) == 2
    assert len(grep(errors, "issued twice")) == 2


def test_duplicate_token() -> None:
    h = held("A", 0.01, 0.5, 1) + held("B", 1.01, 1.5, 1)
    assert grep(check(h), "issued twice")
    # uniqueness does not depend on order: concurrent grants of a semaphore with one token
    h2 = [acq("A", 0.0, 0.02, 7), acq("B", 0.01, 0.02, 7), rel("A", 0.5, 7), rel("B", 0.5, 7)]
    errors = check(h2, capacity=2)
    assert grep(errors, "issued twice") and not grep(errors, "non-monotonic")
    assert not grep(check(h2, capacity=2, unique_tokens=False), "issued twice")


def test_stale_write_accepted() -> None:
    h = [write("B", 1.0, 2), write("A", 2.0, 1)]
    assert grep(check_writes(h), "stale write accepted")
    assert grep(check(h), "stale write accepted")


def test_paused_holder_late_write() -> None:
    """Kleppmann's timeline: A pauses past its lease, B acquires and writes, A wakes and writes."""
    base = [*held("A", 0.01, 5.0, 1), write("A", 0.1, 1), *held("B", 2.5, 3.0, 2), write("B", 2.6, 2)]
    rejected = [*base, write("A", 4.9, 1, ok=False)]
    assert check(rejected, capacity=1, ttl=2.0) == [], "legal overlap of beliefs, store rejected"
    accepted = [*base, write("A", 4.9, 1, ok=True)]
    errors = check(accepted, capacity=1, ttl=2.0)
    assert errors == [grep(errors, "stale write accepted")[0]]


def test_fifo_violation() -> None:
    # H holds 0.01..1.0; A asks at 0.1, B at 0.2; B is granted at 1.01 and A only after B.
    h = [*held("H", 0.01, 1.0, 1), acq("A", 0.1, 1.51, 3), rel("A", 2.0, 3), acq("B", 0.2, 1.01, 2), rel("B", 1.5, 2)]
    errors = check_fifo(h)
    assert len(errors) == 1 and "FIFO violation" in errors[0], errors
    assert check(h) == [], "exclusion and tokens are fine; only the order is wrong"
    # A slack larger than the arrival gap makes the order ambiguous: not reported.
    assert check_fifo(h, slack=0.15) == []


def test_fifo_in_order_passes() -> None:
    h = [*held("H", 0.01, 1.0, 1), acq("A", 0.1, 1.01, 2), rel("A", 1.5, 2), acq("B", 0.2, 1.51, 3), rel("B", 2.0, 3)]
    assert check_fifo(h) == []
    assert check(h) == []


def test_fifo_ignores_waiters_that_were_not_blocked() -> None:
    # Capacity 2 and one holder: A and B were never both blocked; B returning first is fine.
    h = [*held("H", 0.01, 1.0, 1), acq("A", 0.1, 0.5, 3), acq("B", 0.2, 0.3, 2)]
    assert check_fifo(h, capacity=2) == []
    # With capacity 1 the same returns are a violation.
    assert check_fifo(h, capacity=1)


def test_fifo_weighted_head_of_line() -> None:
    # capacity 3, H holds 2; A wants 2 (blocked), B wants 2 (blocked): B first is a violation.
    h = [
        *held("H", 0.01, 1.0, 1, permits=2),
        acq("A", 0.1, 1.6, 3, permits=2),
        acq("B", 0.2, 1.01, 2, permits=2),
        rel("B", 1.5, 2),
    ]
    assert check_fifo(h, capacity=3)
    # B wants 1 and fits next to H: B was not blocked, so no FIFO claim about it.
    h2 = [*held("H", 0.01, 1.0, 1, permits=2), acq("A", 0.1, 1.6, 3, permits=2), acq("B", 0.2, 0.21, 2)]
    assert check_fifo(h2, capacity=3) == []


def test_rw_overlap() -> None:
    writer_then_reader = held("W", 0.01, 1.0, 1, mode="write") + held("R", 0.5, 0.8, 2, mode="read")
    assert grep(check_rw(writer_then_reader), "rw overlap")
    reader_then_writer = held("R", 0.01, 1.0, 1, mode="read") + held("W", 0.5, 0.8, 2, mode="write")
    assert grep(check_rw(reader_then_writer), "writer W/2")
    two_writers = held("W1", 0.01, 1.0, 1, mode="write") + held("W2", 0.5, 0.8, 2, mode="write")
    assert grep(check_rw(two_writers), "rw overlap")


def test_rw_many_readers_pass() -> None:
    h = [e for i in range(10) for e in held(f"R{i}", 0.01 * (i + 1), 1.0 + i, i + 1, mode="read")]
    h += held("W", 12.0, 13.0, 99, mode="write")
    assert check_rw(h) == []
    assert check(h, capacity=1), "check() ignores modes: ten readers exceed capacity 1"


def test_rw_expired_writer_lease_tolerated() -> None:
    h = held("W", 0.01, 9.0, 1, mode="write") + held("R", 3.0, 4.0, 2, mode="read")
    assert check_rw(h, ttl=2.0) == []
    assert check_rw(h)


def test_liveness() -> None:
    good = held("A", 0.01, 1.0, 1) + held("B", 1.01, 2.0, 2)
    assert check_liveness(good) == []
    timed_out = [*good, acq("C", 0.5, 3.0, ok=False)]
    assert grep(check_liveness(timed_out), "failed")
    unknown = [*good, acq("C", 0.5, 3.0, ok=None)]
    assert grep(check_liveness(unknown), "unknown outcome")
    never = [*good, acq("C", 0.5, math.inf, ok=None)]
    assert grep(check_liveness(never), "never finished")
    assert check_liveness(never, clients=["A", "B"]) == []
    slow = [acq("A", 0.0, 5.0, 1)]
    assert grep(check_liveness(slow, max_wait=1.0), "waited 5.000s")
    assert check_liveness(slow, max_wait=10.0) == []


# -- must pass -----------------------------------------------------------------------------------


def test_clean_handoff() -> None:
    h = [*held("A", 0.01, 1.0, 1), acq("B", 0.5, 1.0005, 2), rel("B", 2.0, 2)]
    assert check(h, capacity=1, ttl=2.0) == []
    assert check_fifo(h) == []
    assert check_liveness(h) == []
    assert handoff_gap(h, 1.0) == pytest.approx(0.0005)
    assert handoff_gap(h, 5.0) == math.inf


def test_release_and_grant_at_the_same_instant() -> None:
    h = held("A", 0.01, 1.0, 1) + held("B", 1.0, 2.0, 2)
    assert check(h) == []


def test_unknown_outcome_acquires_never_count_as_held() -> None:
    h = [*held("A", 0.01, 1.0, 1), acq("B", 0.2, 0.5, None, ok=None), acq("C", 0.2, 0.5, None, ok=False)]
    assert check(h) == []


def test_names_are_checked_independently() -> None:
    h = held("A", 0.01, 1.0, 1, name="x") + held("B", 0.02, 1.0, 1, name="y")
    assert check(h) == []
    h += held("C", 0.5, 0.6, 1, name="y")
    errors = check(h)
    assert errors and all(e.startswith("[y] ") for e in errors), errors


def test_capacity_per_name() -> None:
    h = held("A", 0.01, 1.0, 1, name="x") + held("B", 0.02, 1.0, 2, name="x") + held("C", 0.02, 1.0, 1, name="y")
    assert check(h, capacity={"x": 2, "y": 1}) == []
    assert check(h, capacity={"x": 1, "y": 1})


def test_release_matches_the_grant_by_token() -> None:
    # One client holding two permits of a semaphore through two leases, released out of order.
    h = [acq("A", 0.0, 0.01, 1), acq("A", 0.02, 0.03, 2), rel("A", 0.5, 2), rel("A", 1.0, 1)]
    hs = {x.token: x for x in holds(h)}
    assert hs[1].rel_start == 1.0 and hs[2].rel_start == 0.5
    assert check(h + held("B", 0.6, 0.9, 3), capacity=2) == []
    assert check(h + held("B", 0.4, 0.9, 3), capacity=2)


def test_never_released_hold_stays_held() -> None:
    h = [acq("A", 0.0, 0.01, 1), *held("B", 10.0, 11.0, 2)]
    assert check(h) != []
    assert check(h, ttl=2.0) == []
    lost = [acq("A", 0.0, 0.01, 1), Event("A", "lost", 1.0, 1.0, True, 1, 1, "L"), *held("B", 1.5, 2.0, 2)]
    assert check(lost) == []


# -- hypothesis: generated correct histories pass, a mutated one fails --------------------------


@st.composite
def serial_histories(draw: st.DrawFn) -> list[Event]:
    n = draw(st.integers(2, 30))
    t = 0.0
    token = draw(st.integers(0, 1000))
    events: list[Event] = []
    for _ in range(n):
        client = draw(st.sampled_from("ABCDE"))
        ask = t + draw(st.floats(0.0, 0.5))
        got = ask + draw(st.floats(0.001, 0.2))
        t = got + draw(st.floats(0.001, 0.5))
        token += draw(st.integers(1, 5))
        events += [acq(client, ask, got, token), rel(client, t, token)]
        t += draw(st.floats(0.0, 0.01))
    return events


@settings(max_examples=150, deadline=None)
@given(serial_histories(), st.data())
def test_generated_serial_histories(history: list[Event], data: st.DataObject) -> None:
    assert check(history) == []
    assert check_liveness(history) == []
    assert check_fifo(history) == []
    # mutation: make one later grant return inside an earlier hold -> over capacity
    grants = [e for e in history if e.op == "acquire"]
    i = data.draw(st.integers(0, len(grants) - 2))
    j = data.draw(st.integers(i + 1, len(grants) - 1))
    victim, later = grants[i], grants[j]
    mid = victim.end + 1e-6
    moved = Event(later.client + "x", "acquire", mid - 1e-6, mid, True, later.token, 1, "L")
    bad = [e for e in history if e is not later] + [moved]
    assert grep(check(bad), "over capacity")
    # mutation: swap two tokens of non-overlapping grants -> non-monotonic
    swapped = [
        Event(e.client, e.op, e.start, e.end, e.ok, victim.token if e is later else later.token, 1, "L")
        if e in (victim, later)
        else e
        for e in history
    ]
    assert grep(check(swapped), "non-monotonic")


# -- recorder -------------------------------------------------------------------------------------


def test_recorder_with_threads_and_a_real_lock(rng: random.Random) -> None:
    rec = Recorder()
    lock = threading.Lock()
    counter = itertools.count(1)
    n_threads, rounds = 6, 40
    delays = [[rng.random() * 0.001 for _ in range(rounds)] for _ in range(n_threads)]

    def worker(i: int) -> None:
        for d in delays[i]:
            with rec.acquire(f"t{i}", "L") as op:
                lock.acquire()
                op.token = next(counter)
            time.sleep(d)
            with rec.release(f"t{i}", "L", token=op.token):
                lock.release()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = rec.events()
    assert len(events) == 2 * n_threads * rounds
    assert check(events, capacity=1) == []
    assert check_liveness(events) == []


def test_recorder_catches_a_broken_lock() -> None:
    rec = Recorder()
    barrier = threading.Barrier(2)
    tokens = iter([1, 2])

    def worker(i: int) -> None:
        with rec.acquire(f"t{i}", "L") as op:
            op.token = next(tokens)  # "granted" without any exclusion
        barrier.wait()  # both are inside now
        with rec.release(f"t{i}", "L", token=op.token):
            pass

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert grep(check(rec.events()), "over capacity")


def test_operation_outcomes() -> None:
    rec = Recorder(definite_failures=(TimeoutError,))
    with pytest.raises(TimeoutError), rec.acquire("a", "L"):
        raise TimeoutError
    with pytest.raises(ConnectionError), rec.acquire("b", "L"):
        raise ConnectionError
    with rec.acquire("c", "L") as op:
        op.unknown()
    rec.acquire("d", "L").succeeded(token=4)
    pending = rec.acquire("e", "L")
    by_client = {e.client: e for e in rec.events()}
    assert by_client["a"].ok is False
    assert by_client["b"].ok is None
    assert by_client["c"].ok is None
    assert by_client["d"].ok is True and by_client["d"].token == 4
    assert by_client["e"].end == math.inf and by_client["e"].ok is None
    assert pending.event is None
    assert len(check_liveness(rec.events())) == 4


def test_dump_and_load_round_trip(tmp_path: Path) -> None:
    events = [*held("A", 0.01, 1.0, 1), acq("B", 0.5, math.inf, ok=None)]
    dump(events, tmp_path / "h.jsonl")
    assert sorted(load(tmp_path / "h.jsonl"), key=lambda e: (e.start, e.client)) == sorted(
        events, key=lambda e: (e.start, e.client)
    )


def _process_worker(directory: str, lock: object, counter: object, index: int, rounds: int) -> None:
    rec = Recorder(directory)
    for _ in range(rounds):
        with rec.acquire(f"p{index}", "L") as op:
            lock.acquire()  # type: ignore[attr-defined]
            with counter.get_lock():  # type: ignore[attr-defined]
                counter.value += 1  # type: ignore[attr-defined]
                op.token = counter.value  # type: ignore[attr-defined]
        time.sleep(0.0005)
        with rec.release(f"p{index}", "L", token=op.token):
            lock.release()  # type: ignore[attr-defined]
    rec.close()


def test_recorder_across_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    lock = ctx.Lock()
    counter = ctx.Value("q", 0)
    procs = [ctx.Process(target=_process_worker, args=(str(tmp_path), lock, counter, i, 25)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    events = load_dir(tmp_path)
    assert len(list(tmp_path.glob("*.jsonl"))) == 3
    assert len(events) == 3 * 25 * 2
    assert {e.client for e in events} == {"p0", "p1", "p2"}
    assert check(events, capacity=1) == []
    assert check_liveness(events) == []


def test_killed_process_leaves_an_unfinished_acquire(tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "from interlock.testing.history import Recorder\n"
        "rec = Recorder(sys.argv[1])\n"
        "rec.acquire('dead', 'L').succeeded(token=1)\n"
        "rec.acquire('dead', 'L')\n"
        "os._exit(137)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False, timeout=60)
    assert proc.returncode == 137
    events = load_dir(tmp_path)
    assert [(e.ok, e.end == math.inf) for e in events] == [(True, False), (None, True)]
    assert grep(check_liveness(events), "never finished")
    # a line cut short by a crash is ignored
    (tmp_path / "torn.jsonl").write_text(json.dumps({"phase": "event"})[:-3], encoding="utf-8")
    assert len(load_dir(tmp_path)) == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_recorder_after_fork_writes_its_own_file(tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    rec.acquire("parent", "L").succeeded(token=1)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            rec.acquire("child", "M").succeeded(token=1)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    rec.close()
    assert len(list(tmp_path.glob("*.jsonl"))) == 2
    assert {e.client for e in load_dir(tmp_path)} == {"parent", "child"}

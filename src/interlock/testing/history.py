"""Record what clients did to locks, then check the history for G1/G2 violations.

**Events.** Every client operation becomes one :class:`Event`
``(client, op, start, end, ok, token, permits, name, mode)``:

- ``op`` is ``"acquire"``, ``"renew"``, ``"release"``, ``"lost"`` (the client learnt its lease
  was lost) or ``"write"`` (a write to a fenced resource);
- ``start`` is taken just before the request is sent and ``end`` just after the reply or the
  error, both from :func:`time.monotonic` (``CLOCK_MONOTONIC``, system-wide on Linux, so
  values from different processes compare). ``end`` is ``inf`` for an operation that never
  finished (its process died);
- ``ok`` is ``True`` (succeeded: granted, renewed, released, write accepted), ``False``
  (definitely did not happen: a timeout that cleaned up, a rejected write) or ``None``
  (unknown outcome: crash, cancellation or time-out in flight);
- ``name`` is the lock name (or the fenced resource for writes); every check looks at each
  name on its own; ``mode`` is ``"read"`` for a shared (reader) grant and ``"write"`` or
  ``"exclusive"`` otherwise; ``permits`` is the weight of a semaphore grant.

**Holds.** A grant is *definitely held* from the moment its acquire returned (``end``) to the
moment its release (or ``lost``) was invoked (``start``); a grant never released is held
forever. Acquires with ``ok`` not ``True`` are never counted as held. A release is matched to
the client's open grant with the same token, else to its oldest open grant on that name.

**Checks** (each returns a list of human-readable violations; empty means the history passes):

- :func:`check` -- at most *capacity* definitely-held permits at any instant (weighted sweep
  line), tokens unique, tokens in real-time order of grants, fenced writes never stale.
  With *ttl*, an overlap is tolerated when the older grant's lease could have expired before
  the newer grant was handed out (see :func:`check_capacity`).
- :func:`check_rw` -- one writer or many readers, never both.
- :func:`check_fifo` -- grants in the order of arrival among blocked waiters.
- :func:`check_liveness` -- every acquire that started was served.

Recording::

    rec = Recorder()                        # or Recorder("/tmp/dir") in every process
    with rec.acquire("c1", "orders") as op:
        lease = lock.acquire()
        op.token = lease.token
    with rec.release("c1", "orders", token=lease.token):
        lease.release()
    assert check(rec.events(), capacity=1) == []
    # multi-process: check(load_dir("/tmp/dir"), ...)
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
import math
import os
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ACQUIRE",
    "LOST",
    "RELEASE",
    "RENEW",
    "WRITE",
    "Event",
    "Hold",
    "Operation",
    "Recorder",
    "by_name",
    "check",
    "check_capacity",
    "check_fifo",
    "check_liveness",
    "check_rw",
    "check_tokens",
    "check_writes",
    "dump",
    "handoff_gap",
    "holds",
    "load",
    "load_dir",
]

ACQUIRE = "acquire"
RENEW = "renew"
RELEASE = "release"
LOST = "lost"
WRITE = "write"

INF = math.inf

Capacity = int | float | Mapping[str, int | float]


@dataclasses.dataclass(frozen=True)
class Event:
    """One client operation, timed on the monotonic clock. See the module docstring."""

    client: str
    op: str
    start: float
    end: float
    ok: bool | None
    token: int | None = None
    permits: int = 1
    name: str = ""
    mode: str = "exclusive"

    @property
    def completed(self) -> bool:
        return self.end != INF

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.end == INF:
            data["end"] = None
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Event:
        end = data.get("end")
        return cls(
            client=str(data["client"]),
            op=str(data["op"]),
            start=float(data["start"]),
            end=INF if end is None else float(end),
            ok=None if data.get("ok") is None else bool(data["ok"]),
            token=None if data.get("token") is None else int(data["token"]),
            permits=int(data.get("permits", 1)),
            name=str(data.get("name", "")),
            mode=str(data.get("mode", "exclusive")),
        )


# --------------------------------------------------------------------------------------------
# recording


class Operation:
    """An operation in flight: created by :meth:`Recorder.begin` (start already taken).

    Finish it with :meth:`succeeded`, :meth:`failed` or :meth:`unknown`, or use it as a
    context manager: a normal exit records ``ok=True`` (with :attr:`token` if set), an
    exception records ``ok=False`` if it is one of the recorder's *definite_failures*, else
    ``ok=None``, and is re-raised.
    """

    def __init__(
        self,
        recorder: Recorder,
        *,
        op_id: str,
        client: str,
        op: str,
        name: str,
        permits: int,
        mode: str,
        token: int | None,
        start: float,
    ) -> None:
        self._recorder = recorder
        self.id = op_id
        self.client = client
        self.op = op
        self.name = name
        self.permits = permits
        self.mode = mode
        self.token = token
        self.start = start
        self.event: Event | None = None

    def __repr__(self) -> str:
        return f"<Operation {self.client} {self.op} {self.name!r} start={self.start:.6f}>"

    def _finish(self, ok: bool | None, token: int | None) -> Event:
        if self.event is not None:
            return self.event
        end = self._recorder.clock()
        if token is not None:
            self.token = token
        self.event = Event(self.client, self.op, self.start, end, ok, self.token, self.permits, self.name, self.mode)
        self._recorder._complete(self)
        return self.event

    def succeeded(self, token: int | None = None) -> Event:
        return self._finish(True, token)

    def failed(self) -> Event:
        return self._finish(False, None)

    def unknown(self) -> Event:
        return self._finish(None, None)

    def __enter__(self) -> Operation:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self.event is not None:
            return
        if exc is None:
            self.succeeded()
        elif isinstance(exc, self._recorder.definite_failures):
            self.failed()
        else:
            self.unknown()


class Recorder:
    """A thread-safe event log; with *directory*, also safe across processes.

    With *directory*, each process appends JSON lines to a file of its own in it (named after
    its PID and a random suffix; a forked child notices the PID change and opens a new file).
    An operation writes an ``invoke`` line when it starts and a ``complete`` line when it
    ends, so :func:`load_dir` can report operations of a killed process as unfinished
    (``end=inf``, ``ok=None``).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        definite_failures: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.clock = clock
        self.definite_failures = definite_failures
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._done: list[Event] = []
        self._pending: dict[str, Operation] = {}
        self._ids = itertools.count()
        self._fd: int | None = None
        self._fd_pid: int | None = None
        self._prefix = ""

    # -- file output -----------------------------------------------------------------

    def _write_line(self, data: Mapping[str, Any]) -> None:
        if self.directory is None:
            return
        pid = os.getpid()
        if self._fd is None or self._fd_pid != pid:
            path = self.directory / f"{pid}-{uuid.uuid4().hex[:8]}.jsonl"
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._fd_pid = pid
        line = json.dumps(data, separators=(",", ":")) + "\n"
        os.write(self._fd, line.encode("utf-8"))

    def close(self) -> None:
        with self._lock:
            if self._fd is not None and self._fd_pid == os.getpid():
                os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- recording -------------------------------------------------------------------

    def record(self, event: Event) -> None:
        """Add a finished event as is."""
        with self._lock:
            self._done.append(event)
            self._write_line({"phase": "event", **event.to_json()})

    def begin(
        self,
        client: str,
        op: str,
        name: str = "",
        *,
        permits: int = 1,
        mode: str = "exclusive",
        token: int | None = None,
    ) -> Operation:
        """Start timing an operation now (call it just before sending the request)."""
        with self._lock:
            op_id = f"{os.getpid()}.{next(self._ids)}"
            start = self.clock()
            operation = Operation(
                self,
                op_id=op_id,
                client=client,
                op=op,
                name=name,
                permits=permits,
                mode=mode,
                token=token,
                start=start,
            )
            self._pending[op_id] = operation
            self._write_line(
                {
                    "phase": "invoke",
                    "id": op_id,
                    "client": client,
                    "op": op,
                    "name": name,
                    "permits": permits,
                    "mode": mode,
                    "token": token,
                    "start": start,
                }
            )
        return operation

    def _complete(self, operation: Operation) -> None:
        event = operation.event
        assert event is not None
        with self._lock:
            self._pending.pop(operation.id, None)
            self._done.append(event)
            self._write_line(
                {
                    "phase": "complete",
                    "id": operation.id,
                    "end": event.end,
                    "ok": event.ok,
                    "token": event.token,
                }
            )

    def acquire(self, client: str, name: str = "", *, permits: int = 1, mode: str = "exclusive") -> Operation:
        """Time an acquire; set ``op.token`` (or call ``op.succeeded(token)``) inside."""
        return self.begin(client, ACQUIRE, name, permits=permits, mode=mode)

    def renew(self, client: str, name: str = "", *, token: int | None = None) -> Operation:
        return self.begin(client, RENEW, name, token=token)

    def release(
        self,
        client: str,
        name: str = "",
        *,
        token: int | None = None,
        permits: int = 1,
        mode: str = "exclusive",
    ) -> Operation:
        return self.begin(client, RELEASE, name, token=token, permits=permits, mode=mode)

    def lost(self, client: str, name: str = "", *, token: int | None = None) -> Event:
        """Record that *client* learnt its grant was lost (ends its definite hold now)."""
        return self.begin(client, LOST, name, token=token).succeeded()

    def write(self, client: str, resource: str, *, token: int | None) -> Operation:
        """Time a write to a fenced resource; ``ok`` is whether the store accepted it."""
        return self.begin(client, WRITE, resource, token=token)

    def events(self) -> list[Event]:
        """Finished events plus unfinished ones (``end=inf``, ``ok=None``), by start time."""
        with self._lock:
            out = list(self._done)
            for p in self._pending.values():
                out.append(Event(p.client, p.op, p.start, INF, None, p.token, p.permits, p.name, p.mode))
        out.sort(key=lambda e: e.start)
        return out


def _merge_lines(lines: Iterable[Mapping[str, Any]]) -> list[Event]:
    """Pair ``invoke`` and ``complete`` lines by id (in any order); keep ``event`` lines."""
    out: list[Event] = []
    invokes: dict[str, dict[str, Any]] = {}
    completes: dict[str, Mapping[str, Any]] = {}
    for data in lines:
        phase = data.get("phase", "event")
        if phase == "event":
            out.append(Event.from_json(data))
        elif phase == "invoke":
            invokes[str(data["id"])] = dict(data)
        elif phase == "complete":
            completes[str(data["id"])] = data
    for op_id, inv in invokes.items():
        done = completes.get(op_id)
        if done is None:
            inv.update(end=None, ok=None)
        else:
            inv.update(end=done.get("end"), ok=done.get("ok"))
            if done.get("token") is not None:
                inv["token"] = done["token"]
        out.append(Event.from_json(inv))
    return out


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for raw in f:
            if not raw.endswith("\n"):
                break  # a line cut short by a crash
            line = raw.strip()
            if line:
                yield json.loads(line)


def load(path: str | os.PathLike[str]) -> list[Event]:
    """Events from one JSON-lines file (written by :func:`dump` or a :class:`Recorder`)."""
    out = _merge_lines(_read_jsonl(Path(path)))
    out.sort(key=lambda e: e.start)
    return out


def load_dir(directory: str | os.PathLike[str]) -> list[Event]:
    """Merge every ``*.jsonl`` file of a :class:`Recorder` directory, sorted by start."""
    lines = [line for path in sorted(Path(directory).glob("*.jsonl")) for line in _read_jsonl(path)]
    out = _merge_lines(lines)
    out.sort(key=lambda e: e.start)
    return out


def dump(events: Iterable[Event], path: str | os.PathLike[str]) -> None:
    """Write *events* as JSON lines (readable by :func:`load`)."""
    with open(path, "w", encoding="utf-8") as f:
        for e in events:
            f.write(json.dumps({"phase": "event", **e.to_json()}, separators=(",", ":")) + "\n")


# --------------------------------------------------------------------------------------------
# holds


@dataclasses.dataclass
class Hold:
    """A grant's definite-hold interval ``[acq_end, rel_start)`` and its lease origin."""

    client: str
    name: str
    token: int | None
    permits: int
    mode: str
    acq_start: float
    acq_end: float
    lease_sent: float
    rel_start: float = INF

    @property
    def shared(self) -> bool:
        return self.mode == "read"

    def lease_valid_at(self, t: float, ttl: float | None, drift: float) -> bool:
        """Could this grant's lease still have been valid (server side) at instant *t*?"""
        return ttl is None or t < self.lease_sent + ttl * (1 - drift)

    def label(self) -> str:
        return f"{self.client}/{self.token}" if self.token is not None else self.client


def by_name(history: Iterable[Event]) -> dict[str, list[Event]]:
    """Events grouped by name, each group sorted by start."""
    groups: dict[str, list[Event]] = defaultdict(list)
    for e in history:
        groups[e.name].append(e)
    for events in groups.values():
        events.sort(key=lambda e: e.start)
    return dict(groups)


def holds(history: Iterable[Event]) -> list[Hold]:
    """Definite holds of every name (see the module docstring for the matching rules)."""
    out: list[Hold] = []
    for name, events in by_name(history).items():
        open_: dict[str, list[Hold]] = defaultdict(list)
        for e in events:
            if e.op == ACQUIRE:
                if e.ok is True and e.end != INF:
                    open_[e.client].append(Hold(e.client, name, e.token, e.permits, e.mode, e.start, e.end, e.start))
            elif e.op == RENEW:
                if e.ok is True:
                    h = _match(open_[e.client], e.token, newest=True)
                    if h is not None:
                        h.lease_sent = max(h.lease_sent, e.start)
            elif e.op in (RELEASE, LOST):
                h = _match(open_[e.client], e.token, newest=False)
                if h is not None:
                    open_[e.client].remove(h)
                    h.rel_start = e.start
                    out.append(h)
        for hs in open_.values():
            out.extend(hs)
    out.sort(key=lambda h: (h.name, h.acq_end))
    return out


def _match(candidates: list[Hold], token: int | None, newest: bool) -> Hold | None:
    if not candidates:
        return None
    if token is not None:
        for h in candidates:
            if h.token == token:
                return h
        if any(h.token is not None for h in candidates):
            return None  # a token that matches none of the client's grants
    return candidates[-1] if newest else candidates[0]


def _prefix(name: str) -> str:
    return f"[{name}] " if name else ""


def _capacity_for(capacity: Capacity, name: str) -> float:
    if isinstance(capacity, Mapping):
        return float(capacity[name])
    return float(capacity)


# --------------------------------------------------------------------------------------------
# checks


def check_capacity(
    history: Iterable[Event],
    capacity: Capacity = 1,
    ttl: float | None = None,
    drift: float = 0.01,
) -> list[str]:
    """At most *capacity* permits definitely held at once, per name (weighted sweep line).

    When a grant H starts being held (its acquire returned at ``H.acq_end``), the permits of
    H plus those of every other grant still held whose lease could still have been valid at
    ``H.acq_end`` must not exceed the capacity. A lease is valid until
    ``lease_sent + ttl * (1 - drift)``, where ``lease_sent`` is the start of the grant's
    acquire or of its last successful renew; without *ttl* it never expires. So a paused
    holder's mere belief is tolerated once its lease could have run out, but a second grant
    inside a live lease (a double grant, or a renew accepted after a successor's grant) is
    reported. *capacity* may be a mapping from name to capacity.
    """
    errors: list[str] = []
    by: dict[str, list[Hold]] = defaultdict(list)
    for h in holds(history):
        by[h.name].append(h)
    for name, hs in sorted(by.items()):
        cap = _capacity_for(capacity, name)
        points: list[tuple[float, int, int]] = []
        for i, h in enumerate(hs):
            if h.rel_start <= h.acq_end:
                continue  # never definitely held
            points.append((h.acq_end, 1, i))
            points.append((h.rel_start, 0, i))
        points.sort()
        live: dict[int, Hold] = {}
        for t, kind, i in points:
            h = hs[i]
            if kind == 0:
                live.pop(i, None)
                continue
            others = [o for o in live.values() if o.lease_valid_at(h.acq_end, ttl, drift)]
            used = h.permits + sum(o.permits for o in others)
            if used > cap:
                who = ", ".join(f"{o.label()}({o.permits})" for o in others) or "nobody"
                errors.append(
                    f"{_prefix(name)}over capacity at {t:.6f}: {h.label()}({h.permits}) granted "
                    f"while {who} held; {used:g} > {cap:g} permits"
                )
            live[i] = h
    return errors


def _grants(events: Iterable[Event]) -> list[Event]:
    return [e for e in events if e.op == ACQUIRE and e.ok is True and e.token is not None and e.end != INF]


def _realtime_order_errors(items: list[Event], what: str, strict: bool, name: str) -> list[str]:
    """For a, b with a.end < b.start: b.token > a.token (strict) or >= (not strict)."""
    errors: list[str] = []
    by_end = sorted(items, key=lambda e: e.end)
    j = 0
    best: Event | None = None
    for b in sorted(items, key=lambda e: e.start):
        while j < len(by_end) and by_end[j].end < b.start:
            a = by_end[j]
            assert a.token is not None
            if best is None or (best.token is not None and a.token > best.token):
                best = a
            j += 1
        if best is None or best.token is None or b.token is None:
            continue
        bad = b.token <= best.token if strict else b.token < best.token
        if bad:
            if what == "grant":
                errors.append(
                    f"{_prefix(name)}non-monotonic token: {best.client} got {best.token} "
                    f"(returned {best.end:.6f}) before {b.client} asked ({b.start:.6f}) "
                    f"and got {b.token}"
                )
            else:
                errors.append(
                    f"{_prefix(name)}stale write accepted: {b.client} wrote with token "
                    f"{b.token} at {b.start:.6f} after token {best.token} "
                    f"({best.client}) was accepted at {best.end:.6f}"
                )
    return errors


def check_tokens(history: Iterable[Event], *, unique: bool = True) -> list[str]:
    """Per name: grant tokens are unique and increase in real-time order of grants.

    Real-time order: if grant A's acquire returned before grant B's acquire started
    (``A.end < B.start``), then ``A.token < B.token``. Only successful acquires with a token
    are looked at.
    """
    errors: list[str] = []
    for name, events in sorted(by_name(history).items()):
        grants = _grants(events)
        if unique:
            seen: dict[int, Event] = {}
            for g in grants:
                assert g.token is not None
                if g.token in seen:
                    first = seen[g.token]
                    errors.append(
                        f"{_prefix(name)}token {g.token} issued twice: to {first.client} "
                        f"at {first.end:.6f} and to {g.client} at {g.end:.6f}"
                    )
                else:
                    seen[g.token] = g
        errors.extend(_realtime_order_errors(grants, "grant", strict=True, name=name))
    return errors


def check_writes(history: Iterable[Event]) -> list[str]:
    """Per resource: an accepted write never carries a token below an earlier accepted one.

    "Earlier" is real-time order (the earlier write's reply came back before the later write
    was sent), so concurrent writes are never compared. Events of a :class:`FencedStore` log
    have ``start == end`` (the store's own serialization), so they are checked exactly.
    """
    errors: list[str] = []
    for name, events in sorted(by_name(history).items()):
        writes = [e for e in events if e.op == WRITE and e.ok is True and e.token is not None and e.end != INF]
        errors.extend(_realtime_order_errors(writes, "write", strict=False, name=name))
    return errors


def check(
    history: Iterable[Event],
    capacity: Capacity = 1,
    ttl: float | None = None,
    drift: float = 0.01,
    *,
    unique_tokens: bool = True,
) -> list[str]:
    """G1 and G2 for mutexes and semaphores: capacity, token order/uniqueness, fenced writes.

    See :func:`check_capacity`, :func:`check_tokens` and :func:`check_writes`. The ``mode``
    of events is ignored here (use :func:`check_rw` for read/write locks).
    """
    events = list(history)
    return (
        check_capacity(events, capacity, ttl, drift) + check_tokens(events, unique=unique_tokens) + check_writes(events)
    )


def check_rw(
    history: Iterable[Event],
    ttl: float | None = None,
    drift: float = 0.01,
    *,
    tokens: bool = True,
    unique_tokens: bool = True,
) -> list[str]:
    """Read/write exclusion per name: one writer or any number of readers, never both.

    Grants with ``mode == "read"`` are shared; any other mode is exclusive. Overlaps are
    judged like :func:`check_capacity` (definite holds, same lease tolerance with *ttl*).
    With *tokens*, :func:`check_tokens` and :func:`check_writes` run too.
    """
    events = list(history)
    errors: list[str] = []
    by: dict[str, list[Hold]] = defaultdict(list)
    for h in holds(events):
        by[h.name].append(h)
    for name, hs in sorted(by.items()):
        points: list[tuple[float, int, int]] = []
        for i, h in enumerate(hs):
            if h.rel_start > h.acq_end:
                points.append((h.acq_end, 1, i))
                points.append((h.rel_start, 0, i))
        points.sort()
        live: dict[int, Hold] = {}
        for t, kind, i in points:
            h = hs[i]
            if kind == 0:
                live.pop(i, None)
                continue
            others = [o for o in live.values() if o.lease_valid_at(h.acq_end, ttl, drift)]
            conflicts = others if not h.shared else [o for o in others if not o.shared]
            if conflicts:
                role = "reader" if h.shared else "writer"
                who = ", ".join(f"{o.label()}({'r' if o.shared else 'w'})" for o in conflicts)
                errors.append(f"{_prefix(name)}rw overlap at {t:.6f}: {role} {h.label()} granted while {who} held")
            live[i] = h
    if tokens:
        errors += check_tokens(events, unique=unique_tokens) + check_writes(events)
    return errors


def check_fifo(history: Iterable[Event], capacity: Capacity = 1, *, slack: float = 0.0) -> list[str]:
    """First come, first served among waiters that were blocked at the same time.

    For each name, a pair of successful acquires A, B is a violation when all of these hold:

    1. A asked first: ``A.start + slack < B.start``;
    2. both were blocked when B arrived: there are definite holds by other clients (neither
       A's nor B's) that were granted no later than ``A.start`` and whose release was invoked
       no earlier than ``B.start + slack``, and their permits plus A's permits, and their
       permits plus B's permits, each exceed the capacity -- so neither A nor B could have
       been granted before B's request arrived;
    3. B was granted first: ``B.end + slack < A.end``.

    *slack* bounds the one-way network delay (a request arrives within *slack* of its
    ``start``, a reply within *slack* of the grant). With the default 0 the check assumes
    instant delivery, which is exact for in-process backends; give remote backends a slack of
    a few milliseconds. Only successful acquires are compared (a waiter that timed out or
    was cancelled is not in the queue any more).
    """
    errors: list[str] = []
    events_all = list(history)
    hold_by_name: dict[str, list[Hold]] = defaultdict(list)
    for h in holds(events_all):
        hold_by_name[h.name].append(h)
    groups = by_name(e for e in events_all if e.op == ACQUIRE)
    for name, events in sorted(groups.items()):
        cap = _capacity_for(capacity, name)
        acquires = [e for e in events if e.ok is True and e.end != INF]
        starts = [e.start for e in acquires]
        hs = sorted(hold_by_name.get(name, []), key=lambda h: h.acq_end)
        hold_ends = [h.acq_end for h in hs]
        for a in acquires:
            lo = bisect.bisect_right(starts, a.start + slack)
            hi = bisect.bisect_left(starts, a.end)
            for b in acquires[lo:hi]:
                if not b.start > a.start + slack or not b.end + slack < a.end:
                    continue
                limit = bisect.bisect_right(hold_ends, a.start)
                blockers = [
                    h for h in hs[:limit] if h.client not in (a.client, b.client) and h.rel_start >= b.start + slack
                ]
                held = sum(h.permits for h in blockers)
                if held + a.permits > cap and held + b.permits > cap:
                    who = ", ".join(h.label() for h in blockers)
                    errors.append(
                        f"{_prefix(name)}FIFO violation: {a.client} waited from {a.start:.6f}, "
                        f"before {b.client} ({b.start:.6f}), both blocked by {who}, but "
                        f"{b.client} was granted first (returned {b.end:.6f} < {a.end:.6f})"
                    )
    return errors


def check_liveness(
    history: Iterable[Event],
    *,
    max_wait: float | None = None,
    clients: Iterable[str] | None = None,
) -> list[str]:
    """Every acquire that started was served: it finished with ``ok=True``.

    An acquire that failed (``ok=False``, e.g. timed out), has an unknown outcome
    (``ok=None``) or never finished (``end=inf``) is reported. With *max_wait*, a successful
    acquire that took longer than *max_wait* seconds is reported too. *clients* restricts the
    check to those clients.
    """
    wanted = set(clients) if clients is not None else None
    errors: list[str] = []
    for name, events in sorted(by_name(history).items()):
        for e in events:
            if e.op != ACQUIRE or (wanted is not None and e.client not in wanted):
                continue
            if e.end == INF:
                errors.append(f"{_prefix(name)}{e.client}'s acquire from {e.start:.6f} never finished")
            elif e.ok is not True:
                what = "failed" if e.ok is False else "ended with an unknown outcome"
                errors.append(f"{_prefix(name)}{e.client}'s acquire from {e.start:.6f} {what} at {e.end:.6f}")
            elif max_wait is not None and e.end - e.start > max_wait:
                errors.append(
                    f"{_prefix(name)}{e.client} waited {e.end - e.start:.3f}s > {max_wait:g}s (from {e.start:.6f})"
                )
    return errors


def handoff_gap(history: Iterable[Event], free_at: float, name: str | None = None) -> float:
    """Seconds from *free_at* to the next successful acquire's return (``inf`` if none)."""
    ends = [
        e.end
        for e in history
        if e.op == ACQUIRE and e.ok is True and e.end >= free_at and (name is None or e.name == name)
    ]
    return min(ends) - free_at if ends else INF

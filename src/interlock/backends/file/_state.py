"""The state file of one primitive: format and the operations on it (no waiting, no wake-ups).

``grant_fast_locked``, ``enqueue_locked`` and the full-release paths of ``release_locked`` have a C twin
in ``_fastfile.c`` (used when built; see ``FileChannel``): keep the two in step (tests/file/test_fastfile.py
compares them byte for byte).

Every operation runs with the in-process mutex and ``flock(LOCK_EX)`` on the file held by the caller;
readers (``status``) take ``LOCK_SH``. The file is memory-mapped; nothing is parsed that an operation
does not need.

**Crash consistency.** A process may be SIGKILLed in the middle of an update, and the kernel then
releases its flock while the bytes are half written. So the state is double-buffered: page 0 holds a
selector byte and a table of two slots; an update writes the complete new state into the inactive slot
and then flips the selector (a single-byte store, which cannot be torn). A process that dies before the
flip leaves the old state intact; after it, the new state is complete.

Page 0 (``_HEAD``, 64 bytes, then the name in UTF-8)::

    magic "ILCKSTv1" | sel u8 | kind u8 | bounded u8 | version u8 | name_len u32 | initial capacity i64
    | slot 0 (offset u64, size u64) | slot 1 (offset u64, size u64) | created (wall-clock us) i64

A slot (``_SLOT`` header, then ``nh`` holder records, then ``nw`` waiter records in FIFO order)::

    capacity i64 | available i64 | last token u64 | next ticket u64 | nh u32 | nw u32 | flags u32
    | epoch u32

A record (``_REC``, 80 bytes; holders and waiters share the format)::

    token (holder) or ticket (waiter) u64 | process id u64 | waiter id u64 | permits i64
    | since (CLOCK_MONOTONIC, system-wide) f64 | wake socket u32 | mode u8 | owner label 35 bytes

Invariants of a committed slot (bounded primitives): ``available + sum(holder permits) == capacity``;
if there are waiters, the head does not fit in ``available`` (grants are made eagerly, in FIFO order);
``last token`` only grows. Tokens start at the wall-clock time in microseconds when the file is created
and grow by one per grant; since every grant takes well over a microsecond (it is serialised by the
file lock), the counter never runs ahead of the wall clock, so even a state file lost with its
directory (a reboot of a tmpfs) restarts above every token it ever handed out, unless the clock itself
went backwards.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..._errors import BackendError, CapacityMismatch

MAGIC = b"ILCKSTv1"
VERSION = 1
PAGE = 4096
NAME_OFF = 64

_HEAD = struct.Struct("<8sBBBBIqQQQQq")
_TABLE = struct.Struct("<QQQQ")
_TOP = struct.Struct("<B15xQQQQ")  # at offset 8: selector, then the slot table (one unpack per operation)
_KPWP = struct.Struct("<QQQq")  # key, process, waiter id, permits
_SLOT = struct.Struct("<qqQQIIII")
_REC = struct.Struct("<QQQqdIB35s")
_Q = struct.Struct("<Q")
_PERM = struct.Struct("<q")
_PROC_WID = struct.Struct("<QQ")
_SOCK = struct.Struct("<I")
# Bound once: the hot paths (an uncontended grant and release) call these on every operation.
_TOP_UNPACK = _TOP.unpack_from
_SLOT_UNPACK = _SLOT.unpack_from
_SLOT_PACK = _SLOT.pack_into
_REC_PACK = _REC.pack_into
_REC_UNPACK = _REC.unpack_from
_Q_UNPACK = _Q.unpack_from
_KPWP_UNPACK = _KPWP.unpack_from
SLOT_HDR = _SLOT.size
REC = _REC.size
assert REC == 80 and SLOT_HDR == 48 and _HEAD.size == 64

KINDS = {"lock": 0, "semaphore": 1, "rwlock": 2}
KIND_NAMES = {v: k for k, v in KINDS.items()}
MODES = {"exclusive": 0, "shared": 1, "permits": 2}
MODE_NAMES = {v: k for k, v in MODES.items()}
PREV_DIED = 0x80  # in a holder record's mode byte: this grant followed a holder that died
F_PREV_DIED = 1  # in the slot flags: the next grant follows a holder that died

_LOCK_EX = fcntl.LOCK_EX
_LOCK_SH = fcntl.LOCK_SH
_LOCK_UN = fcntl.LOCK_UN
_LOCK_NB = fcntl.LOCK_NB
_flock = fcntl.flock

# A wake-up: (process id, wake socket number, datagram). A grant's datagram names the waiter and its grant
# (GRANT: waiter id, token, permits, mode byte with PREV_DIED), so the woken waiter needs no second look
# at the state; an empty datagram (REFRESH) only says "look at the state again".
Wake = tuple[int, int, bytes]
GRANT = struct.Struct("<QQqB")
REFRESH = b""
_NO_WAKES: list[Wake] = []  # shared empty result: callers never mutate it
_GRANT_PACK = GRANT.pack


def encode_label(kind: str, name: str) -> bytes:
    """An owner label for a record: one type byte ('t' thread, 'a' task, '?' other) and the name,
    truncated to fit without splitting a UTF-8 sequence."""
    raw = name.encode("utf-8", "replace")
    if len(raw) > 34:
        raw = raw[:34]
        while raw and (raw[-1] & 0xC0) == 0x80:
            raw = raw[:-1]
        if raw and raw[-1] >= 0xC0:
            raw = raw[:-1]
    return kind.encode() + raw


def decode_label(raw: bytes) -> str:
    raw = raw.rstrip(b"\x00")
    if not raw:
        return "?"
    name = raw[1:].decode("utf-8", "replace")
    kind = raw[:1]
    if kind == b"t":
        return f"thread {name!r}"
    if kind == b"a":
        return f"task {name!r}"
    return name


class Record:
    """A parsed record (slow paths and inspection only)."""

    __slots__ = ("key", "label", "mode", "permits", "proc", "since", "sock", "wid")

    def __init__(self, raw: bytes | mmap.mmap, at: int = 0) -> None:
        (self.key, self.proc, self.wid, self.permits, self.since, self.sock, self.mode,
         self.label) = _REC.unpack_from(raw, at)


class Snapshot:
    """A consistent copy of one state file (for statistics and status)."""

    __slots__ = ("available", "bounded", "capacity", "holders", "initial_capacity", "kind", "last_token",
                 "name", "waiters")

    kind: str
    bounded: bool
    name: str
    initial_capacity: int
    capacity: int
    available: int
    last_token: int
    holders: list[Record]
    waiters: list[Record]


def _split(raw: bytes, n: int) -> list[Record]:
    return [Record(raw, i * REC) for i in range(n)]


def _find(m: mmap.mmap, base: int, n: int, key: bytes) -> int:
    """Index of the record among ``n`` records at ``base`` whose first field is ``key``, or -1."""
    end = base + n * REC
    pos = m.find(key, base, end)
    while pos >= 0:
        if (pos - base) % REC == 0:
            return (pos - base) // REC
        pos = m.find(key, pos + 1, end)
    return -1


def _find_proc_wid(m: mmap.mmap, base: int, n: int, key: bytes) -> int:
    """Index of the record whose (process, waiter id) is ``key``, or -1."""
    end = base + n * REC
    pos = m.find(key, base + 8, end)
    while pos >= 0:
        if (pos - base) % REC == 8:
            return (pos - base) // REC
        pos = m.find(key, pos + 1, end)
    return -1


class StateFile:
    """One open state file (an fd kept for the life of the channel) and its mapping.

    Not thread-safe: the channel's mutex serialises callers. Methods named ``*_locked`` expect the
    caller to hold the flock (``lock()``/``unlock()``).
    """

    __slots__ = ("fd", "m", "mlen", "path")

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        size = os.fstat(fd).st_size
        # An empty (new) file cannot be mapped: use an anonymous placeholder until setup() sizes it.
        self.m: mmap.mmap = mmap.mmap(fd, size) if size else mmap.mmap(-1, PAGE)
        self.mlen = size

    # -- opening -----------------------------------------------------------------------------------
    def setup(self, name_raw: bytes, kind: str, capacity: int, bounded: bool, display: str) -> None:
        """Initialise a new file, or check that an existing one is the same primitive."""
        _flock(self.fd, _LOCK_EX)
        try:
            size = os.fstat(self.fd).st_size
            if size >= 3 * PAGE:
                self._remap(size)
                if bytes(self.m[0:8]) == MAGIC:
                    self._check(name_raw, kind, capacity, bounded, display)
                    return
            self._initialise(name_raw, kind, capacity, bounded)
        finally:
            _flock(self.fd, _LOCK_UN)

    def _initialise(self, name_raw: bytes, kind: str, capacity: int, bounded: bool) -> None:
        # The magic is written last: a process killed half-way leaves a file without it, which the next
        # opener initialises again (it holds the lock, so nobody can be using the half-written state).
        os.ftruncate(self.fd, 0)
        os.ftruncate(self.fd, 3 * PAGE)
        self._remap(3 * PAGE)
        m = self.m
        now_us = time.time_ns() // 1000
        _HEAD.pack_into(m, 0, b"\x00" * 8, 0, KINDS[kind], int(bounded), VERSION, len(name_raw), capacity,
                        PAGE, PAGE, 2 * PAGE, PAGE, now_us)
        m[NAME_OFF:NAME_OFF + len(name_raw)] = name_raw
        _SLOT.pack_into(m, PAGE, capacity, capacity, now_us, 1, 0, 0, 0, 0)
        m[0:8] = MAGIC

    def _check(self, name_raw: bytes, kind: str, capacity: int, bounded: bool, display: str) -> None:
        m = self.m
        _, _, k, b, version, nlen, cap0 = _HEAD.unpack_from(m, 0)[:7]
        if version != VERSION:
            raise BackendError(f"{self.path}: state format version {version} is not supported here",
                               path=self.path)
        stored = bytes(m[NAME_OFF:NAME_OFF + nlen])
        if stored != name_raw:
            raise BackendError(
                f"{self.path} holds another name (hash collision or a corrupted file); refusing to share it",
                path=self.path,
            )
        if k != KINDS[kind] or bool(b) != bounded or (bounded and cap0 != capacity):
            raise CapacityMismatch(
                f"{KIND_NAMES.get(k, '?')} {name_raw.decode('utf-8', 'surrogatepass')!r} on {display} "
                f"already exists with capacity {cap0}, bounded={bool(b)}; this object asks for a {kind} "
                f"with capacity {capacity}, bounded={bounded}. Use one definition per name (or another "
                "name).",
                name=name_raw.decode("utf-8", "surrogatepass"), kind=KIND_NAMES.get(k, "?"), capacity=cap0,
            )

    def _remap(self, size: int) -> None:
        old = self.m
        self.m = mmap.mmap(self.fd, size)
        self.mlen = size
        old.close()

    def close(self) -> None:
        self.m.close()
        os.close(self.fd)

    # -- locking -----------------------------------------------------------------------------------
    def lock(self) -> None:
        _flock(self.fd, _LOCK_EX)

    def try_lock(self) -> bool:
        try:
            _flock(self.fd, _LOCK_EX | _LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def unlock(self) -> None:
        _flock(self.fd, _LOCK_UN)

    def _ensure_mapped(self) -> None:
        # Another process may have grown the file (a slot moved): map the new size.
        o0, s0, o1, s1 = _TABLE.unpack_from(self.m, 24)
        end = max(o0 + s0, o1 + s1)
        if end > self.mlen:
            self._remap(os.fstat(self.fd).st_size)

    # -- slots -------------------------------------------------------------------------------------
    def _active(self) -> tuple[int, int]:
        self._ensure_mapped()
        m = self.m
        sel = m[8]
        return sel, _Q.unpack_from(m, 24 + 16 * sel)[0]

    def _target(self, sel: int, need: int) -> int:
        """Offset of the inactive slot, grown (moved to the end of the file) if it is too small."""
        j = sel ^ 1
        at = 24 + 16 * j
        off, size = _PROC_WID.unpack_from(self.m, at)
        if size >= need:
            return int(off)
        new_size = max(PAGE, -(-2 * need // PAGE) * PAGE)
        new_off = os.fstat(self.fd).st_size
        new_off = -(-new_off // PAGE) * PAGE
        os.ftruncate(self.fd, new_off + new_size)
        self._remap(new_off + new_size)
        # Writing the inactive entry is safe: nobody reads it until the selector flips to it.
        _PROC_WID.pack_into(self.m, at, new_off, new_size)
        return new_off

    def _commit(self, sel: int, cap: int, avail: int, last: int, ticket: int, flags: int, epoch: int,
                holders: bytes, waiters: bytes) -> None:
        lh = len(holders)
        lw = len(waiters)
        dst = self._target(sel, SLOT_HDR + lh + lw)
        m = self.m
        d = dst + SLOT_HDR
        if lh:
            m[d:d + lh] = holders
        if lw:
            m[d + lh:d + lh + lw] = waiters
        _SLOT.pack_into(m, dst, cap, avail, last, ticket, lh // REC, lw // REC, flags, epoch & 0xFFFFFFFF)
        m[8] = sel ^ 1  # the commit point

    def read_locked(self) -> tuple[int, int, int, int, int, int, int, int]:
        """(capacity, available, last token, next ticket, nh, nw, flags, epoch) of the active slot."""
        _, off = self._active()
        return _SLOT.unpack_from(self.m, off)

    # -- grants ------------------------------------------------------------------------------------
    def grant_fast_locked(self, permits: int, fair: bool, proc: int, mode: int, label: bytes,
                          now: float) -> tuple[int, bool, int] | None:
        """Grant at once if the permits are free and (in fair mode) nobody queues.

        Returns (token, previous_owner_died, number of waiters passed), or None. (The hot path of an
        uncontended acquire: written for speed, one unpack per structure.)
        """
        m = self.m
        sel, o0, s0, o1, s1 = _TOP_UNPACK(m, 8)
        if o0 + s0 > self.mlen or o1 + s1 > self.mlen:
            self._remap(os.fstat(self.fd).st_size)
            m = self.m
        if sel:
            off, dst, dsize = o1, o0, s0
        else:
            off, dst, dsize = o0, o1, s1
        cap, avail, last, ticket, nh, nw, flags, epoch = _SLOT_UNPACK(m, off)
        if avail < permits or (nw and fair):
            return None
        lh = nh * REC
        lw = nw * REC
        if dsize < SLOT_HDR + lh + REC + lw:
            dst = self._target(sel, SLOT_HDR + lh + REC + lw)
            m = self.m
        src = off + SLOT_HDR
        d = dst + SLOT_HDR
        if lh:
            m[d:d + lh] = m[src:src + lh]
        token = last + 1
        prev = flags & F_PREV_DIED
        _REC_PACK(m, d + lh, token, proc, 0, permits, now, 0, mode | (PREV_DIED if prev else 0), label)
        if lw:
            # A barging (fair=False) grant: waiters must learn of a holder they do not watch yet.
            m[d + lh + REC:d + lh + REC + lw] = m[src + lh:src + lh + lw]
            epoch += 1
        _SLOT_PACK(m, dst, cap, avail - permits, token, ticket, nh + 1, nw, flags & ~F_PREV_DIED,
                        epoch & 0xFFFFFFFF)
        m[8] = sel ^ 1
        return token, bool(prev), nw

    def enqueue_locked(self, permits: int, proc: int, wid: int, sock: int, mode: int, label: bytes,
                       now: float) -> tuple[int, set[int]]:
        """Append a waiter; returns (ticket, processes named in the state), for the death watch."""
        sel, off = self._active()
        m = self.m
        cap, avail, last, ticket, nh, nw, flags, epoch = _SLOT.unpack_from(m, off)
        src = off + SLOT_HDR
        n = (nh + nw) * REC
        body = m[src:src + n]
        rec = _REC.pack(ticket, proc, wid, permits, now, sock, mode, label)
        peers = {_Q.unpack_from(body, i + 8)[0] for i in range(0, n, REC)}
        self._commit(sel, cap, avail, last, ticket + 1, flags, epoch, body[:nh * REC], body[nh * REC:] + rec)
        return ticket, peers

    def peers_locked(self) -> tuple[set[int], int]:
        """Processes named in the state, and the epoch (changes when a barging grant was made)."""
        m = self.m
        off = self._active()[1]
        nh, nw, _, epoch = struct.unpack_from("<IIII", m, off + 32)
        src = off + SLOT_HDR
        return {_Q.unpack_from(m, src + i * REC + 8)[0] for i in range(nh + nw)}, epoch

    def holder_procs_locked(self) -> set[int]:
        m = self.m
        off = self._active()[1]
        nh = struct.unpack_from("<I", m, off + 32)[0]
        src = off + SLOT_HDR
        return {_Q.unpack_from(m, src + i * REC + 8)[0] for i in range(nh)}

    def waiter_wakes_locked(self) -> list[Wake]:
        m = self.m
        off = self._active()[1]
        nh, nw = struct.unpack_from("<II", m, off + 32)
        base = off + SLOT_HDR + nh * REC
        return [(_Q.unpack_from(m, base + i * REC + 8)[0], _SOCK.unpack_from(m, base + i * REC + 40)[0], REFRESH)
                for i in range(nw)]

    def find_grant_locked(self, proc: int, wid: int) -> tuple[int, int, int, bool] | None:
        """The grant made to waiter ``wid`` of ``proc``: (token, permits, mode, previous_owner_died)."""
        m = self.m
        off = self._active()[1]
        nh = struct.unpack_from("<I", m, off + 32)[0]
        i = _find_proc_wid(m, off + SLOT_HDR, nh, _PROC_WID.pack(proc, wid))
        if i < 0:
            return None
        r = Record(m, off + SLOT_HDR + i * REC)
        return r.key, r.permits, r.mode & 0x7F, bool(r.mode & PREV_DIED)

    def granted_wids_locked(self, proc: int, wids: Iterable[int]) -> dict[int, tuple[int, int, int, bool]]:
        """For many waiters of one process at once (an event loop's hub)."""
        m = self.m
        off = self._active()[1]
        nh = struct.unpack_from("<I", m, off + 32)[0]
        want = set(wids)
        out: dict[int, tuple[int, int, int, bool]] = {}
        base = off + SLOT_HDR
        for i in range(nh):
            r = Record(m, base + i * REC)
            if r.proc == proc and r.wid in want:
                out[r.wid] = (r.key, r.permits, r.mode & 0x7F, bool(r.mode & PREV_DIED))
        return out

    def _grant_loop(self, avail: int, last: int, flags: int, waiters: bytes, now: float
                    ) -> tuple[int, int, int, bytes, bytes, list[Wake]]:
        """FIFO rule (the cross-process twin of ``_core.waiter.pop_grantable``): grant from the head
        while the head fits. Returns (avail, last, flags, new holder records, remaining waiters, wakes)."""
        granted: list[bytes] = []
        wakes: list[Wake] = []
        i = 0
        n = len(waiters)
        while i < n:
            _, proc, wid, permits, _since, sock, mode, label = _REC.unpack_from(waiters, i)
            if permits > avail:
                break
            avail -= permits
            last += 1
            if flags & F_PREV_DIED:
                mode |= PREV_DIED
                flags &= ~F_PREV_DIED
            granted.append(_REC.pack(last, proc, wid, permits, now, 0, mode, label))
            wakes.append((proc, sock, _GRANT_PACK(wid, last, permits, mode)))
            i += REC
        return avail, last, flags, b"".join(granted), waiters[i:], wakes

    def release_locked(self, token: int, proc: int, permits: int | None, abandoned: bool, now: float | None,
                       forget: bool = False, bounded: bool = True,
                       deliver: Callable[[int, int, bytes], None] | None = None) -> tuple[bool, list[Wake]]:
        """Return ``permits`` (all if None) of grant ``token`` and grant waiters that now fit.

        ``forget`` drops the grant without returning its permits (an unbounded semaphore's capacity
        shrinks instead). ``now`` (monotonic) stamps new grants; None reads the clock only if needed.
        Returns (found, wakes still to send: the handoff path delivers each grant through ``deliver``
        (process, wake slot, grant) as soon as it is decided, and returns none)."""
        m = self.m
        sel, o0, s0, o1, s1 = _TOP_UNPACK(m, 8)
        if o0 + s0 > self.mlen or o1 + s1 > self.mlen:
            self._remap(os.fstat(self.fd).st_size)
            m = self.m
        if sel:
            off, dst, dsize = o1, o0, s0
        else:
            off, dst, dsize = o0, o1, s1
        cap, avail, last, ticket, nh, nw, flags, epoch = _SLOT_UNPACK(m, off)
        src = off + SLOT_HDR
        if nh and _Q_UNPACK(m, src)[0] == token:
            i = 0
        else:
            i = _find(m, src, nh, _Q.pack(token))
            if i < 0:
                return False, _NO_WAKES
        at = src + i * REC
        _, rproc, _, rpermits = _KPWP_UNPACK(m, at)
        if rproc != proc:
            return False, _NO_WAKES
        lh = nh * REC
        if abandoned:
            flags |= F_PREV_DIED
        if not nw and not forget and (permits is None or permits >= rpermits):
            # The common case: a full release with nobody waiting. Copy the other holders, no parsing.
            need = SLOT_HDR + lh - REC
            if dsize < need:
                dst = self._target(sel, need)
                m = self.m
            d = dst + SLOT_HDR
            if i:
                m[d:d + i * REC] = m[src:at]
            rest = src + lh - at - REC
            if rest:
                m[d + i * REC:d + i * REC + rest] = m[at + REC:src + lh]
            _SLOT_PACK(m, dst, cap, avail + rpermits, last, ticket, nh - 1, 0, flags, epoch)
            m[8] = sel ^ 1
            return True, _NO_WAKES
        if now is None:
            now = time.monotonic()
        if nw and not forget and (permits is None or permits >= rpermits):
            # A full release handed to the head of the queue (the handoff path): decide the grants,
            # commit the new state, then deliver each grant through ``deliver`` (the grantee's
            # mailbox and futex, or its datagram) while still holding the file lock. Committing first
            # means a delivered grant is always in the state: a releaser killed between commit and
            # delivery leaves a grant its waiter has not been told of, and the waiter's watcher (which
            # watches this process, a holder ahead of it) reclaims nothing but wakes the waiter to look
            # at the state, where it finds its grant. (Delivering first would open a window where a
            # waiter uses a grant the state never recorded.)
            avail += rpermits
            w0 = src + lh
            grants: list[tuple[Any, ...]] = []
            wprev = PREV_DIED if flags & F_PREV_DIED else 0
            k = 0
            while avail > 0 and k < nw:  # (every waiter asks for >= 1 permit)
                rec = _REC_UNPACK(m, w0 + k * REC)
                wperm = rec[3]
                if wperm > avail:
                    break
                avail -= wperm
                last += 1
                grants.append((last, rec[1], rec[2], wperm, now, 0, rec[6] | wprev, rec[7], rec[5]))
                wprev = 0
                k += 1
            if k:
                flags &= ~F_PREV_DIED
            need = SLOT_HDR + lh - REC + nw * REC
            if dsize < need:
                dst = self._target(sel, need)
                m = self.m
            d = dst + SLOT_HDR
            if i:
                m[d:d + i * REC] = m[src:at]
            rest = src + lh - at - REC
            if rest:
                m[d + i * REC:d + i * REC + rest] = m[at + REC:src + lh]
            pos = d + lh - REC
            for g in grants:
                _REC_PACK(m, pos, *g[:8])
                pos += REC
            if k < nw:
                m[pos:pos + (nw - k) * REC] = m[w0 + k * REC:w0 + nw * REC]
            _SLOT_PACK(m, dst, cap, avail, last, ticket, nh - 1 + k, nw - k, flags, epoch)
            m[8] = sel ^ 1  # the commit point: from here on the grants exist
            if deliver is None:
                return True, [(g[1], g[8], _GRANT_PACK(g[2], g[0], g[3], g[6])) for g in grants]
            done = 0
            try:
                for g in grants:
                    deliver(g[1], g[8], _GRANT_PACK(g[2], g[0], g[3], g[6]))
                    done += 1
            finally:
                # Interrupted (a signal handler raised) while delivering: deliver the rest, and the one
                # under way again (a second wake-up of a waiter is harmless; a missing one strands it).
                for g in grants[done:]:
                    deliver(g[1], g[8], _GRANT_PACK(g[2], g[0], g[3], g[6]))
            return True, _NO_WAKES
        r = Record(m, at)
        give = rpermits if permits is None or permits >= rpermits else permits
        if give < rpermits:  # partial release: keep the rest
            kept = _REC.pack(r.key, r.proc, r.wid, rpermits - give, r.since, r.sock, r.mode, r.label)
            holders = m[src:at] + kept + m[at + REC:src + lh]
        else:
            holders = m[src:at] + m[at + REC:src + lh]
        if forget and not bounded:
            cap -= give
        else:
            avail += give
        waiters = m[src + lh:src + lh + nw * REC]
        wakes: list[Wake] = []
        if nw:
            avail, last, flags, new, waiters, wakes = self._grant_loop(avail, last, flags, waiters, now)
            holders += new
        self._commit(sel, cap, avail, last, ticket, flags, epoch, holders, waiters)
        return True, wakes

    def downgrade_locked(self, token: int, proc: int, now: float) -> tuple[bool, list[Wake]]:
        """Exclusive -> shared: keep 1 permit, return the rest, grant waiters that now fit."""
        sel, off = self._active()
        m = self.m
        cap, avail, last, ticket, nh, nw, flags, epoch = _SLOT.unpack_from(m, off)
        src = off + SLOT_HDR
        i = _find(m, src, nh, _Q.pack(token))
        if i < 0:
            return False, []
        at = src + i * REC
        r = Record(m, at)
        if r.proc != proc:
            return False, []
        lh = nh * REC
        kept = _REC.pack(r.key, r.proc, r.wid, 1, r.since, r.sock, MODES["shared"], r.label)
        holders = m[src:at] + kept + m[at + REC:src + lh]
        avail += r.permits - 1
        waiters = m[src + lh:src + lh + nw * REC]
        wakes: list[Wake] = []
        if nw:
            avail, last, flags, new, waiters, wakes = self._grant_loop(avail, last, flags, waiters, now)
            holders += new
        self._commit(sel, cap, avail, last, ticket, flags, epoch, holders, waiters)
        return True, wakes

    def withdraw_locked(self, ticket: int, now: float) -> tuple[bool, list[Wake]]:
        """Remove a waiter (timeout, cancellation); the head may change, so grant what now fits.
        Returns (was queued, wakes)."""
        sel, off = self._active()
        m = self.m
        cap, avail, last, tk, nh, nw, flags, epoch = _SLOT.unpack_from(m, off)
        base = off + SLOT_HDR + nh * REC
        i = _find(m, base, nw, _Q.pack(ticket))
        if i < 0:
            return False, []
        holders = m[off + SLOT_HDR:base]
        waiters = m[base:base + i * REC] + m[base + (i + 1) * REC:base + nw * REC]
        wakes: list[Wake] = []
        if i == 0 and waiters:
            avail, last, flags, new, waiters, wakes = self._grant_loop(avail, last, flags, waiters, now)
            holders += new
        self._commit(sel, cap, avail, last, tk, flags, epoch, holders, waiters)
        return True, wakes

    def signal_locked(self, permits: int, now: float) -> list[Wake]:
        """V on an unbounded semaphore: capacity and availability grow by ``permits``."""
        sel, off = self._active()
        m = self.m
        cap, avail, last, ticket, nh, nw, flags, epoch = _SLOT.unpack_from(m, off)
        src = off + SLOT_HDR
        holders = m[src:src + nh * REC]
        waiters = m[src + nh * REC:src + (nh + nw) * REC]
        avail += permits
        wakes: list[Wake] = []
        if nw:
            avail, last, flags, new, waiters, wakes = self._grant_loop(avail, last, flags, waiters, now)
            holders += new
        self._commit(sel, cap + permits, avail, last, ticket, flags, epoch, holders, waiters)
        return wakes

    def reclaim_locked(self, dead: set[int], now: float, local_proc: int = 0,
                       tokens: Iterable[int] = ()) -> tuple[int, list[Wake]]:
        """Remove every record of the ``dead`` processes (proved dead by the caller), and the grants
        ``tokens`` of ``local_proc`` (their owner thread ended); return their permits, mark the next
        grant ``previous_owner_died`` if a holder was among them, and grant waiters that now fit.
        Returns (records removed, wakes)."""
        sel, off = self._active()
        m = self.m
        cap, avail, last, ticket, nh, nw, flags, epoch = _SLOT.unpack_from(m, off)
        src = off + SLOT_HDR
        toks = set(tokens)
        body = m[src:src + (nh + nw) * REC]
        kept_h: list[bytes] = []
        kept_w: list[bytes] = []
        removed = 0
        for i in range(nh + nw):
            rec = body[i * REC:(i + 1) * REC]
            key, proc = _PROC_WID.unpack_from(rec, 0)
            if i < nh:
                if proc in dead or (proc == local_proc and key in toks):
                    avail += _PERM.unpack_from(rec, 24)[0]
                    flags |= F_PREV_DIED
                    removed += 1
                else:
                    kept_h.append(rec)
            elif proc in dead:
                removed += 1
            else:
                kept_w.append(rec)
        if not removed:
            return 0, []
        holders = b"".join(kept_h)
        waiters = b"".join(kept_w)
        wakes: list[Wake] = []
        if waiters:
            avail, last, flags, new, waiters, wakes = self._grant_loop(avail, last, flags, waiters, now)
            holders += new
        self._commit(sel, cap, avail, last, ticket, flags, epoch, holders, waiters)
        return removed, wakes

    def snapshot_locked(self) -> Snapshot:
        self._ensure_mapped()
        return parse(bytes(self.m[0:self.mlen]))


def parse(data: bytes) -> Snapshot:
    """Parse a whole state file (taken under LOCK_SH by the caller)."""
    if len(data) < 3 * PAGE or data[0:8] != MAGIC:
        raise BackendError("not an interlock state file (or not initialised yet)")
    _, sel, k, b, version, nlen, cap0, o0, _s0, o1, _s1, _created = _HEAD.unpack_from(data, 0)
    if version != VERSION:
        raise BackendError(f"state format version {version} is not supported here")
    off = (o0, o1)[sel & 1]
    cap, avail, last, _ticket, nh, nw, _flags, _epoch = _SLOT.unpack_from(data, off)
    s = Snapshot()
    s.kind = KIND_NAMES.get(k, "?")
    s.bounded = bool(b)
    s.name = data[NAME_OFF:NAME_OFF + nlen].decode("utf-8", "surrogatepass")
    s.initial_capacity = cap0
    s.capacity = cap
    s.available = avail
    s.last_token = last
    body = data[off + SLOT_HDR:off + SLOT_HDR + (nh + nw) * REC]
    s.holders = _split(body, nh)
    s.waiters = [Record(body, (nh + i) * REC) for i in range(nw)]
    return s


def read_file(dir_fd: int, filename: str) -> Snapshot | None:
    """A snapshot of one state file by name (None if it does not exist or is not initialised)."""
    from ._paths import O_CLOEXEC, O_NOFOLLOW

    try:
        fd = os.open(filename, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackendError(f"cannot open state file {filename}: {exc.strerror} (symlinks are refused)",
                           path=filename) from None
    try:
        _flock(fd, _LOCK_SH)
        try:
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0) if size else b""
        finally:
            _flock(fd, _LOCK_UN)
    finally:
        os.close(fd)
    try:
        return parse(data)
    except BackendError:
        return None

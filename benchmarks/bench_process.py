"""Same-host (cross-process) locks and semaphores: interlock's ``file://`` backend against filelock,
fasteners, portalocker (blocking flock and default polling), posix_ipc and multiprocessing, all measured
in ONE run with interleaved repetitions (rep 1 of every implementation, then rep 2, ...), so that drift
in machine load hits every implementation alike. Ratios are taken inside each rep, then the median is
reported.

Scenarios (the method follows shared/reference/perf-baseline.md):

* ``uncontended``: acquire+release pairs in a fresh child process (50 warm-up pairs, then N pairs);
  ratio to portalocker's blocking-flock pair (issue target: <= 0.25) and to posix_ipc.
* ``handoff``: 4 processes; the holder releases only once every other process has been blocked in
  ``acquire()`` for at least 300 us, and a process that released queues again only after someone else
  acquired; latency from just before ``release()`` to just after the next process's ``acquire()``
  returns (``perf_counter_ns``: CLOCK_MONOTONIC, system-wide). Targets: median <= portalocker blocking
  flock, and <= 3 x posix_ipc. Next to posix_ipc runs the "FIFO floor" (see below).
* ``tight``: 4 processes loop acquire -> read-increment-write of a counter file -> release; acq/s,
  share of acquisitions handed to a process that was already waiting (1.0 = FIFO), correctness (counter
  exact, no overlapping holds).
* ``semaphore``: 8 processes, 3 permits, critical section = sleep 200 us; acq/s (target >= 1.0 x
  posix_ipc), acquire wait, CPU per acquisition (``time.process_time`` of each process over its loop:
  every thread, so a head waiter that waits awake is counted, and the harness's own work), maximum
  holders seen (a guard counter under an extra lock, and a sweep over
  the logged intervals). Next to posix_ipc runs the "FIFO floor" with 3 permits.
* The "FIFO floor" peer (``handoff`` and ``semaphore``) is ``benchmarks/fifo_floor.c``, compiled with
  ``cc -O2 -shared -fPIC`` into a temporary directory once per run and called through ctypes (which, like
  posix_ipc, releases the GIL): the cheapest strict-FIFO cross-process semaphore we could write (a
  process-shared pthread mutex, a permit count and a ring of futex words in a fork-inherited page;
  release hands the permit straight to the oldest waiter and wakes it). It is a measuring reference, not
  a library: no crash safety at all (a killed holder leaks its permit). It is there because posix_ipc is
  unfair: its releaser re-takes the permit it has just posted (acquire-wait median ~1 us), while strict
  FIFO with direct handoff puts a process wake-up on every contended permit's path. The floor pays that
  wake-up and nothing else, so interlock vs floor is interlock's own overhead, and floor vs posix_ipc
  is the cost of fairness itself on this machine.
* ``tight`` and ``semaphore`` start every child with one uncontended warm-up pair and a barrier
  (``multiprocessing.Barrier``): each child opens its primitive, imports and registers what it needs,
  and only then do all start together. (Until this revision they started on a 0.3 s timer: children
  that were still importing a backend package or registering in its directory when the timer fired
  burnt CPU inside the measured span and slowed the others on a 2-core machine, so the figure measured
  start-up as well as throughput, against interlock only: posix_ipc has nothing to import or register.)
* ``recovery``: a holder is SIGKILLed 0.3-0.6 s after a waiter blocked behind it; time from the kill to
  the waiter's grant ("never" = not within the cap).
* ``idle``: CPU time a waiter burns while blocked for 1 s behind a holder.
* After each scenario: the share of CPU time the hypervisor took from this VM (steal, from /proc/stat)
  while it ran; on a shared host it slows every implementation, not alike, so runs with much steal are
  not comparable with quiet ones.

Run: ``python benchmarks/bench_process.py`` (about 4 minutes; ``--quick`` for a smoke run).
Needs ``pip install filelock fasteners portalocker posix_ipc`` and a C compiler for the FIFO floor (missing
peers are skipped).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import mmap
import multiprocessing as mp
import os
import random
import shutil
import signal
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

CTX = mp.get_context("fork")
NS = 1e-9

# --------------------------------------------------------------------------------------------------
# implementations: a spec is created in the parent (before fork); open() runs in the child and
# returns (acquire, release) callables.


class Impl:
    label = "?"
    note = ""
    never_recovers = False

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir

    def open(self) -> tuple[Callable[[], Any], Callable[[], Any]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class InterlockLock(Impl):
    label = "interlock file://"
    note = ("interlock.Lock / Semaphore on file://<tmpdir>: state in an mmap'ed file under flock; waiters "
            "sleep on a futex (named semaphore) and are handed the grant in FIFO order; holder death "
            "proved by the kernel (flock liveness file + FIFO hang-up)")

    def __init__(self, workdir: str, permits: int = 0) -> None:
        super().__init__(workdir)
        self.url = "file://" + os.path.join(workdir, "interlock")
        self.permits = permits

    def open(self) -> tuple[Callable[[], Any], Callable[[], Any]]:
        import interlock

        prim: Any = (interlock.Semaphore("bench", self.permits, url=self.url) if self.permits
                     else interlock.Lock("bench", url=self.url))
        held: list[Any] = []

        def acquire() -> None:
            held.append(prim.acquire())

        def release() -> None:
            held.pop().release()

        return acquire, release


class PortalockerBlocking(Impl):
    label = "portalocker blocking flock"
    note = "portalocker.Lock(flags=EXCLUSIVE): open + blocking flock + unlock + close per pair"

    def open(self) -> tuple[Callable[[], Any], Callable[[], Any]]:
        import portalocker

        lk = portalocker.Lock(os.path.join(self.workdir, "pl.lock"), flags=portalocker.LockFlags.EXCLUSIVE)
        return lk.acquire, lk.release


class PortalockerDefault(Impl):
    label = "portalocker default (poll 0.25 s)"
    note = "portalocker.Lock(timeout=3600): flock(LOCK_NB) polled every check_interval=0.25 s"

    def open(self) -> tuple[Callable[[], Any], Callable[[], Any]]:
        import portalocker

        lk = portalocker.Lock(os.path.join(self.workdir, "pl.lock"), timeout=3600)
        return lk.acquire, lk.release


class FileLockDefault(Impl):
    label = "filelock default (poll 50 ms)"
    note = "filelock.FileLock: flock(LOCK_NB) polled every poll_interval=0.05 s"

    def open(self) -> tuple[Callable[[], Any], Callable[[], Any]]:
        import filelock

        lk = filelock.FileLock(os.path.join(self.workdir, "fl.lock"))
        return lk.acquire, lk.release


class FastenersDefault(Impl):
    label = "fasteners default (10->100 ms)"
    note = "fasteners.InterProcessLock: lockf(LOCK_NB) polled, delay 10 ms growing to 100 ms"

    def open(self) -> tuple[Callable[[], Any], Callable[[], Any]]:
        import fasteners

        lk = fasteners.InterProcessLock(os.path.join(self.workdir, "fa.lock"))
        return lk.acquire, lk.release


class PosixIpc(Impl):
    label = "posix_ipc"
    note = "named POSIX semaphore (futex; waiter blocks in the kernel); never given back if the holder dies"
    never_recovers = True

    def __init__(self, workdir: str, permits: int = 1) -> None:
        super().__init__(workdir)
        import posix_ipc

        self.name = f"/ilbench-{os.getpid()}-{random.randrange(1 << 30)}"
        posix_ipc.Semaphore(self.name, posix_ipc.O_CREX, initial_value=permits).close()

    def open(self) -> tuple[Callable[[], Any], Callable[[], Any]]:
        import posix_ipc

        s = posix_ipc.Semaphore(self.name)
        return s.acquire, s.release

    def close(self) -> None:
        import posix_ipc

        with contextlib.suppress(Exception):
            posix_ipc.unlink_semaphore(self.name)


_FLOOR_LIB: list[Any] = []  # [ctypes.CDLL or None], built once per run


def _fifo_floor_lib() -> Any:
    """Compile benchmarks/fifo_floor.c into a temporary directory (once per run) and load it; None without
    a C compiler."""
    if _FLOOR_LIB:
        return _FLOOR_LIB[0]
    import atexit
    import ctypes
    import subprocess

    lib = None
    cc = next(filter(None, (shutil.which(c) for c in (os.environ.get("CC", "cc"), "gcc", "clang"))), None)
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fifo_floor.c")
    if cc is None:
        print("(skipping FifoFloor: no C compiler found)", file=sys.stderr)
    else:
        d = tempfile.mkdtemp(prefix="ilbench-floor-")
        parent = os.getpid()

        def cleanup() -> None:
            if os.getpid() == parent:  # not in forked children
                shutil.rmtree(d, ignore_errors=True)

        atexit.register(cleanup)
        so = os.path.join(d, "fifo_floor.so")
        r = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", so, src], capture_output=True, text=True,
                           check=False)
        if r.returncode:
            print(f"(skipping FifoFloor: {cc} failed: {r.stderr.strip()[:200]})", file=sys.stderr)
        else:
            lib = ctypes.CDLL(so)  # CDLL (not PyDLL): the GIL is released around every call, as posix_ipc does
            lib.floor_size.restype = ctypes.c_size_t
            for f in (lib.floor_init, lib.floor_acquire, lib.floor_release):
                f.restype = ctypes.c_int
            lib.floor_init.argtypes = [ctypes.c_void_p, ctypes.c_int]
            lib.floor_acquire.argtypes = lib.floor_release.argtypes = [ctypes.c_void_p]
    _FLOOR_LIB.append(lib)
    return lib


class FifoFloor(Impl):
    label = "FIFO floor (minimal C, no crash safety)"
    note = ("benchmarks/fifo_floor.c, a measuring reference, not a library: process-shared pthread mutex + "
            "permit count + ring of futex words in a fork-inherited page; strict FIFO with direct handoff "
            "(release wakes the oldest waiter and gives it the permit), so every contended grant pays one "
            "futex wake-up, like interlock and unlike posix_ipc; a dead holder's permit is lost")
    never_recovers = True

    def __init__(self, workdir: str, permits: int = 1) -> None:
        import ctypes

        super().__init__(workdir)
        self.lib = _fifo_floor_lib()
        size = -(-max(1, self.lib.floor_size()) // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages
        self.m = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)  # page-aligned, inherited across fork
        view = ctypes.c_char.from_buffer(self.m)
        self.addr = ctypes.addressof(view)
        del view  # release the buffer export so that close() can unmap
        if self.lib.floor_init(self.addr, permits):
            raise OSError("fifo_floor: pthread_mutex_init failed")

    def open(self) -> tuple[Callable[[], Any], Callable[[], Any]]:
        acq_c, rel_c, addr = self.lib.floor_acquire, self.lib.floor_release, self.addr

        def acquire() -> None:
            if acq_c(addr):
                raise RuntimeError("fifo_floor: waiter ring full")

        def release() -> None:
            rel_c(addr)

        return acquire, release

    def close(self) -> None:
        self.m.close()


class MpLock(Impl):
    label = "multiprocessing.Lock"
    note = "fork-inherited SemLock (sem_t); never given back if the holder dies"
    never_recovers = True

    def __init__(self, workdir: str, permits: int = 0) -> None:
        super().__init__(workdir)
        self.prim = CTX.BoundedSemaphore(permits) if permits else CTX.Lock()
        if permits:
            self.label = "multiprocessing.BoundedSemaphore"

    def open(self) -> tuple[Callable[[], Any], Callable[[], Any]]:
        return self.prim.acquire, self.prim.release


class PortalockerSemaphore(Impl):
    def __init__(self, workdir: str, permits: int, interval: float | None) -> None:
        super().__init__(workdir)
        self.permits = permits
        self.interval = interval
        self.label = "portalocker.BoundedSemaphore" + ("" if interval is None else f" poll={interval * 1000:g}ms")
        self.note = ("N lock files tried with flock(LOCK_NB) in slot order; all busy -> sleep check_interval"
                     + (" (default 0.25 s)" if interval is None else ""))

    def open(self) -> tuple[Callable[[], Any], Callable[[], Any]]:
        import portalocker

        kw: dict[str, Any] = {"timeout": 3600}
        if self.interval is not None:
            kw["check_interval"] = self.interval
        s = portalocker.BoundedSemaphore(self.permits, name="ilbench", directory=self.workdir, **kw)
        return s.acquire, s.release


def available(cls: type[Impl]) -> bool:
    if cls is FifoFloor:
        return _fifo_floor_lib() is not None
    mod = {PortalockerBlocking: "portalocker", PortalockerDefault: "portalocker", FileLockDefault: "filelock",
           FastenersDefault: "fasteners", PosixIpc: "posix_ipc", PortalockerSemaphore: "portalocker"}.get(cls)
    if mod is None:
        return True
    try:
        __import__(mod)
    except ImportError:
        print(f"(skipping {cls.__name__}: pip install {mod})", file=sys.stderr)
        return False
    return True


# --------------------------------------------------------------------------------------------------
# helpers


class Shared:
    """An anonymous shared mapping of int64/float64 slots, inherited across fork."""

    def __init__(self, n: int) -> None:
        self.m = mmap.mmap(-1, 8 * n)

    def get(self, i: int) -> int:
        return struct.unpack_from("<q", self.m, 8 * i)[0]

    def set(self, i: int, v: int) -> None:
        struct.pack_into("<q", self.m, 8 * i, v)

    def add(self, i: int, v: int) -> int:  # only under the benchmarked lock (single writer)
        x = self.get(i) + v
        self.set(i, x)
        return x


def run_children(n: int, target: Callable[..., Any], args: tuple[Any, ...], timeout: float) -> list[Any]:
    """Fork n children running target(i, conn, *args); collect one result from each."""
    pipes = []
    procs = []
    for i in range(n):
        r, w = CTX.Pipe(duplex=False)
        p = CTX.Process(target=_child, args=(target, i, w, args))
        p.start()
        w.close()
        pipes.append(r)
        procs.append(p)
    out = []
    deadline = time.monotonic() + timeout
    for r in pipes:
        if r.poll(max(0.0, deadline - time.monotonic())):
            out.append(r.recv())
        else:
            out.append(None)
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
    return out


def _child(target: Callable[..., Any], i: int, conn: Any, args: tuple[Any, ...]) -> None:
    try:
        conn.send(target(i, *args))
    except BaseException as exc:  # report, do not hang the parent
        conn.send({"error": repr(exc)})
    finally:
        conn.close()
        os._exit(0)


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def fmt(x: float, digits: int = 1) -> str:
    if x != x:  # NaN
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w[i]) for i, h in enumerate(headers)) + " |"
    sep = "|" + "|".join("-" * (x + 2) for x in w) + "|"
    body = ["| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |" for r in rows]
    return "\n".join([line, sep, *body])


@contextlib.contextmanager
def workdir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="ilbench-")
    try:
        yield d
    finally:
        if os.path.isdir(os.path.join(d, "interlock")):
            # Killed children leave wake-up semaphores in /dev/shm: prove them dead and remove them.
            from interlock.backends.file import FileBackend

            FileBackend("file://" + os.path.join(d, "interlock")).sweep()
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# scenario: uncontended pair


def _uncontended(i: int, impl: Impl, n: int) -> float:
    """Median over 15 blocks of n/10 pairs (robust to a preemption landing in one block)."""
    acq, rel = impl.open()
    for _ in range(50):
        acq()
        rel()
    block = max(1, n // 10)
    per_block = []
    for _ in range(15):
        t = time.perf_counter()
        for _ in range(block):
            acq()
            rel()
        per_block.append((time.perf_counter() - t) / block * 1e6)
    return statistics.median(per_block)


def scenario_uncontended(reps: int, n: int) -> str:
    classes: list[type[Impl]] = [InterlockLock, PortalockerBlocking, PortalockerDefault, FastenersDefault,
                                 FileLockDefault, PosixIpc, MpLock]
    classes = [c for c in classes if available(c)]
    res: dict[str, list[float]] = {}
    ratio_pl: dict[str, list[float]] = {}
    ratio_px: dict[str, list[float]] = {}
    notes: dict[str, str] = {}
    for _ in range(reps):
        rep: dict[str, float] = {}
        for cls in classes:
            with workdir() as d:
                impl = cls(d)
                try:
                    (us,) = run_children(1, _uncontended, (impl, n), 120)
                finally:
                    impl.close()
            rep[impl.label] = us
            notes[impl.label] = impl.note
        for k, v in rep.items():
            res.setdefault(k, []).append(v)
            if PortalockerBlocking.label in rep:
                ratio_pl.setdefault(k, []).append(v / rep[PortalockerBlocking.label])
            if PosixIpc.label in rep:
                ratio_px.setdefault(k, []).append(v / rep[PosixIpc.label])
    rows = [[k, fmt(statistics.median(v), 2), f"{min(v):.2f}..{max(v):.2f}",
             fmt(statistics.median(ratio_pl.get(k, [float('nan')])), 3),
             fmt(statistics.median(ratio_px.get(k, [float('nan')])), 1)] for k, v in res.items()]
    return ("### uncontended acquire+release (one process, fresh child per rep; median of 15 blocks of "
            f"{max(1, n // 10)} pairs; {reps} reps)\n\n"
            + table(["impl", "us/pair (median)", "min..max", "x portalocker blocking", "x posix_ipc"], rows)
            + "\n\n" + "\n".join(f"- `{k}`: {v}" for k, v in notes.items()))


# --------------------------------------------------------------------------------------------------
# scenario: forced handoff between 4 processes

# shared slots: 0 stop, 1 acq_count, 2 t_release(ns), 3..3+P waiting_since(ns), 16.. samples
_S_STOP, _S_COUNT, _S_TREL, _S_WAIT = 0, 1, 2, 3
_S_SAMPLES = 16


def _handoff(i: int, impl: Impl, sh: Shared, nproc: int, target: int, cap: float) -> str:
    acq, rel = impl.open()
    sleep = time.sleep
    now = time.perf_counter_ns
    deadline = time.monotonic() + cap
    my_last = -1
    while True:
        while sh.get(_S_COUNT) == my_last and not sh.get(_S_STOP):
            sleep(0.00005)
        if sh.get(_S_STOP):
            return "stopped"
        sh.set(_S_WAIT + i, now())
        acq()
        t = now()
        sh.set(_S_WAIT + i, 0)
        trel = sh.get(_S_TREL)
        count = sh.get(_S_COUNT)
        if trel and count < target:
            sh.set(_S_SAMPLES + count, t - trel)
        sh.set(_S_COUNT, count + 1)
        # hold until every other process has been blocked in acquire() for >= 300 us
        while not sh.get(_S_STOP):
            t0 = now()
            if all(0 < sh.get(_S_WAIT + j) <= t0 - 300_000 for j in range(nproc) if j != i):
                break
            if time.monotonic() > deadline:
                sh.set(_S_STOP, 1)
            sleep(0.0001)
        if count + 1 >= target or time.monotonic() > deadline:
            sh.set(_S_STOP, 1)
        my_last = count + 1
        sh.set(_S_TREL, now())
        rel()
        if sh.get(_S_STOP):
            return "done"


def scenario_handoff(reps: int, target: int, cap: float) -> str:
    classes: list[type[Impl]] = [InterlockLock, PortalockerBlocking, PosixIpc, FifoFloor, MpLock, FastenersDefault,
                                 FileLockDefault, PortalockerDefault]
    classes = [c for c in classes if available(c)]
    nproc = 4
    per: dict[str, dict[str, list[float]]] = {}
    notes: dict[str, str] = {}
    for _ in range(reps):
        rep: dict[str, list[float]] = {}
        for cls in classes:
            with workdir() as d:
                impl = cls(d)
                sh = Shared(_S_SAMPLES + target + 8)
                try:
                    run_children(nproc, _handoff, (impl, sh, nproc, target, cap), cap + 30)
                finally:
                    impl.close()
                n = min(sh.get(_S_COUNT), target)
                samples = [sh.get(_S_SAMPLES + k) / 1000 for k in range(1, n) if sh.get(_S_SAMPLES + k) > 0]
            rep[impl.label] = samples
            notes[impl.label] = impl.note
        px = statistics.median(rep[PosixIpc.label]) if rep.get(PosixIpc.label) else float("nan")
        pl = statistics.median(rep[PortalockerBlocking.label]) if rep.get(PortalockerBlocking.label) else float("nan")
        for k, s in rep.items():
            d = per.setdefault(k, {"median": [], "mean": [], "p99": [], "n": [], "xpx": [], "xpl": []})
            if not s:
                continue
            med = statistics.median(s)
            d["median"].append(med)
            d["mean"].append(statistics.fmean(s))
            d["p99"].append(pct(s, 0.99))
            d["n"].append(len(s))
            d["xpx"].append(med / px)
            d["xpl"].append(med / pl)
    rows = []
    for k, d in per.items():
        if not d["median"]:
            rows.append([k, "-", "-", "-", "-", "-", "-"])
            continue
        rows.append([k, fmt(statistics.median(d["median"])), fmt(statistics.median(d["mean"])),
                     fmt(statistics.median(d["p99"])), str(int(statistics.median(d["n"]))),
                     fmt(statistics.median(d["xpx"]), 2), fmt(statistics.median(d["xpl"]), 2)])
    return (f"### forced handoff, 4 processes ({target} handoffs or {cap:g} s per run, {reps} reps)\n\n"
            + table(["impl", "median us", "mean us", "p99 us", "n", "x posix_ipc", "x portalocker blocking"],
                    rows))


# --------------------------------------------------------------------------------------------------
# scenario: tight loop, 4 processes, counter file


def _ready(acq: Callable[[], Any], rel: Callable[[], Any], start: Any) -> None:
    """Warm up (one uncontended pair: imports, opening and registering are done) and start together."""
    acq()
    rel()
    start.wait()


def _tight(i: int, impl: Impl, quota: int, counter: str, start: Any) -> list[tuple[int, int, int, int]]:
    acq, rel = impl.open()
    fd = os.open(counter, os.O_RDWR)
    log = []
    now = time.perf_counter_ns
    _ready(acq, rel, start)
    for _ in range(quota):
        t0 = now()
        acq()
        t1 = now()
        v = int(os.pread(fd, 32, 0).strip(b"\0") or b"0")
        os.pwrite(fd, str(v + 1).encode().ljust(32, b"\0"), 0)
        t2 = now()
        rel()
        log.append((i, t0, t1, t2))
    return log


def scenario_tight(reps: int, quota: int) -> str:
    classes: list[type[Impl]] = [InterlockLock, PortalockerBlocking, PosixIpc, MpLock, FastenersDefault,
                                 FileLockDefault]
    classes = [c for c in classes if available(c)]
    nproc = 4
    per: dict[str, dict[str, list[float]]] = {}
    ok: dict[str, list[bool]] = {}
    for _ in range(reps):
        for cls in classes:
            with workdir() as d:
                impl = cls(d)
                counter = os.path.join(d, "counter")
                with open(counter, "wb") as f:
                    f.write(b"0".ljust(32, b"\0"))
                start = CTX.Barrier(nproc)
                t = time.perf_counter()
                try:
                    logs = run_children(nproc, _tight, (impl, quota, counter, start), 120)
                finally:
                    impl.close()
                with open(counter, "rb") as f:
                    final = int(f.read().strip(b"\0"))
            events = sorted((e for log in logs if isinstance(log, list) for e in log), key=lambda e: e[2])
            total = len(events)
            span = (max(e[3] for e in events) - min(e[2] for e in events)) * NS if events else float("nan")
            overlap = any(b[2] < a[3] for a, b in itertools.pairwise(events))
            handoffs = sum(1 for a, b in itertools.pairwise(events) if b[0] != a[0] and b[1] < a[3])
            d = per.setdefault(impl.label, {"acqs": [], "handoffs": [], "wait": []})
            d["acqs"].append(total / span)
            d["handoffs"].append(handoffs / max(1, total - 1))
            d["wait"].append(statistics.median([(e[2] - e[1]) / 1000 for e in events]))
            ok.setdefault(impl.label, []).append(final == nproc * quota == total and not overlap)
            del t
    rows = [[k, fmt(statistics.median(d["acqs"]), 0), fmt(statistics.median(d["handoffs"]), 2),
             fmt(statistics.median(d["wait"])), f"{sum(ok[k])}/{len(ok[k])} reps ok"] for k, d in per.items()]
    return (f"### tight loop, 4 processes x {quota} acquisitions, critical section = counter-file RMW ({reps} reps)\n\n"
            + table(["impl", "acq/s", "handoffs/acq", "acquire wait median us", "correct (counter exact, no overlap)"],
                    rows))


# --------------------------------------------------------------------------------------------------
# scenario: semaphore, 8 processes, 3 permits, 200 us critical section


def _sem(
    i: int, impl: Impl, quota: int, guard: Any, sh: Shared, start: Any,
) -> tuple[list[tuple[int, int, int]], float]:
    acq, rel = impl.open()
    log = []
    now = time.perf_counter_ns
    _ready(acq, rel, start)
    cpu0 = time.process_time()  # this process, all its threads (a spinning head waiter included)
    for _ in range(quota):
        t0 = now()
        acq()
        t1 = now()
        with guard:
            h = sh.add(0, 1)
            if h > sh.get(1):
                sh.set(1, h)
        time.sleep(0.0002)
        with guard:
            sh.add(0, -1)
        t2 = now()
        rel()
        log.append((t0, t1, t2))
    return log, time.process_time() - cpu0


def scenario_semaphore(reps: int, quota: int) -> str:
    permits = 3
    nproc = 8

    def impls(d: str) -> list[Impl]:
        out: list[Impl] = [InterlockLock(d, permits)]
        if available(PosixIpc):
            out.append(PosixIpc(d, permits))
        if available(FifoFloor):
            out.append(FifoFloor(d, permits))
        out.append(MpLock(d, permits))
        if available(PortalockerSemaphore):
            out.append(PortalockerSemaphore(d, permits, None))
            out.append(PortalockerSemaphore(d, permits, 0.001))
        return out

    per: dict[str, dict[str, list[float]]] = {}
    notes: dict[str, str] = {}
    for _ in range(reps):
        rep_acqs: dict[str, float] = {}
        with workdir() as d:
            for impl in impls(d):
                guard = CTX.Lock()
                sh = Shared(4)
                start = CTX.Barrier(nproc)
                try:
                    logs = run_children(nproc, _sem, (impl, quota, guard, sh, start), 120)
                finally:
                    impl.close()
                ev = [e for log in logs if isinstance(log, tuple) for e in log[0]]
                cpu = sum(log[1] for log in logs if isinstance(log, tuple))
                span = (max(e[2] for e in ev) - min(e[1] for e in ev)) * NS
                pts = sorted([(e[1], 1) for e in ev] + [(e[2], -1) for e in ev], key=lambda p: (p[0], p[1]))
                cur = peak = 0
                for _, dlt in pts:
                    cur += dlt
                    peak = max(peak, cur)
                waits = [(e[1] - e[0]) / 1000 for e in ev]
                dd = per.setdefault(impl.label, {"acqs": [], "wmed": [], "wmean": [], "wp99": [], "log": [],
                                                 "guard": [], "x": [], "cpu": []})
                dd["cpu"].append(cpu / len(ev) * 1e6)
                rep_acqs[impl.label] = len(ev) / span
                dd["acqs"].append(len(ev) / span)
                dd["wmed"].append(statistics.median(waits))
                dd["wmean"].append(statistics.fmean(waits))
                dd["wp99"].append(pct(waits, 0.99))
                dd["log"].append(peak)
                dd["guard"].append(sh.get(1))
                notes[impl.label] = impl.note
        px = rep_acqs.get(PosixIpc.label)
        for k, v in rep_acqs.items():
            if px:
                per[k]["x"].append(v / px)
    rows = [[k, fmt(statistics.median(d["acqs"]), 0), fmt(statistics.median(d["x"]), 2) if d["x"] else "-",
             f"{fmt(statistics.median(d['wmed']))} / {fmt(statistics.median(d['wmean']))} / "
             f"{fmt(statistics.median(d['wp99']))}",
             fmt(statistics.median(d["cpu"])),
             f"{max(d['log']):.0f} / {max(d['guard']):.0f}",
             "ok" if max(d["log"]) <= permits and max(d["guard"]) <= permits else "VIOLATION"]
            for k, d in per.items()]
    return (f"### semaphore: {nproc} processes, {permits} permits, {nproc * quota} acquisitions, critical section "
            f"= sleep 200 us ({reps} reps)\n\n"
            + table(["impl", "acq/s", "x posix_ipc", "acquire wait median / mean / p99 us",
                     "CPU us per acquisition", "max holders (log / guard)", f"<= {permits}"], rows))


# --------------------------------------------------------------------------------------------------
# scenario: crash recovery and idle waiter CPU


def _holder(i: int, impl: Impl, sh: Shared) -> None:
    acq, _ = impl.open()
    acq()
    sh.set(0, 1)
    time.sleep(3600)


def _waiter(i: int, impl: Impl, sh: Shared) -> dict[str, float]:
    acq, rel = impl.open()
    while not sh.get(0):
        time.sleep(0.001)
    c0 = time.process_time()  # all threads of the process, high resolution
    sh.set(1, time.monotonic_ns())
    acq()
    t = time.monotonic_ns()
    c1 = time.process_time()
    rel()
    return {"granted": t, "cpu": c1 - c0}


def _cpu(pid: int) -> float:
    """CPU seconds a process has run, all its threads, in nanoseconds resolution (Linux schedstat)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except OSError:
        return float("nan")
    return total / 1e9


def _recovery_once(impl: Impl, delay: float, cap: float, kill: bool) -> tuple[float | None, float]:
    sh = Shared(4)
    h = CTX.Process(target=_holder, args=(0, impl, sh))
    h.start()
    r, w = CTX.Pipe(duplex=False)
    wp = CTX.Process(target=_child, args=(_waiter, 1, w, (impl, sh)))
    wp.start()
    w.close()
    while not sh.get(1):
        time.sleep(0.001)
    time.sleep(0.1)  # the waiter is blocked by now: measure its CPU over the rest of the wait
    cpu0 = _cpu(wp.pid)
    time.sleep(max(0.0, delay - 0.1))
    cpu1 = _cpu(wp.pid)
    t_kill = time.monotonic_ns()
    if kill:
        os.kill(h.pid, signal.SIGKILL)
    else:
        os.kill(h.pid, signal.SIGKILL)  # idle: the wait above was the measurement window
    got = r.recv() if r.poll(cap) else None
    h.join()
    wp.join(1)
    if wp.is_alive():
        wp.kill()
        wp.join()
    idle = (cpu1 - cpu0) / max(1e-9, delay - 0.1)  # CPU seconds per second of waiting
    if not got or "granted" not in got:
        return None, idle
    return (got["granted"] - t_kill) / 1e6, idle


def scenario_recovery(reps: int, cap: float) -> str:
    classes: list[type[Impl]] = [InterlockLock, FileLockDefault, FastenersDefault, PortalockerDefault,
                                 PortalockerBlocking, PosixIpc, MpLock]
    classes = [c for c in classes if available(c)]
    res: dict[str, list[float | None]] = {}
    cpu: dict[str, list[float]] = {}
    for _ in range(reps):
        for cls in classes:
            with workdir() as d:
                impl = cls(d)
                try:
                    ms, _ = _recovery_once(impl, random.uniform(0.3, 0.6), cap, True)
                finally:
                    impl.close()
            res.setdefault(impl.label, []).append(ms)
    for cls in classes:
        with workdir() as d:
            impl = cls(d)
            try:
                _, c = _recovery_once(impl, 2.1, cap, True)
            finally:
                impl.close()
        cpu.setdefault(impl.label, []).append(c)
    rows = []
    for k, v in res.items():
        got = [x for x in v if x is not None]
        if len(got) < len(v):
            med = "never" if not got else f"{statistics.median(got):.1f} ({len(v) - len(got)} never)"
            spread = f"{len(v) - len(got)}/{len(v)} not within {cap:g} s"
        else:
            med = f"{statistics.median(got):.1f}"
            spread = f"{min(got):.1f}..{max(got):.1f}"
        c = cpu.get(k)
        rows.append([k, med, spread, f"{1000 * statistics.median(c):.2f}" if c else "-"])
    return (f"### crash recovery: holder SIGKILLed 0.3-0.6 s after the waiter blocked ({reps} reps, cap {cap:g} s)"
            "; CPU a blocked waiter burns (all its threads, /proc schedstat, over 2 s of waiting)\n\n"
            + table(["impl", "kill -> grant ms (median)", "min..max", "idle waiter CPU ms per s"], rows))


# --------------------------------------------------------------------------------------------------


def _cpu_ticks() -> list[int] | None:
    """The machine's CPU time counters (/proc/stat "cpu" line: user nice system idle iowait irq softirq
    steal ...), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def _steal_note(before: list[int] | None) -> str:
    """The share of CPU time the hypervisor took from this VM (steal) since ``before``: on a shared host
    it slows every implementation, but not alike (a handoff that waits for a preempted vCPU pays most),
    so figures of runs with much steal are not comparable with quiet ones."""
    after = _cpu_ticks()
    if before is None or after is None or len(after) < 8:
        return ""
    d = [b - a for a, b in zip(before, after, strict=False)]
    total = sum(d[:8])
    return f"(host steal during this scenario: {100 * d[7] / total:.0f} % of CPU time)\n\n" if total else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small numbers, one rep (smoke test)")
    ap.add_argument("--only", default="",
                    help="comma-separated scenarios: uncontended,handoff,tight,semaphore,recovery")
    args = ap.parse_args()
    q = args.quick
    only = set(filter(None, args.only.split(",")))

    def want(s: str) -> bool:
        return not only or s in only

    import interlock

    print(f"# bench_process: interlock {interlock.__version__}, Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}")
    for mod in ("filelock", "fasteners", "portalocker", "posix_ipc"):
        try:
            from importlib.metadata import version

            print(f"#   {mod} {version(mod)}")
        except Exception:
            print(f"#   {mod} missing")
    print()
    t0 = time.monotonic()
    scenarios: list[tuple[str, Callable[[], str]]] = [
        ("uncontended", lambda: scenario_uncontended(1 if q else 5, 500 if q else 2000)),
        ("handoff", lambda: scenario_handoff(1 if q else 5, 50 if q else 400, 3.0 if q else 6.0)),
        ("tight", lambda: scenario_tight(1 if q else 3, 100 if q else 500)),
        ("semaphore", lambda: scenario_semaphore(1 if q else 5, 30 if q else 250)),
        ("recovery", lambda: scenario_recovery(1 if q else 3, 2.0 if q else 3.0)),
    ]
    for name, run in scenarios:
        if want(name):
            ticks = _cpu_ticks()
            print(run(), end="\n\n", flush=True)
            print(_steal_note(ticks), end="", flush=True)
    print(f"(total {time.monotonic() - t0:.0f} s)")


if __name__ == "__main__":
    main()

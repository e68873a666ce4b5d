"""Where the time of an uncontended interlock acquire+release goes, next to the stdlib, in one run.

    python benchmarks/profile_fast_path.py

Each line times one ingredient the memory:// fast path must perform per acquire+release pair (a mutex
pair on acquire and one on release, a Lease object with a finalizer, a fencing token, the hold-start
clock reading, the holder record, the owner and acquire-site lookups, and the Python calls that connect
them), then compares their sum with the measured interlock pair and with threading.Semaphore and
asyncio.Semaphore. It is the evidence for the targets that pure Python cannot reach: the ingredients
alone cost more than half of a threading.Semaphore pair.

Then it measures the same pairs through the native accelerator (``interlock._speedups``, when built)
and through its pure-Python twin (``memory://...?native=0``), and what the C path still pays for: the
objects a grant creates (the Lease, allocated in C since it has a C core, the token and the holder
record), the clock, the ``with`` protocol, and for tasks the running-loop lookup that the C path
caches per thread.
"""

from __future__ import annotations

import _thread
import asyncio
import itertools
import sys
import threading
import time
import timeit
from typing import Any

import interlock
from interlock._core.owner import thread_owner
from interlock._lease import Lease
from interlock.backends.memory import accelerated

NUMBER, REPEAT = 200_000, 7


def ns(stmt: str, env: dict[str, Any]) -> float:
    empty = min(timeit.repeat("pass", number=NUMBER, repeat=REPEAT))
    t = min(timeit.repeat(stmt, globals=env, number=NUMBER, repeat=REPEAT))
    return max(0.0, t - empty) / NUMBER * 1e9


class _LeaseLike:
    """Same shape as interlock.Lease: instance values plus a finalizer."""

    _state = 0

    def __del__(self) -> None:
        if self._state != 0:
            return


class _Chan:
    def f(self, a: Any, b: Any, c: Any, d: Any, e: Any, g: Any, h: Any) -> None:
        return None


def main() -> None:
    m = _thread.allocate_lock()
    counter = itertools.count()
    holders: dict[int, Any] = {}
    _ = thread_owner()
    owner_local = interlock._core.owner._tls
    parts = {
        "2 mutex pairs (acquire side + release side)": 2 * ns("a(); r()", {"a": m.acquire, "r": m.release}),
        "Lease object: create, 7 fields, finalizer": ns(
            "o = N(C); o.a = 1; o.b = 2; o.c = 3; o.d = 4; o.e = 5; o.f = 6; o.g = 7; o._state = 1",
            {"N": _LeaseLike.__new__, "C": _LeaseLike},
        ),
        "fencing token (next on a counter)": ns("n(c)", {"n": next, "c": counter}),
        "hold-start clock (time.monotonic)": ns("m()", {"m": time.monotonic}),
        "holder record (tuple into dict, pop)": ns("h[1] = (o, 1, 2.0, 'p'); h.pop(1)", {"h": holders, "o": m}),
        "owner lookup (thread-local)": ns("t.owner", {"t": owner_local}),
        "acquire site (caller's code object)": ns("g(0).f_code", {"g": sys._getframe}),
        "4 Python calls (facade, channel, Lease.release, channel)": 4
        * ns("c.f(1, 2, 3, 4, 5, 6, 7)", {"c": _Chan()}),
    }
    total = sum(parts.values())

    sem = interlock.Semaphore("profile", 2, url="memory://profile")
    pure = interlock.Semaphore("profile", 2, url="memory://profile?native=0")
    lock = interlock.Lock("profile-lock", url="memory://profile")
    pure_lock = interlock.Lock("profile-lock", url="memory://profile?native=0")
    measured = {
        "interlock.Semaphore lease pair (measured)": ns("s.acquire().release()", {"s": sem}),
        "threading.Semaphore acquire/release": ns("s.acquire(); s.release()", {"s": threading.Semaphore(2)}),
        "threading.Lock acquire/release": ns("a(); r()", {"a": m.acquire, "r": m.release}),
    }
    native = {
        "Semaphore `with` pair, native": ns("with s: pass", {"s": sem}),
        "Semaphore `with` pair, pure Python (?native=0)": ns("with s: pass", {"s": pure}),
        "Semaphore lease pair, native": measured["interlock.Semaphore lease pair (measured)"],
        "Semaphore lease pair, pure Python (?native=0)": ns("s.acquire().release()", {"s": pure}),
        "Lock `with` pair, native": ns("with s: pass", {"s": lock}),
        "Lock `with` pair, pure Python (?native=0)": ns("with s: pass", {"s": pure_lock}),
        "threading.Semaphore `with`": ns("with s: pass", {"s": threading.Semaphore(2)}),
        "threading.Lock `with`": ns("with s: pass", {"s": threading.Lock()}),
    }
    # What the C path still pays per pair, measured from Python (each includes a little interpreter
    # overhead): the Lease (with the accelerator its fields live in the C LeaseBase struct, the grant
    # fills them directly, and its C finalizer returns at once unless the Lease is still held; here:
    # allocation, the finalizer check and deallocation), the clock, the holder record and the token
    # (two more objects), and the `with` protocol around two C methods with a C mutex pair.
    floor = {
        f"Lease ({Lease.__mro__[1].__name__}): allocation, finalizer check, dealloc": ns(
            "o = N(C); o._state = 1; del o", {"N": Lease.__new__, "C": Lease}),
        "hold-start clock (time.monotonic)": parts["hold-start clock (time.monotonic)"],
        "holder record + token objects (tuple, dict, int)": ns(
            "h[t] = (o, 1, 2.0, 'p'); h.pop(t)", {"h": holders, "o": m, "t": 1 << 40}),
    }
    try:
        from interlock._speedups import Mutex

        floor["`with` protocol + C mutex pair"] = ns("with x: pass", {"x": Mutex()})
    except ImportError:  # pragma: no cover - not built
        pass

    async def aio(n: int) -> float:
        s = asyncio.Semaphore(2)
        t0 = time.perf_counter()
        for _ in range(n):
            await s.acquire()
            s.release()
        return (time.perf_counter() - t0) / n * 1e9

    measured["asyncio.Semaphore acquire/release"] = min(asyncio.run(aio(NUMBER)) for _ in range(3))

    async def task_side(n: int) -> dict[str, float]:
        async def timed(body: Any) -> float:
            t0 = time.perf_counter()
            await body(n)
            return (time.perf_counter() - t0) / n * 1e9

        async def loop_lookup(k: int) -> None:
            g = asyncio._get_running_loop
            for _ in range(k):
                g()

        async def pair(k: int) -> None:
            for _ in range(k):
                (await sem.acquire_async()).release()

        async def with_(k: int) -> None:
            for _ in range(k):
                async with sem:
                    pass

        async def aio_with(k: int) -> None:
            s = asyncio.Semaphore(2)
            for _ in range(k):
                async with s:
                    pass

        async def empty(k: int) -> None:
            for _ in range(k):
                pass

        out: dict[str, float] = {}
        for _ in range(REPEAT):
            base = await timed(empty)
            for label, body in [("asyncio._get_running_loop() in a task", loop_lookup),
                                ("Semaphore `(await acquire_async()).release()`, native", pair),
                                ("Semaphore `async with`, native", with_),
                                ("asyncio.Semaphore `async with`", aio_with)]:
                out[label] = min(out.get(label, float("inf")), max(0.0, await timed(body) - base))
        return out

    tasks = asyncio.run(task_side(NUMBER // 4))

    print(f"# Ingredients of one uncontended acquire+release (ns), Python {sys.version.split()[0]}")
    for k, v in parts.items():
        print(f"  {k:58s} {v:7.0f}")
    print(f"  {'sum of ingredients (floor for this design in pure Python)':58s} {total:7.0f}")
    print()
    for k, v in measured.items():
        print(f"  {k:58s} {v:7.0f}")
    thr = measured["threading.Semaphore acquire/release"]
    print()
    print(f"  floor / threading.Semaphore = {total / thr:.2f}x (target 0.5x needs <= {0.5 * thr:.0f} ns)")
    print(f"  floor / asyncio.Semaphore   = {total / measured['asyncio.Semaphore acquire/release']:.2f}x")
    print(f"  floor / threading.Lock      = {total / measured['threading.Lock acquire/release']:.2f}x")

    print(f"\n# The same pairs with the native accelerator ({'built, in use' if accelerated() else 'NOT BUILT'})"
          " and without it")
    for k, v in native.items():
        print(f"  {k:58s} {v:7.0f}")
    tsw, tlw = native["threading.Semaphore `with`"], native["threading.Lock `with`"]
    print(f"\n  Semaphore `with`: native {native['Semaphore `with` pair, native'] / tsw:.2f}x, pure "
          f"{native['Semaphore `with` pair, pure Python (?native=0)'] / tsw:.2f}x threading.Semaphore (target 0.5x)")
    print(f"  Lock `with`:      native {native['Lock `with` pair, native'] / tlw:.2f}x, pure "
          f"{native['Lock `with` pair, pure Python (?native=0)'] / tlw:.2f}x threading.Lock (target 4x)")
    print("\n# What the native pair still pays for. Measured from Python, so each line also pays interpreter")
    print("# overhead that the C path does not (Lease.__new__ through its Python-level wrapper, bytecode")
    print("# for the record): upper bounds, whose sum exceeds the measured native pair.")
    for k, v in floor.items():
        print(f"  {k:58s} {v:7.0f}")
    print(f"  {'sum (upper bound)':58s} {sum(floor.values()):7.0f}")
    print(f"  {'measured: Semaphore `with` pair, native':58s} {native['Semaphore `with` pair, native']:7.0f}")
    print("\n# From a task (the C path looks the running loop up once per thread, not per call: on 3.10/3.11")
    print("# asyncio._get_running_loop() makes a getpid() system call whenever a loop runs)")
    for k, v in tasks.items():
        print(f"  {k:58s} {v:7.0f}")
    task_pair = tasks["Semaphore `(await acquire_async()).release()`, native"]
    print(f"  explicit pair / asyncio.Semaphore pair = "
          f"{task_pair / measured['asyncio.Semaphore acquire/release']:.2f}x, "
          f"`async with` / asyncio.Semaphore `async with` = "
          f"{tasks['Semaphore `async with`, native'] / tasks['asyncio.Semaphore `async with`']:.2f}x")

if __name__ == "__main__":
    main()

"""Where the time of an uncontended interlock acquire+release goes, next to the stdlib, in one run.

    python benchmarks/profile_fast_path.py

Each line times one ingredient the memory:// fast path must perform per acquire+release pair (a mutex
pair on acquire and one on release, a Lease object with a finalizer, a fencing token, the hold-start
clock reading, the holder record, the owner and acquire-site lookups, and the Python calls that connect
them), then compares their sum with the measured interlock pair and with threading.Semaphore and
asyncio.Semaphore. It is the evidence for the targets that pure Python cannot reach: the ingredients
alone cost more than half of a threading.Semaphore pair.
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
    measured = {
        "interlock.Semaphore lease pair (measured)": ns("s.acquire().release()", {"s": sem}),
        "threading.Semaphore acquire/release": ns("s.acquire(); s.release()", {"s": threading.Semaphore(2)}),
        "threading.Lock acquire/release": ns("a(); r()", {"a": m.acquire, "r": m.release}),
    }

    async def aio(n: int) -> float:
        s = asyncio.Semaphore(2)
        t0 = time.perf_counter()
        for _ in range(n):
            await s.acquire()
            s.release()
        return (time.perf_counter() - t0) / n * 1e9

    measured["asyncio.Semaphore acquire/release"] = min(asyncio.run(aio(NUMBER)) for _ in range(3))

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


if __name__ == "__main__":
    main()

"""In-process benchmark: interlock (memory://) against the standard library, in one run.

    python benchmarks/bench_local.py [--quick]

Measures, each as the best of several repetitions:
  * uncontended acquire+release pairs from a thread (Lock, Semaphore) and from a task (Semaphore),
    in both the explicit form (interlock: ``acquire().release()`` on the Lease) and the ``with`` form;
  * contended throughput: 8 threads (and 100 asyncio tasks) sharing 2 permits, each yielding inside its
    critical section, for a fixed wall time; per-worker fairness as max/min acquisitions.
Prints ns per pair, acquisitions per second and the ratios interlock / stdlib.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import threading
import time
import timeit
from collections.abc import Callable
from typing import Any

import interlock


def best_ns(stmt: str, env: dict[str, Any], number: int, repeat: int) -> float:
    empty = min(timeit.repeat("pass", number=number, repeat=repeat))
    t = min(timeit.repeat(stmt, globals=env, number=number, repeat=repeat))
    return max(0.0, t - empty) / number * 1e9


def async_best_ns(make: Callable[[int], Any], number: int, repeat: int) -> float:
    async def run() -> float:
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            await make(number)
            best = min(best, time.perf_counter() - t0)
        return best / number * 1e9

    return asyncio.run(run())


def uncontended(number: int, repeat: int) -> dict[str, float]:
    tl, ts = threading.Lock(), threading.Semaphore(2)
    il = interlock.Lock("bench-lock", url="memory://bench")
    isem = interlock.Semaphore("bench-sem", 2, url="memory://bench")
    r: dict[str, float] = {}
    r["threading.Lock acquire/release"] = best_ns("a(); r()", {"a": tl.acquire, "r": tl.release}, number, repeat)
    r["threading.Lock with"] = best_ns("with l: pass", {"l": tl}, number, repeat)
    r["interlock.Lock lease pair"] = best_ns("l.acquire().release()", {"l": il}, number, repeat)
    r["interlock.Lock with"] = best_ns("with l: pass", {"l": il}, number, repeat)
    r["threading.Semaphore acquire/release"] = best_ns("s.acquire(); s.release()", {"s": ts}, number, repeat)
    r["threading.Semaphore with"] = best_ns("with s: pass", {"s": ts}, number, repeat)
    r["interlock.Semaphore lease pair"] = best_ns("s.acquire().release()", {"s": isem}, number, repeat)
    r["interlock.Semaphore with"] = best_ns("with s: pass", {"s": isem}, number, repeat)

    async def aio_pair(n: int) -> None:
        s = asyncio.Semaphore(2)
        for _ in range(n):
            await s.acquire()
            s.release()

    async def aio_with(n: int) -> None:
        s = asyncio.Semaphore(2)
        for _ in range(n):
            async with s:
                pass

    async def il_pair(n: int) -> None:
        for _ in range(n):
            (await isem.acquire_async()).release()

    async def il_with(n: int) -> None:
        for _ in range(n):
            async with isem:
                pass

    async def empty(n: int) -> None:
        for _ in range(n):
            pass

    base = async_best_ns(empty, number, repeat)
    r["asyncio.Semaphore acquire/release"] = async_best_ns(aio_pair, number, repeat) - base
    r["asyncio.Semaphore async with"] = async_best_ns(aio_with, number, repeat) - base
    r["interlock.Semaphore task lease pair"] = async_best_ns(il_pair, number, repeat) - base
    r["interlock.Semaphore async with"] = async_best_ns(il_with, number, repeat) - base
    return r


def contended_threads(make: Callable[[], Any], workers: int, seconds: float) -> tuple[float, list[int]]:
    sem = make()
    counts = [0] * workers
    stop = threading.Event()
    start = threading.Barrier(workers + 1)

    def work(i: int) -> None:
        start.wait()
        n = 0
        while not stop.is_set():
            with sem:
                time.sleep(0)  # yield inside the critical section
            n += 1
        counts[i] = n

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return sum(counts) / elapsed, counts


def contended_tasks(make: Callable[[], Any], workers: int, seconds: float) -> tuple[float, list[int]]:
    async def main() -> tuple[float, list[int]]:
        sem = make()
        counts = [0] * workers
        stop = False

        async def work(i: int) -> None:
            while not stop:
                async with sem:
                    await asyncio.sleep(0)
                counts[i] += 1

        tasks = [asyncio.create_task(work(i)) for i in range(workers)]
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        stop = True
        await asyncio.gather(*tasks)
        return sum(counts) / (time.perf_counter() - t0), counts

    return asyncio.run(main())


def spread(counts: list[int]) -> float:
    return max(counts) / max(1, min(counts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = ap.parse_args()
    number, repeat, secs = (20_000, 3, 0.5) if args.quick else (200_000, 7, 3.0)

    print(f"# interlock {interlock.__version__} vs stdlib, Python {platform.python_version()} "
          f"on {platform.machine()} ({sys.platform})\n")
    r = uncontended(number, repeat)
    print("## Uncontended acquire+release (ns per pair, best of runs)")
    for k, v in r.items():
        print(f"  {k:42s} {v:9.0f}")

    def ratio(a: str, b: str) -> str:
        return f"{r[a] / r[b]:.2f}x"

    print("\n## Ratios (interlock / stdlib; lower is faster)")
    print(f"  Semaphore, thread, with       : {ratio('interlock.Semaphore with', 'threading.Semaphore with')}"
          "  (target <= 0.5x)")
    print(f"  Semaphore, thread, explicit   : "
          f"{ratio('interlock.Semaphore lease pair', 'threading.Semaphore acquire/release')}  (target <= 0.5x)")
    print(f"  Semaphore, task, async with   : "
          f"{ratio('interlock.Semaphore async with', 'asyncio.Semaphore async with')}  (target <= 1.0x)")
    print(f"  Semaphore, task, explicit     : "
          f"{ratio('interlock.Semaphore task lease pair', 'asyncio.Semaphore acquire/release')}  (target <= 1.0x)")
    print(f"  Lock, thread, with            : {ratio('interlock.Lock with', 'threading.Lock with')}  (target <= 4x)")
    print(f"  Lock, thread, explicit        : "
          f"{ratio('interlock.Lock lease pair', 'threading.Lock acquire/release')}  (target <= 4x)")

    print(f"\n## Contended: 8 threads share 2 permits, sleep(0) inside, {secs}s each")
    rows = []
    for label, make in [
        ("threading.Semaphore", lambda: threading.Semaphore(2)),
        ("interlock.Semaphore (fair)", lambda: interlock.Semaphore("c-thr", 2, url="memory://bench-c")),
    ]:
        tput, counts = contended_threads(make, 8, secs)
        rows.append((label, tput, counts))
        print(f"  {label:28s} {tput:10.0f} acq/s   per-worker max/min {spread(counts):8.2f}  "
              f"(min {min(counts)}, max {max(counts)})")
    print(f"  throughput ratio interlock/threading: {rows[1][1] / rows[0][1]:.2f}x (target >= 1.0x); "
          f"fairness max/min: {spread(rows[1][2]):.2f} (target <= 1.1)")

    print(f"\n## Contended: 100 tasks share 2 permits, sleep(0) inside, {secs}s each")
    arows = []
    for label, make in [
        ("asyncio.Semaphore", lambda: asyncio.Semaphore(2)),
        ("interlock.Semaphore (fair)", lambda: interlock.Semaphore("c-task", 2, url="memory://bench-c")),
    ]:
        tput, counts = contended_tasks(make, 100, secs)
        arows.append((label, tput, counts))
        print(f"  {label:28s} {tput:10.0f} acq/s   per-worker max/min {spread(counts):8.2f}")
    print(f"  throughput ratio interlock/asyncio: {arows[1][1] / arows[0][1]:.2f}x; "
          f"fairness max/min: {spread(arows[1][2]):.2f}")


if __name__ == "__main__":
    main()

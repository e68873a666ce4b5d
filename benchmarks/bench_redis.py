"""interlock's redis:// backend against the Python Redis lock libraries, in ONE run on ONE server.

Scenarios (ratios are to a redis-py PING measured in the same loop / just around the run):

* uncontended acquire+release, one client (PING timed alternately with each pair);
* forced handoff between 4 processes: the holder releases only once every other process has been
  blocked in acquire() for >= 300 us; latency = from just before the holder's release() call to the
  moment the next process's acquire() returns (perf_counter_ns: CLOCK_MONOTONIC, shared by the
  processes). For interlock it includes the releaser's encoding and send, the release script (which
  grants and PUBLISHes), the delivery to the waiter's subscription socket, the waiter process's
  wake-up, parse and Lease construction; it does not include the releaser reading its own reply.
  Its floor is therefore about one script round trip (>= 1 x PING), plus a process wake-up;
* tight loop, 4 processes: handoffs/acq = share of acquisitions that went to another process;
* 1,000 queued waiters on one semaphore across 4 processes (interlock only: the peers have no
  semaphore): served in queue order? Redis commands per second while they all wait (renewals);
* kill -> next grant: the holder is SIGKILLed 0.5-0.8 s after acquiring (lease/TTL 5 s).

Run: ``python benchmarks/bench_redis.py [--quick]``. Needs redis-server, redis-py, python-redis-lock,
pottery and sherlock (``pip install 'interlock[bench]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import signal
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import itertools

import redis

import interlock
from interlock.testing.servers import RedisServer

ns = time.perf_counter_ns
CTX = mp.get_context("fork")


# -- adapters: make(host, port, name, ttl) -> (acquire() -> handle, release(handle)) ------------------
def _client(host: str, port: int) -> redis.Redis:
    return redis.Redis(host=host, port=port, socket_timeout=None)


def interlock_impl(host: str, port: int, name: str, ttl: float) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    lock = interlock.Lock(name, url=f"redis://{host}:{port}/0?prefix=bench:&ttl={ttl}")
    return lock.acquire, lambda lease: lease.release()


def redispy_impl(sleep: float) -> Callable[..., Any]:
    def make(host: str, port: int, name: str, ttl: float) -> tuple[Callable[[], Any], Callable[[Any], None]]:
        r = _client(host, port)

        def acq() -> Any:
            lk = r.lock("rp:" + name, timeout=ttl, sleep=sleep, thread_local=False)
            lk.acquire()
            return lk

        return acq, lambda lk: lk.release()

    return make


def prl_impl(host: str, port: int, name: str, ttl: float) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    import redis_lock  # type: ignore[import-untyped]

    r = _client(host, port)

    def acq() -> Any:
        lk = redis_lock.Lock(r, "prl:" + name, expire=int(ttl))
        lk.acquire()
        return lk

    return acq, lambda lk: lk.release()


def pottery_impl(host: str, port: int, name: str, ttl: float) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    from pottery import Redlock

    r = _client(host, port)

    def acq() -> Any:
        lk = Redlock(key="pot:" + name, masters={r}, auto_release_time=ttl)
        lk.acquire()
        return lk

    return acq, lambda lk: lk.release()


def sherlock_impl(host: str, port: int, name: str, ttl: float) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    import sherlock  # type: ignore[import-untyped]

    r = _client(host, port)

    def acq() -> Any:
        lk = sherlock.RedisLock("sh:" + name, client=r, expire=int(ttl), timeout=3600)
        lk.acquire()
        return lk

    return acq, lambda lk: lk.release()


IMPLS: dict[str, Callable[..., Any]] = {
    "interlock": interlock_impl,
    "redis-py (sleep 0.1 s)": redispy_impl(0.1),
    "redis-py (sleep 1 ms)": redispy_impl(0.001),
    "python-redis-lock": prl_impl,
    "pottery": pottery_impl,
    "sherlock": sherlock_impl,
}


def ping_median(host: str, port: int, n: int = 500) -> float:
    r = _client(host, port)
    xs = []
    for _ in range(n):
        t = ns()
        r.ping()
        xs.append(ns() - t)
    return statistics.median(xs) / 1000


# -- 1. uncontended ------------------------------------------------------------------------------------
def _uncontended_child(impl: str, host: str, port: int, n: int, q: Any) -> None:
    acq, rel = IMPLS[impl](host, port, f"u-{os.getpid()}", 10.0)
    r = _client(host, port)
    for _ in range(50):
        rel(acq())
    pairs, pings = [], []
    for _ in range(n):
        t0 = ns()
        r.ping()
        t1 = ns()
        rel(acq())
        t2 = ns()
        pings.append(t1 - t0)
        pairs.append(t2 - t1)
    q.put((statistics.median(pairs) / 1000, statistics.median(pings) / 1000))


def uncontended(impl: str, host: str, port: int, n: int) -> tuple[float, float]:
    q = CTX.Queue()
    p = CTX.Process(target=_uncontended_child, args=(impl, host, port, n, q))
    p.start()
    res = q.get()
    p.join()
    return res  # type: ignore[no-any-return]


# -- 2. forced handoff & 3. tight loop -------------------------------------------------------------------
def _handoff_child(impl: str, host: str, port: int, name: str, idx: int, nproc: int, rounds: int,
                   waiting: Any, owner: Any, rel_t: Any, lats: Any, count: Any, stop: Any, barrier: Any) -> None:
    acq, rel = IMPLS[impl](host, port, name, 10.0)
    barrier.wait()
    while not stop.value:
        with waiting.get_lock():
            waiting.value += 1
        h = acq()
        t_acq = ns()
        with waiting.get_lock():
            waiting.value -= 1
        if stop.value:
            rel(h)
            break
        if rel_t.value:
            with count.get_lock():
                if count.value < rounds:
                    lats[count.value] = (t_acq - rel_t.value) / 1000
                    count.value += 1
                    if count.value >= rounds:
                        stop.value = 1
        owner.value = idx
        # release only once every other process has been blocked in acquire() for >= 300 us
        t_wait = None
        while not stop.value:
            if waiting.value >= nproc - 1:
                if t_wait is None:
                    t_wait = ns()
                elif ns() - t_wait >= 300_000:
                    break
            else:
                t_wait = None
        rel_t.value = ns()
        rel(h)
        while owner.value == idx and not stop.value:  # retry only after someone else acquired
            time.sleep(0.0001)


def forced_handoff(impl: str, host: str, port: int, rounds: int, cap: float = 10.0) -> tuple[list[float], bool]:
    nproc = 4
    waiting, owner, count, stop = CTX.Value("i", 0), CTX.Value("i", -1), CTX.Value("i", 0), CTX.Value("i", 0)
    rel_t = CTX.Value("q", 0, lock=False)
    lats = CTX.Array("d", rounds, lock=False)
    barrier = CTX.Barrier(nproc + 1)
    name = f"h-{random.randrange(1 << 30)}"
    ps = [CTX.Process(target=_handoff_child, args=(impl, host, port, name, i, nproc, rounds, waiting, owner,
                                                   rel_t, lats, count, stop, barrier)) for i in range(nproc)]
    for p in ps:
        p.start()
    barrier.wait()
    deadline = time.monotonic() + cap
    while not stop.value and time.monotonic() < deadline:
        time.sleep(0.05)
    capped = not stop.value
    stop.value = 1
    for p in ps:
        p.join(15)
        if p.is_alive():
            p.kill()
    return list(lats[: count.value]), capped


def _tight_child(impl: str, host: str, port: int, name: str, quota: int, log: Any, pos: Any, barrier: Any) -> None:
    acq, rel = IMPLS[impl](host, port, name, 10.0)
    barrier.wait()
    me = os.getpid()
    for _ in range(quota):
        h = acq()
        with pos.get_lock():
            log[pos.value] = me
            pos.value += 1
        rel(h)


def tight_loop(impl: str, host: str, port: int, quota: int) -> tuple[float, float]:
    nproc = 4
    log = CTX.Array("q", nproc * quota, lock=False)
    pos = CTX.Value("i", 0)
    barrier = CTX.Barrier(nproc + 1)
    name = f"t-{random.randrange(1 << 30)}"
    ps = [CTX.Process(target=_tight_child, args=(impl, host, port, name, quota, log, pos, barrier))
          for _ in range(nproc)]
    for p in ps:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    for p in ps:
        p.join(120)
    dt = time.perf_counter() - t0
    seq = list(log[: pos.value])
    handoffs = sum(1 for a, b in itertools.pairwise(seq) if a != b)
    return len(seq) / dt, handoffs / max(1, len(seq) - 1)


# -- 4. 1,000 queued waiters -------------------------------------------------------------------------
def _waiters_child(url: str, n: int, ready: Any, go: Any, out: Any) -> None:
    sem = interlock.Semaphore("many", 1, url=url)

    async def main() -> None:
        grants: list[tuple[int, str]] = []

        async def one(i: int) -> None:
            async with await sem.acquire_async(timeout=600) as lease:
                grants.append((lease.token, f"{os.getpid()}:{i}"))

        tasks = []
        for i in range(n):
            tasks.append(asyncio.create_task(one(i), name=f"w{i}"))
            await asyncio.sleep(0)
        ready.put(os.getpid())
        await asyncio.gather(*tasks)
        out.put(grants)

    asyncio.run(main())


def many_waiters(host: str, port: int, ttl: float, total: int = 1000, nproc: int = 4) -> dict[str, Any]:
    url = f"redis://{host}:{port}/0?prefix=bench-many-{random.randrange(1 << 30)}:&ttl={ttl}"
    sem = interlock.Semaphore("many", 1, url=url)
    gate = sem.acquire()
    ready, out = CTX.Queue(), CTX.Queue()
    ps = [CTX.Process(target=_waiters_child, args=(url, total // nproc, ready, None, out)) for _ in range(nproc)]
    for p in ps:
        p.start()
    while len(sem.statistics().waiters) < total:
        time.sleep(0.05)
    order = [(w.pid, w.owner) for w in sem.statistics().waiters]
    srv_r = _client(host, port)
    time.sleep(ttl)  # let every process settle into its steady state (renewals only)
    c0 = srv_r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    t0 = time.monotonic()
    time.sleep(2 * ttl)
    c1 = srv_r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    idle_rate = (c1 - c0) / (time.monotonic() - t0)
    t_start = time.monotonic()
    gate.release()
    grants: list[tuple[int, str]] = []
    for _ in ps:
        grants += out.get(timeout=600)
    served = time.monotonic() - t_start
    for p in ps:
        p.join(30)
    grants.sort()
    by_grant = [g[1] for g in grants]
    by_queue = [f"{pid}:{owner.split(chr(39))[1][1:]}" for pid, owner in order]
    return {"served": len(grants), "in_order": by_grant == by_queue, "idle_rate": idle_rate,
            "expected_renewals": nproc / (ttl / 3), "serve_s": served}


# -- 5. kill -> next grant -----------------------------------------------------------------------------
def _killed_holder(impl: str, host: str, port: int, name: str, ttl: float, ready: Any) -> None:
    acq, _ = IMPLS[impl](host, port, name, ttl)
    handle = acq()  # keep a reference: some libraries release in __del__
    ready.put(time.monotonic())
    time.sleep(3600)
    print(handle)


def _kill_waiter(impl: str, host: str, port: int, name: str, ttl: float, out: Any) -> None:
    acq, _rel = IMPLS[impl](host, port, name, ttl)
    acq()
    out.put(time.monotonic())


def kill_recovery(impl: str, host: str, port: int, ttl: float, rng: random.Random) -> float:
    name = f"k-{random.randrange(1 << 30)}"
    ready, out = CTX.Queue(), CTX.Queue()
    holder = CTX.Process(target=_killed_holder, args=(impl, host, port, name, ttl, ready))
    holder.start()
    ready.get(timeout=30)
    waiter = CTX.Process(target=_kill_waiter, args=(impl, host, port, name, ttl, out))
    waiter.start()
    time.sleep(rng.uniform(0.5, 0.8))
    killed = time.monotonic()
    os.kill(holder.pid, signal.SIGKILL)  # type: ignore[arg-type]
    holder.join()
    try:
        got = out.get(timeout=ttl + 10)
    except Exception:
        got = float("inf")
    waiter.join(5)
    if waiter.is_alive():
        waiter.kill()
    return float(got - killed)


# -----------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer samples")
    ap.add_argument("--seed", type=int, default=int(os.environ.get("INTERLOCK_SEED", "12345")))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    n_pairs, rounds, quota = (300, 100, 100) if args.quick else (2000, 300, 250)
    print(f"seed={args.seed}  python {sys.version.split()[0]}  redis-py {redis.__version__}")
    with RedisServer() as srv:
        host, port = srv.address
        print(f"server: {os.path.basename(srv.executable)} {srv.version} on {host}:{port} (no persistence)\n")
        rows: dict[str, dict[str, str]] = {k: {} for k in IMPLS}
        # 1. uncontended
        for impl in IMPLS:
            pair, ping = uncontended(impl, host, port, n_pairs)
            rows[impl]["uncontended"] = f"{pair:.0f} us ({pair / ping:.2f}x PING {ping:.0f})"
        # 2. forced handoff
        for impl in IMPLS:
            p0 = ping_median(host, port)
            lats, capped = forced_handoff(impl, host, port, rounds)
            p1 = ping_median(host, port)
            ping = (p0 + p1) / 2
            if lats:
                med = statistics.median(lats)
                rows[impl]["handoff"] = (f"{med:.0f} us ({med / ping:.2f}x PING {ping:.0f}), mean "
                                         f"{statistics.fmean(lats):.0f}, n={len(lats)}{' capped' if capped else ''}")
            else:
                rows[impl]["handoff"] = "no sample"
        # 3. tight loop
        for impl in IMPLS:
            rate, share = tight_loop(impl, host, port, quota)
            rows[impl]["tight"] = f"{rate:.0f} acq/s, handoffs/acq {share:.2f}"
        # 5. kill -> next grant
        for impl in IMPLS:
            if impl == "redis-py (sleep 1 ms)":
                continue
            dt = kill_recovery(impl, host, port, 5.0, rng)
            rows[impl]["kill"] = f"{dt:.2f} s"
        # 4. 1,000 waiters
        many = many_waiters(host, port, ttl=3.0)
    w = max(len(k) for k in IMPLS)
    print("| impl | uncontended acquire+release | forced handoff, 4 processes (median) | tight loop, 4 processes "
          "| kill -> next grant (TTL 5 s) |")
    print("|---|---|---|---|---|")
    for impl in IMPLS:
        r = rows[impl]
        print(f"| {impl:<{w}} | {r.get('uncontended', '-')} | {r.get('handoff', '-')} | {r.get('tight', '-')} | "
              f"{r.get('kill', '-')} |")
    print()
    print(f"1,000 queued waiters on one interlock Semaphore(1) across 4 processes (ttl 3 s): served "
          f"{many['served']}, in queue order: {many['in_order']}, all served in {many['serve_s']:.1f} s; "
          f"idle Redis scripts/s while queued: {many['idle_rate']:.2f} (renewals alone: "
          f"{many['expected_renewals']:.2f}/s)")


if __name__ == "__main__":
    main()

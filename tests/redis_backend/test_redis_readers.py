"""The subscription's one reader at a time (leader/follower): a waiting thread reads the grant channel
for the whole process and hands it on when it leaves (grant, timeout, broken connection). Histories are
checked (FIFO, every waiter served); the only time bounds are generous liveness bounds."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis

import interlock
from interlock.testing.servers import RedisServer
from redis_backend.helpers import url_for

pytestmark = [pytest.mark.servers]

LIVE = 30.0  # liveness bound (s): generous, never a latency assertion


def _wait_waiters(sem: interlock.Semaphore, n: int) -> None:
    deadline = time.monotonic() + LIVE
    while len(sem.statistics().waiters) < n:
        assert time.monotonic() < deadline, f"fewer than {n} waiters queued"
        time.sleep(0.005)


def _start_waiters(sem: interlock.Semaphore, timeouts: list[float | None], log: list[tuple[int, object]],
                   lock: threading.Lock) -> list[threading.Thread]:
    threads = []
    for i, timeout in enumerate(timeouts):
        def run(i: int = i, timeout: float | None = timeout) -> None:
            try:
                lease = sem.acquire(timeout=timeout)
            except interlock.AcquireTimeout as exc:
                with lock:
                    log.append((i, exc))
                return
            with lock:
                log.append((i, lease.token))
            lease.release()

        t = threading.Thread(target=run, name=f"w{i}", daemon=True)
        t.start()
        threads.append(t)
        _wait_waiters(sem, i + 1)  # queue order = thread index
    return threads


def test_reader_that_times_out_hands_the_subscription_on(redis_server: RedisServer, prefix: str) -> None:
    sem = interlock.Semaphore("r", 1, url=url_for(redis_server, prefix, ttl=5))
    gate = sem.acquire()
    log: list[tuple[int, object]] = []
    mx = threading.Lock()
    # w0 queues first, so it is the reader; it times out while the others wait behind it.
    threads = _start_waiters(sem, [0.3, None, None, None, None], log, mx)
    threads[0].join(LIVE)
    assert isinstance(dict(log)[0], interlock.AcquireTimeout)
    gate.release()
    for t in threads:
        t.join(LIVE)
        assert not t.is_alive(), "a waiter was never woken after the reader left"
    served = [(tok, i) for i, tok in log if not isinstance(tok, BaseException)]
    assert [i for _, i in sorted(served)] == [1, 2, 3, 4]  # FIFO, every one served


def test_threads_and_tasks_share_the_subscription(redis_server: RedisServer, prefix: str) -> None:
    url = url_for(redis_server, prefix, ttl=5)
    sem = interlock.Semaphore("m", 1, url=url)
    gate = sem.acquire()
    log: list[tuple[int, object]] = []
    mx = threading.Lock()
    threads = _start_waiters(sem, [None, None], log, mx)

    async def tasks() -> None:
        async def one(i: int) -> None:
            lease = await sem.acquire_async()
            with mx:
                log.append((i, lease.token))
            await lease.release_async()

        ts = []
        for i in (2, 3):
            ts.append(asyncio.create_task(one(i)))
            while len(sem.statistics().waiters) < i + 1:
                await asyncio.sleep(0.005)
        gate_release = asyncio.get_running_loop().run_in_executor(None, gate.release)
        await asyncio.wait_for(asyncio.gather(gate_release, *ts), LIVE)

    asyncio.run(tasks())
    for t in threads:
        t.join(LIVE)
        assert not t.is_alive()
    assert [i for _, i in sorted((tok, i) for i, tok in log)] == [0, 1, 2, 3]  # type: ignore[type-var]


def test_killed_subscription_while_a_thread_reads(redis_server: RedisServer, prefix: str) -> None:
    """CLIENT KILL of the subscription under a reading thread: it steps down, the subscriber thread
    reconnects and re-reads the queue, and every waiter is served."""
    sem = interlock.Semaphore("k", 1, url=url_for(redis_server, prefix, ttl=2))
    gate = sem.acquire()
    log: list[tuple[int, object]] = []
    mx = threading.Lock()
    threads = _start_waiters(sem, [None, None, None], log, mx)
    host, port = redis_server.address
    r = redis.Redis(host=host, port=port)
    assert r.client_kill_filter(_type="pubsub") >= 1
    gate.release()
    for t in threads:
        t.join(LIVE)
        assert not t.is_alive(), "a waiter was never served after the subscription was killed"
    assert [i for _, i in sorted((tok, i) for i, tok in log)] == [0, 1, 2]  # type: ignore[type-var]
    r.close()

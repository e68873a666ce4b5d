"""file:// across processes: exclusion, FIFO handoff, inspection, tokens across restarts, idle cost."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import interlock
from contract.helpers import wait_until
from file.helpers import Child, cpu_seconds


def test_statistics_show_who_holds_and_who_waits_in_order(url: str, children: list[Child]) -> None:
    holder = Child(url, """
        lease = interlock.Semaphore("db", 3, url=URL).acquire(2)
        say("held", lease.token)
        time.sleep(60)
    """)
    children.append(holder)
    token = int(holder.expect("held").split()[1])
    waiters = []
    sem = interlock.Semaphore("db", 3, url=url)
    for i in range(2):  # two waiters queue behind the holder, in this order
        w = Child(url, f"""
            import threading
            threading.current_thread().name = "waiter-{i}"
            say("waiting")
            interlock.Semaphore("db", 3, url=URL).acquire(2)
            say("granted")
        """)
        children.append(w)
        w.expect("waiting")
        wait_until(lambda n=i + 1: len(sem.statistics().waiters) == n, what=f"{i + 1} waiter(s)")
        waiters.append(w)
    st = sem.statistics()
    assert (st.kind, st.capacity, st.available, st.held) == ("semaphore", 3, 1, 2)
    (h,) = st.holders
    assert (h.pid, h.token, h.permits, h.mode) == (holder.pid, token, 2, "permits")
    assert h.host == socket.gethostname() and h.owner == "thread 'MainThread'"
    assert h.command is not None and "python" in h.command and h.held_for >= 0
    assert [w.pid for w in st.waiters] == [waiters[0].pid, waiters[1].pid]
    assert [w.owner for w in st.waiters] == ["thread 'waiter-0'", "thread 'waiter-1'"]
    assert st.last_token == token
    # Backend.status() reads the same state without opening a channel
    (s2,) = interlock.connect(url).status("db")
    assert [w.pid for w in s2.waiters] == [waiters[0].pid, waiters[1].pid]
    holder.kill()  # its 2 permits go to the head waiter, then (after it exits) to the next
    waiters[0].expect("granted")
    waiters[1].expect("granted")


def test_lock_handoff_is_fifo_across_processes(url: str, children: list[Child]) -> None:
    lock = interlock.Lock("fifo", url=url)
    lease = lock.acquire()
    order = []
    for i in range(4):
        c = Child(url, f"""
            say("waiting")
            with interlock.Lock("fifo", url=URL) as l:
                say("got", {i}, l.token)
        """)
        children.append(c)
        c.expect("waiting")
        wait_until(lambda n=i + 1: len(lock.statistics().waiters) == n, what="queued")
        order.append(c)
    lease.release()
    tokens = [int(c.expect("got").split()[2]) for c in order]
    assert tokens == sorted(tokens) and tokens[0] > lease.token, "served in queue order, tokens increasing"


def test_tokens_increase_across_restarts_and_a_lost_directory(url: str, tmp_path: object) -> None:
    def grant_in_new_process() -> int:
        c = Child(url, """
            with interlock.Lock("t", url=URL) as l:
                say("token", l.token)
        """)
        try:
            return int(c.expect("token").split()[1])
        finally:
            c.close()

    a = grant_in_new_process()
    b = grant_in_new_process()
    assert b > a
    # The counter starts at the wall-clock time in microseconds: losing the directory (a reboot of a
    # tmpfs) still never repeats a token.
    shutil.rmtree(url[len("file://"):])
    c = grant_in_new_process()
    assert c > b
    assert c > (time.time() - 3600) * 1e6


def test_signalling_semaphore_across_processes(url: str, children: list[Child]) -> None:
    ready = interlock.Semaphore("ready", 0, url=url, bounded=False)
    consumer = Child(url, """
        s = interlock.Semaphore("ready", 0, url=URL, bounded=False)
        say("waiting")
        lease = s.acquire(2)
        lease.forget()
        say("consumed")
    """)
    children.append(consumer)
    consumer.expect("waiting")
    wait_until(lambda: len(ready.statistics().waiters) == 1, what="consumer queued")
    ready.release()
    ready.release()
    consumer.expect("consumed")
    assert ready.capacity == 0


def test_rwlock_writer_excludes_readers_of_other_processes(url: str, children: list[Child]) -> None:
    rw = interlock.RWLock("cfg", url=url)
    w = rw.acquire_write()
    reader = Child(url, """
        rw = interlock.RWLock("cfg", url=URL)
        say("waiting")
        with rw.read() as l:
            say("reading", l.mode)
    """)
    children.append(reader)
    reader.expect("waiting")
    wait_until(lambda: len(rw.statistics().waiters) == 1, what="reader queued")
    w.downgrade()  # write -> read: the other reader may enter, no writer can
    assert reader.expect("reading").split()[1] == "shared"
    w.release()


def test_idle_waiter_uses_no_cpu(url: str, children: list[Child]) -> None:
    lock = interlock.Lock("idle", url=url)
    lease = lock.acquire()
    waiter = Child(url, """
        say("waiting")
        interlock.Lock("idle", url=URL).acquire()
        say("granted")
    """)
    children.append(waiter)
    waiter.expect("waiting")
    wait_until(lambda: len(lock.statistics().waiters) == 1, what="waiter queued")
    before = cpu_seconds(waiter.pid)
    time.sleep(1.0)
    used = cpu_seconds(waiter.pid) - before
    print(f"idle waiter CPU over 1 s: {used * 1000:.1f} ms")
    assert used < 0.05, "a waiter sleeps in the kernel; it does not poll"
    lease.release()
    waiter.expect("granted")


def test_many_waiters_grow_the_state_file_and_are_served_in_order(url: str) -> None:
    lock = interlock.Lock("big", url=url)
    lease = lock.acquire()
    served: list[int] = []
    n = 120

    def worker(i: int) -> None:
        with lock:
            served.append(i)

    threads = []
    for i in range(n):
        t = threading.Thread(target=worker, args=(i,))
        t.start()
        wait_until(lambda k=i + 1: len(lock.statistics().waiters) == k, what="queued")
        threads.append(t)
    size = os.path.getsize(lock.statistics().extra["file"])
    lease.release()
    for t in threads:
        t.join()
    assert served == list(range(n))
    assert size > 3 * 4096, "the state file grew to hold the queue"


def test_async_tasks_of_two_processes_share_one_queue(url: str, children: list[Child]) -> None:
    import asyncio

    other = Child(url, """
        import asyncio
        async def main():
            sem = interlock.Semaphore("mix", 2, url=URL)
            async def task(i):
                for _ in range(10):
                    async with sem:
                        await asyncio.sleep(0.001)
            await asyncio.gather(*(task(i) for i in range(6)))
        say("start")
        asyncio.run(main())
        say("done")
    """)
    children.append(other)
    other.expect("start")
    sem = interlock.Semaphore("mix", 2, url=url)
    peak = 0

    async def main() -> None:
        async def task() -> None:
            nonlocal peak
            for _ in range(10):
                async with sem:
                    peak = max(peak, sem.statistics().held)
                    await asyncio.sleep(0.001)

        await asyncio.gather(*(task() for _ in range(6)))

    asyncio.run(main())
    other.expect("done")
    assert peak <= 2
    assert sem.statistics().available == 2

"""Several processes, each with threads and asyncio tasks, hammer one weighted semaphore, one lock and one
read-write lock; every operation is recorded and the merged history is checked: at most N permits held,
one writer or many readers, tokens unique and increasing in real-time order, FIFO among waiters that
were blocked together, and every acquire served (marker ``stress``)."""

from __future__ import annotations

import pytest

from file.helpers import Child
from interlock.testing.history import check, check_fifo, check_liveness, check_rw, load_dir

pytestmark = pytest.mark.stress

WORKER = """
import asyncio, random, threading
from interlock.testing.history import Recorder
rec = Recorder({hist!r})
sem = interlock.Semaphore("sem", 4, url=URL)
lock = interlock.Lock("lock", url=URL)
rw = interlock.RWLock("rw", url=URL)
rnd = random.Random({seed} + os.getpid())
ROUNDS = {rounds}

def client(kind, i):
    return "%s-%d-%s%d" % ("p", os.getpid(), kind, i)

def thread_body(i):
    me = client("t", i)
    r = random.Random(rnd.random())
    for _ in range(ROUNDS):
        k = r.choice((1, 1, 2, 3, 4))
        with rec.acquire(me, "sem", permits=k) as op:
            lease = sem.acquire(k)
            op.token = lease.token
        time.sleep(r.uniform(0, 0.002))
        with rec.release(me, "sem", token=lease.token, permits=k):
            lease.release()
        with rec.acquire(me, "lock") as op:
            lease = lock.acquire()
            op.token = lease.token
        time.sleep(r.uniform(0, 0.001))
        with rec.release(me, "lock", token=lease.token):
            lease.release()
        mode = "read" if r.random() < 0.7 else "write"
        with rec.acquire(me, "rw", mode=mode) as op:
            lease = rw.acquire_read() if mode == "read" else rw.acquire_write()
            op.token = lease.token
        time.sleep(r.uniform(0, 0.001))
        with rec.release(me, "rw", token=lease.token, mode=mode):
            lease.release()

async def task_body(i):
    me = client("a", i)
    r = random.Random(rnd.random())
    for _ in range(ROUNDS):
        k = r.choice((1, 2, 3))
        with rec.acquire(me, "sem", permits=k) as op:
            lease = await sem.acquire_async(k)
            op.token = lease.token
        await asyncio.sleep(r.uniform(0, 0.002))
        with rec.release(me, "sem", token=lease.token, permits=k):
            await lease.release_async()
        with rec.acquire(me, "lock") as op:
            lease = await lock.acquire_async()
            op.token = lease.token
        await asyncio.sleep(0)
        with rec.release(me, "lock", token=lease.token):
            await lease.release_async()

async def tasks():
    await asyncio.gather(*(task_body(i) for i in range(3)))

say("go")
threads = [threading.Thread(target=thread_body, args=(i,)) for i in range(2)]
for t in threads:
    t.start()
asyncio.run(tasks())
for t in threads:
    t.join()
rec.close()
say("done")
"""


def test_mixed_processes_threads_and_tasks_keep_every_guarantee(
        url: str, tmp_path: object, seed: int, children: list[Child]) -> None:
    hist = str(tmp_path) + "/history"  # type: ignore[operator]
    procs = [Child(url, WORKER.format(hist=hist, seed=seed, rounds=25)) for _ in range(3)]
    children.extend(procs)
    for p in procs:
        p.expect("go")
    for p in procs:
        p.expect("done", timeout=120)
    events = load_dir(hist)
    grants = [e for e in events if e.op == "acquire" and e.ok]
    assert len(grants) == 3 * (2 * 25 * 3 + 3 * 25 * 2)
    sem_lock = [e for e in events if e.name in ("sem", "lock")]
    assert check(sem_lock, capacity={"sem": 4, "lock": 1}) == []
    assert check_rw([e for e in events if e.name == "rw"]) == []
    # FIFO among waiters blocked together; a few milliseconds of slack for the time between a
    # recorded start and the request reaching the queue in another process on a loaded machine.
    assert check_fifo(sem_lock, capacity={"sem": 4, "lock": 1}, slack=0.01) == []
    assert check_liveness(events) == []

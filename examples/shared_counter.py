"""A shared counter under a Lock: 100 threads each add 1; the total ends at exactly 100.

    python examples/shared_counter.py [URL]      # default memory://

Each increment is a read, a pause (which invites a lost update without the lock) and a write.
"""

from __future__ import annotations

import sys
import threading
import time

import interlock


def main(url: str) -> int:
    lock = interlock.Lock("example-counter", url=url)
    counter = {"value": 0}

    def add_one() -> None:
        with lock:
            seen = counter["value"]
            time.sleep(0.0005)
            counter["value"] = seen + 1

    threads = [threading.Thread(target=add_one) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"counter = {counter['value']} (expected 100)")
    return 0 if counter["value"] == 100 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "memory://"))

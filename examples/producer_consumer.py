"""Producer/consumer over a bounded buffer with two signalling semaphores (empty slots, filled slots).

    python examples/producer_consumer.py [URL]

Three producers put 200 numbered items each, three consumers take them; every item arrives exactly once
and the buffer never holds more than its 5 slots.
"""

from __future__ import annotations

import collections
import sys
import threading

import interlock

SLOTS, PRODUCERS, CONSUMERS, PER_PRODUCER = 5, 3, 3, 200


def main(url: str) -> int:
    empty = interlock.Semaphore("example-empty", SLOTS, url=url, bounded=False)
    filled = interlock.Semaphore("example-filled", 0, url=url, bounded=False)
    buf: collections.deque[int] = collections.deque()
    guard = threading.Lock()
    got: list[int] = []
    peak = 0
    total = PRODUCERS * PER_PRODUCER

    def produce(p: int) -> None:
        nonlocal peak
        for i in range(PER_PRODUCER):
            empty.acquire(timeout=30).forget()  # P(empty): take a free slot
            with guard:
                buf.append(p * PER_PRODUCER + i)
                peak = max(peak, len(buf))
            filled.release()  # V(filled)

    def consume(share: int) -> None:
        for _ in range(share):
            filled.acquire(timeout=30).forget()  # P(filled)
            with guard:
                got.append(buf.popleft())
            empty.release()  # V(empty)

    shares = [total // CONSUMERS] * CONSUMERS
    threads = [threading.Thread(target=produce, args=(p,)) for p in range(PRODUCERS)]
    threads += [threading.Thread(target=consume, args=(s,)) for s in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = sorted(got) == list(range(total)) and peak <= SLOTS
    print(f"{len(got)} items consumed, {len(set(got))} distinct (expected {total}); buffer peak {peak} <= {SLOTS}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "memory://"))

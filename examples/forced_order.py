"""Forcing two threads into an order with a signalling semaphore that starts at 0.

    python examples/forced_order.py [URL]

Thread B must print after thread A, whichever starts first: B waits on `a_done`, A releases it (V
without a prior P is what signalling mode, bounded=False, is for).
"""

from __future__ import annotations

import sys
import threading

import interlock


def main(url: str) -> int:
    a_done = interlock.Semaphore("example-a-done", 0, url=url, bounded=False)
    order: list[str] = []

    def a() -> None:
        order.append("A")
        a_done.release()

    def b() -> None:
        a_done.acquire(timeout=10).forget()  # consume the signal
        order.append("B")

    tb = threading.Thread(target=b)
    tb.start()  # B starts first on purpose
    ta = threading.Thread(target=a)
    ta.start()
    ta.join()
    tb.join()
    print("order:", " then ".join(order))
    return 0 if order == ["A", "B"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "memory://"))

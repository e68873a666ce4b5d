"""At most N at once: 10 asyncio tasks, never more than 3 inside the semaphore.

    python examples/at_most_n_tasks.py [URL]
"""

from __future__ import annotations

import asyncio
import sys

import interlock


async def run(url: str) -> int:
    sem = interlock.Semaphore("example-at-most-3", 3, url=url)
    inside = 0
    peak = 0
    done = 0

    async def job(i: int) -> None:
        nonlocal inside, peak, done
        async with sem:
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.02)
            inside -= 1
            done += 1

    await asyncio.gather(*(job(i) for i in range(10)))
    print(f"{done} tasks done, at most {peak} at once (limit 3)")
    return 0 if done == 10 and peak <= 3 else 1


def main(url: str) -> int:
    return asyncio.run(run(url))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "memory://"))

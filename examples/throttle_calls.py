"""Throttling outbound API calls: 50 asyncio requests, at most 4 in flight against a fake API that
counts its concurrent calls.

    python examples/throttle_calls.py [URL]
"""

from __future__ import annotations

import asyncio
import sys

import interlock

LIMIT = 4


class FakeAPI:
    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.calls = 0

    async def get(self, i: int) -> int:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(0.005)
        self.in_flight -= 1
        self.calls += 1
        return i * i


async def run(url: str) -> int:
    api = FakeAPI()
    throttle = interlock.Semaphore("example-throttle", LIMIT, url=url)

    async def call(i: int) -> int:
        async with throttle:
            return await api.get(i)

    results = await asyncio.gather(*(call(i) for i in range(50)))
    print(f"{api.calls} calls, at most {api.peak} in flight (limit {LIMIT})")
    return 0 if results == [i * i for i in range(50)] and api.peak <= LIMIT else 1


def main(url: str) -> int:
    return asyncio.run(run(url))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "memory://"))

"""Fixtures for the Redis backend tests: one redis-server per session (tests that break their server
start their own), a fresh key prefix per test, child processes that are always reaped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("redis", minversion="5")

from interlock.testing.servers import RedisServer
from redis_backend.helpers import Child, new_prefix


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def prefix() -> str:
    return new_prefix()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    made: list[Child] = []
    yield made
    for c in made:
        c.kill()

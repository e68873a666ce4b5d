from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from file.helpers import Child

if not sys.platform.startswith("linux"):
    pytest.skip("the file:// process tests use Linux /proc", allow_module_level=True)


@pytest.fixture
def url(tmp_path: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh file:// directory; afterwards, the files of processes that died in it are removed."""
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

"""Contract-suite fixtures: every test runs on every backend of tests/backends.py (``backend_url``);
tests that take ``actors`` also run with thread owners, task owners and a mix of both."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from contract.helpers import Actors, actors_cm


@pytest.fixture(params=["thread", "task", "mixed"])
def actors(request: pytest.FixtureRequest) -> Iterator[Actors]:
    """Owners that run commands: threads, asyncio tasks, or both alternating in one queue."""
    yield from actors_cm(request.param)

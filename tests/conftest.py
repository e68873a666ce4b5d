from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from backends import BACKENDS


def pytest_report_header(config: pytest.Config) -> str:
    return f"interlock backends under contract: {', '.join(BACKENDS)}"


@pytest.fixture(params=sorted(BACKENDS))
def backend_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh namespace URL on every backend in tests/backends.py."""
    with BACKENDS[request.param](tmp_path_factory) as url:
        yield url


@pytest.fixture
def seed() -> int:
    """A random seed, printed so a failing randomized test can be replayed (INTERLOCK_SEED=...)."""
    value = int(os.environ.get("INTERLOCK_SEED", random.randrange(1 << 32)))
    print(f"seed={value} (replay with INTERLOCK_SEED={value})")
    return value

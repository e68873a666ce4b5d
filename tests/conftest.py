from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from backends import BACKENDS


def pytest_report_header(config: pytest.Config) -> str:
    return f"interlock backends under contract: {', '.join(BACKENDS)}"


def pytest_configure(config: pytest.Config) -> None:
    # One pytest process opens a backend per contract test (a fresh namespace each: a file:// directory
    # with its process files, a redis:// connection pool and subscription) and keeps it until exit, as
    # a long-running program keeps its backends: the full suite reaches ~3 000 descriptors, past the
    # usual soft limit of 1 024 on a fresh machine. Raise the soft limit up to the hard one.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


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

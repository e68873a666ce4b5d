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

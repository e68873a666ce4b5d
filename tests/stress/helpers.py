"""Shared knobs for the stress tests.

``INTERLOCK_STRESS`` scales every stress test (default 1: a quick CI run of a few seconds each;
``INTERLOCK_STRESS=20`` for a long soak). Every randomized test takes the ``seed`` fixture, which prints
the seed; ``INTERLOCK_SEED=<n>`` replays one run.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def scale() -> float:
    try:
        return max(0.05, float(os.environ.get("INTERLOCK_STRESS", "1")))
    except ValueError:
        return 1.0


def scaled(n: int) -> int:
    return max(1, int(n * scale()))


def call_with_timeout(fn: Callable[[], T], timeout: float) -> T:
    """Run ``fn`` in a helper thread; fail (instead of hanging the suite) if it does not return in time,
    e.g. because a primitive's internal mutex was left locked."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append((True, fn()))
        except BaseException as exc:  # reported below
            out.append((False, exc))

    t = threading.Thread(target=run, name="stress-probe", daemon=True)
    t.start()
    t.join(timeout)
    if not out:
        raise AssertionError(f"{fn!r} did not return within {timeout}s: the primitive is wedged")
    ok, value = out[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]

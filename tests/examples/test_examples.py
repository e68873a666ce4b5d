"""Every example of DESIGN.md §1 runs on every backend in tests/backends.py and proves its invariant
(each script exits non-zero when its invariant fails, and prints what it saw)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.py"))


def test_every_scenario_has_an_example() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {
        "shared_counter", "at_most_n_tasks", "forced_order", "connection_pool", "producer_consumer",
        "throttle_calls", "raise_without_finally",
    } <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example(example: Path, backend_url: str) -> None:
    env = dict(os.environ, PYTHONWARNINGS="ignore::ResourceWarning")
    proc = subprocess.run(
        [sys.executable, str(example), backend_url], check=False, capture_output=True, text=True, timeout=120, env=env
    )
    print(proc.stdout)
    assert proc.returncode == 0, f"{example.name} on {backend_url}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr

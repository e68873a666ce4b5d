"""The optional native accelerator of memory:// (``interlock._speedups``) and its pure-Python twin.

The whole contract suite runs on both ("memory" and "memory-pure" in tests/backends.py); these tests
check that the accelerator is built and in use where it can be, that ``?native=0`` selects the twin,
and that both produce the same states from the same random operations.
"""

from __future__ import annotations

import gc
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest

import interlock
from interlock.backends import memory

ROOT = Path(__file__).resolve().parents[2]


def _compiler_available() -> bool:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None and bool(sysconfig.get_config_var("INCLUDEPY"))


def _free_threaded() -> bool:
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


needs_build = pytest.mark.skipif(not _compiler_available() or _free_threaded(),
                                 reason="no C compiler here, or a free-threaded build: pure Python is used")
pure_by_env = os.environ.get("INTERLOCK_NATIVE", "1").lower() in ("0", "false", "no")


@needs_build
def test_accelerator_is_built_and_in_use() -> None:
    assert memory.accelerated(), "interlock._speedups was not built by the install (see setup.py)"
    if pure_by_env:
        pytest.skip("INTERLOCK_NATIVE=0: memory:// backends use the pure-Python twin")
    from interlock import _primitives, _speedups

    backend: Any = interlock.connect(f"memory://native-{uuid.uuid4().hex}")
    assert backend.native
    sem = interlock.Semaphore("n", 2, backend=backend)
    assert isinstance(sem._ch, _speedups.ChannelState)
    assert isinstance(sem._ch._mutex, _speedups.Mutex)
    assert _primitives.accelerated
    # The facade entry points are the C methods (method descriptors), RLock keeps the Python ones.
    for cls, name in [(interlock.Semaphore, "__enter__"), (interlock.Semaphore, "__aenter__"),
                      (interlock.Lock, "__enter__"), (interlock.Lock, "acquire")]:
        assert type(cls.__dict__[name]).__name__ == "method_descriptor", (cls, name)
    assert callable(interlock.RLock.__dict__["__enter__"])
    assert type(interlock.RLock.__dict__["__enter__"]).__name__ == "function"


def test_native_0_selects_the_pure_twin() -> None:
    backend: Any = interlock.connect(f"memory://pure-{uuid.uuid4().hex}?native=0")
    assert not backend.native
    sem = interlock.Semaphore("p", 2, backend=backend)
    assert type(sem._ch) is memory.PureMemoryChannel
    with sem as lease:
        assert lease.held and sem.statistics().available == 1
    assert sem.statistics().available == 2
    lock = interlock.Lock("l", backend=backend)
    with lock:
        assert lock.locked()
    assert not lock.locked()


@pytest.mark.parametrize("value", ["maybe", "2", ""])
def test_bad_native_option_is_a_typed_error(value: str) -> None:
    with pytest.raises(interlock.InvalidArgument, match="native"):
        memory.MemoryBackend(f"memory://bad?native={value}")


def _run_ops(url: str, seed: int) -> list[Any]:
    """A random sequence of uncontended operations; returns what an observer can see after each."""
    rng = random.Random(seed)
    sem = interlock.Semaphore("twin", 4, url=url)
    lock = interlock.Lock("twin-lock", url=url)
    held: list[interlock.Lease] = []
    trace: list[Any] = []
    last_token = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        for _ in range(300):
            # No Lease may survive in a local from the previous step: "drop" must really drop it.
            lease = got = None
            op = rng.randrange(7)
            if op == 0:
                lease = sem.try_acquire(rng.randint(1, 3))
                if lease is not None:
                    held.append(lease)
                trace.append(("try", lease is not None and lease.permits,
                              lease is not None and lease.previous_owner_died))
            elif op == 1 and held:
                held.pop(rng.randrange(len(held))).release()
                trace.append(("release",))
            elif op == 2 and held:
                held.pop(rng.randrange(len(held)))  # dropped while held: returned by its finalizer
                gc.collect()
                interlock._core.reaper.drain()
                trace.append(("drop",))
            elif op == 3 and sem.statistics().available >= 1:  # `with` would block otherwise
                with sem as lease:
                    trace.append(("with", lease.permits, lease.previous_owner_died))
            elif op == 4:
                got = lock.acquire(blocking=False) if rng.random() < 0.5 else None
                if got is not None:
                    trace.append(("lock", got.previous_owner_died))
                    lock.release()
                else:
                    with lock as got:
                        trace.append(("lock-with", got.previous_owner_died))
            elif op == 5 and sem.statistics().available >= 1 and not sem.statistics().waiters:
                lease = sem.acquire(1)
                held.append(lease)
                trace.append(("acquire", lease.permits))
            else:
                trace.append(("noop",))
            s = sem.statistics()
            if s.last_token is not None:
                assert s.last_token >= last_token
                last_token = s.last_token
            trace.append((s.available, sorted(h.permits for h in s.holders), len(s.waiters),
                          lock.statistics().available))
        for lease in held:
            lease.release()
    s = sem.statistics()
    # (tokens and hold times differ between runs: compare what the twins must agree on)
    trace.append(("end", s.available, sorted((h.permits, h.mode) for h in s.holders)))
    return trace


def test_twins_produce_the_same_states(seed: int) -> None:
    tag = uuid.uuid4().hex
    native = _run_ops(f"memory://twin-{tag}", seed)
    pure = _run_ops(f"memory://twin-{tag}?native=0", seed)
    assert native == pure
    assert native[-1] == ("end", 4, [])


def test_tokens_strictly_increase_across_both_paths() -> None:
    """The C fast path and the Python slow path of one channel draw from one counter."""
    url = f"memory://tok-{uuid.uuid4().hex}"
    sem = interlock.Semaphore("tok", 1, url=url)
    tokens: list[int] = []
    first = sem.acquire()
    tokens.append(first.token)
    got: list[int] = []

    def waiter() -> None:  # granted by the Python handoff (_wake_granted -> _grant_locked)
        with sem.acquire(timeout=30) as lease:
            got.append(lease.token)

    t = threading.Thread(target=waiter)
    t.start()
    while not sem.statistics().waiters:
        threading.Event().wait(0.001)
    first.release()
    t.join(30)
    tokens.extend(got)
    with sem as lease:  # the C fast path again
        tokens.append(lease.token)
    assert len(tokens) == 3 and tokens == sorted(set(tokens)), tokens


@needs_build
def test_native_mutex() -> None:
    from interlock import _speedups

    m = _speedups.Mutex()
    assert not m.locked()
    assert m.acquire()
    assert m.locked()
    assert m.acquire(False) is False
    m.release()
    with pytest.raises(RuntimeError):
        m.release()
    with m:
        assert m.locked()
        done = threading.Event()

        def other() -> None:
            with m:
                done.set()

        t = threading.Thread(target=other)
        t.start()
        assert not done.wait(0.05)
    t.join(30)
    assert done.is_set() and not m.locked()
    with pytest.raises(TypeError):
        _speedups.Mutex(1)  # type: ignore[call-arg]


@needs_build
def test_ready_awaitables_of_async_with() -> None:
    """``async with sem`` on the C path returns plain awaitables that complete at once."""
    import asyncio

    sem = interlock.Semaphore("aw", 1, url=f"memory://aw-{uuid.uuid4().hex}")

    async def main() -> None:
        async with sem as lease:
            assert lease.held and lease.owner is asyncio.current_task()
            assert sem.statistics().available == 0
        assert sem.statistics().available == 1
        # nested blocks of one task, and an exception through the block
        async with sem, interlock.Semaphore("aw2", 2, url=sem.backend.url):
            pass
        with pytest.raises(KeyError):
            async with sem:
                raise KeyError
        assert sem.statistics().available == 1

    asyncio.run(main())


@pytest.mark.slow
@needs_build
def test_setup_builds_the_extension(tmp_path: Path) -> None:
    """The build configuration (setup.py, used by ``pip install .`` and ``pip install -e .``) compiles
    the accelerator here, warning-free. (pip builds it in an isolated environment that brings its own
    setuptools; this test needs setuptools installed.)"""
    pytest.importorskip("setuptools")
    lib, tmp = tmp_path / "lib", tmp_path / "tmp"
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(lib), "--build-temp", str(tmp),
         "--force"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warning:" not in proc.stderr.replace("SetuptoolsDeprecationWarning", ""), proc.stderr[-2000:]
    built = [p for p in (lib / "interlock").iterdir() if p.name.startswith("_speedups")]
    assert len(built) == 1 and built[0].suffix in (".so", ".pyd"), built


@needs_build
def test_file_accelerator_is_built() -> None:
    """The file:// C twin's tests skip where it is not built; this one fails instead wherever a
    compiler is available, so a broken build cannot silently turn CI into a pure-Python run."""
    from interlock.backends import file

    try:
        import interlock.backends.file._fastfile  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"interlock.backends.file._fastfile was not built by the install (see setup.py): {exc}")
    if os.environ.get("INTERLOCK_FILE_NATIVE", "1").lower() not in ("0", "false", "no"):
        assert file.accelerated()

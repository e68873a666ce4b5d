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


# -- the Lease's C core (LeaseBase) and its pure twin (_PyLeaseBase) --------------------------------

_LEASE_SCRIPT = r'''
import copy, gc, json, pickle, sys, warnings, weakref
if sys.argv[1] == "pure":
    sys.modules["interlock._speedups"] = None  # as if the accelerator were not built
import interlock
from interlock import _lease
from interlock._lease import Lease

out = {"base": Lease.__mro__[1].__name__}
bare = Lease.__new__(Lease)  # what file:// and the pure memory:// grant start from
out["defaults"] = [bare._state, bare._deadline, bare._lost_callbacks, bare._lost_reason,
                   bare.previous_owner_died, bare.backend_data, bare._death_cb]
bare._state = 1  # released: its finalizer must do nothing
del bare
sem = interlock.Semaphore("twin", 2, url="memory://lease-twin")
calls = []
real = Lease._on_garbage_collected
Lease._on_garbage_collected = lambda self: (calls.append(self.token), real(self))[1]
lease = sem.acquire()
ref = weakref.ref(lease)
out["weakref"] = ref() is lease
refusals = []
for f in (copy.copy, copy.deepcopy, pickle.dumps):
    try:
        f(lease)
    except TypeError:
        refusals.append(f.__name__)
out["refused"] = refusals
out["repr"] = repr(lease).split(" token=")[0]
lease.release()
out["released_repr"] = repr(lease).rsplit(" ", 1)[1]
del lease
gc.collect()
out["finalizer_calls_after_release"] = len(calls)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    dropped = sem.acquire(2)
    token = dropped.token
    del dropped
    gc.collect()
    interlock._core.reaper.drain()
out["finalizer_calls_after_drop"] = calls == [token]
out["warned"] = [w.category.__name__ for w in caught]
out["available"] = sem.statistics().available
nxt = sem.acquire()
out["next_previous_owner_died"] = nxt.previous_owner_died
nxt.release()
# a held Lease in a reference cycle is finalized once, by the cyclic collector
cyc = sem.acquire()
cyc.backend_data = [cyc]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    del cyc
    gc.collect()
    interlock._core.reaper.drain()
out["cycle_returned"] = sem.statistics().available
# file:// and redis:// build leases through Lease(...) and attribute stores
other = Lease(sem._ch, 99, 1, None, None, "permits", True)
other.backend_data = "rid"
other._deadline = 1.5
out["init"] = [other.token, other.previous_owner_died, other.backend_data, other._deadline,
               isinstance(other, interlock.Lease)]
other._state = 1
print(json.dumps(out))
'''


def _lease_facts(twin: str) -> dict[str, Any]:
    import json

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, "-c", _LEASE_SCRIPT, twin], capture_output=True, text=True,
                          timeout=120, check=False, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts: dict[str, Any] = json.loads(proc.stdout)
    return facts


def test_lease_twins_behave_alike() -> None:
    """The Lease made on the pure base and the one made on the C LeaseBase agree on every field
    default, weak references, refusing copies, repr, and the leak path (run once, only while held)."""
    pure = _lease_facts("pure")
    assert pure.pop("base") == "_PyLeaseBase"
    assert pure == {
        "defaults": [0, None, None, None, False, None, None],
        "weakref": True,
        "refused": ["copy", "deepcopy", "dumps"],
        "repr": "<interlock.Lease semaphore 'twin'",
        "released_repr": "released>",
        "finalizer_calls_after_release": 0,
        "finalizer_calls_after_drop": True,
        "warned": ["ResourceWarning"],
        "available": 2,
        "next_previous_owner_died": True,
        "cycle_returned": 2,
        "init": [99, True, "rid", 1.5, True],
    }
    if _compiler_available() and not _free_threaded():
        native = _lease_facts("native")
        assert native.pop("base") == "LeaseBase"
        assert native == pure


@needs_build
def test_lease_c_methods_fall_back_to_python() -> None:
    """Lease.release/__exit__ are C on native channels; lost leases and other channels reach the
    Python methods (LeaseLost is raised, a pure channel releases through its own code)."""
    from interlock._lease import Lease

    assert type(Lease.__dict__["release"]).__name__ == "method_descriptor"
    assert "idempotent" in (Lease.release.__doc__ or "")
    for url in (f"memory://fb-{uuid.uuid4().hex}", f"memory://fb-{uuid.uuid4().hex}?native=0"):
        sem = interlock.Semaphore("fb", 1, url=url)
        lease = sem.acquire()
        lease.release()
        lease.release()  # idempotent
        assert sem.statistics().available == 1
        with sem.acquire() as inner:
            assert inner.__enter__() is inner
        assert sem.statistics().available == 1
        lost = sem.acquire()
        lost._set_lost("test")
        with pytest.raises(interlock.LeaseLost):
            lost.release()
        with pytest.raises(interlock.LeaseLost):
            lost.__exit__(None, None, None)
        sem._ch.release(lost, 1)  # give the permit back for the next round


# -- Semaphore.acquire_async: the C coroutine twin -----------------------------------------------------

@needs_build
def test_acquire_async_is_a_lazy_coroutine_twin() -> None:
    import asyncio

    sem = interlock.Semaphore("aa", 1, url=f"memory://aa-{uuid.uuid4().hex}")

    async def main() -> None:
        aw = sem.acquire_async()
        assert type(aw).__name__ == "Acquire" and asyncio.iscoroutine(aw)
        assert sem.statistics().available == 1, "nothing is granted before the first await"
        lease = await aw
        assert lease.held and lease.owner is asyncio.current_task()
        with pytest.raises(RuntimeError):
            await aw  # like a coroutine, it runs once
        # contended: the Python coroutine waits in the queue, create_task() accepts the twin
        task = asyncio.create_task(sem.acquire_async())
        await asyncio.sleep(0.01)
        assert len(sem.statistics().waiters) == 1 and not task.done()
        lease.release()
        second = await asyncio.wait_for(task, 30)
        assert second.held and sem.statistics().available == 0
        # cancelled while queued: no grant left behind
        waiting = asyncio.create_task(sem.acquire_async())
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        second.release()
        assert sem.statistics().available == 1 and not sem.statistics().waiters
        # thrown into or closed before it started (a task cancelled before its first step): no grant
        unstarted = sem.acquire_async()
        with pytest.raises(KeyError):
            unstarted.throw(KeyError("x"))
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            sem.acquire_async().close()  # closed: no warning, as for a coroutine
        with pytest.warns(RuntimeWarning, match="never awaited"):
            sem.acquire_async()
            gc.collect()
        never = asyncio.create_task(sem.acquire_async())
        never.cancel()
        with pytest.raises(asyncio.CancelledError):
            await never
        assert sem.statistics().available == 1
        # send()/iteration from Python: the lease comes back in StopIteration, as from a coroutine
        manual = sem.acquire_async()
        with pytest.raises(StopIteration) as stop:
            manual.send(None)
        stop.value.value.release()
        # arguments the C path does not take run the Python method
        with await sem.acquire_async(1, timeout=5):
            assert sem.statistics().available == 0
        with pytest.raises(interlock.InvalidArgument):
            await sem.acquire_async(2)
        assert sem.statistics().available == 1

    asyncio.run(main())


@needs_build
def test_task_owner_follows_the_loop_across_threads() -> None:
    """The C lookup of the running task remembers each thread's running loop: a loop that moves to
    another thread, and a thread whose loop stopped, must still get the right owner."""
    import asyncio

    sem = interlock.Semaphore("own", 2, url=f"memory://own-{uuid.uuid4().hex}")
    loop = asyncio.new_event_loop()

    def current() -> Any:
        return asyncio.current_task() if asyncio._get_running_loop() is not None else None

    async def owner_of_grant() -> Any:
        lease = await sem.acquire_async()
        lease.release()
        async with sem as inner:
            assert inner.owner is lease.owner
        return lease.owner, current()

    try:
        got, task = loop.run_until_complete(owner_of_grant())
        assert got is task
        seen: list[Any] = []
        t = threading.Thread(target=lambda: seen.append(loop.run_until_complete(owner_of_grant())))
        t.start()
        t.join(30)
        assert seen and seen[0][0] is seen[0][1]
        # this thread runs no loop now: a coroutine driven by hand is owned by the thread
        coro = owner_of_grant()
        with pytest.raises(StopIteration) as stop:
            coro.send(None)
        owner, current = stop.value.value
        assert current is None and type(owner).__name__ == "ThreadOwner"
    finally:
        loop.close()


@needs_build
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_task_owner_after_fork_is_the_thread() -> None:
    """A child forked inside a task asks asyncio again (no running loop there), like the twin."""
    import asyncio

    sem = interlock.Semaphore("fork", 2, url=f"memory://fork-{uuid.uuid4().hex}")

    async def main() -> str:
        (await sem.acquire_async()).release()  # the parent's thread now remembers this loop
        r, w = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads (3.12+)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                lease = await sem.acquire_async()
                os.write(w, type(lease.owner).__name__.encode())
                lease.release()
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        data = os.read(r, 100).decode()
        os.close(r)
        assert status == 0
        return data

    assert asyncio.run(main()) == "ThreadOwner"

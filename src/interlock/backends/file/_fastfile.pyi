# Stub of the optional C twin of the file:// hot transitions (see _fastfile.c for the contract).
import mmap
from typing import Any

def grant(
    m: mmap.mmap, fd: int, permits: int, fair: bool, proc: int, mode: int, label: bytes, now: float, /
) -> tuple[int, bool, int] | bool | None: ...
def release(
    m: mmap.mmap, fd: int, token: int, proc: int, permits: int, abandoned: bool, now: float | None,
    posts: dict[tuple[int, int], Any], /
) -> bool | list[tuple[int, int, bytes]] | None: ...
def wait(
    handle: int, mbox: mmap.mmap, off: int, wid: int, timeout: float | None, w: Any, lease: Any,
    local: dict[int, Any], owner: Any, mode: str, waits: dict[int, Any], pool: list[Any], slot: Any,
    graph_lock: Any, graph: dict[Any, Any], /
) -> Any: ...
def enqueue(
    m: mmap.mmap, permits: int, proc: int, wid: int, slot: int, mode: int, label: bytes, now: float, /
) -> tuple[int, set[int]] | None: ...
def configure_spin(max_us: float, adaptive: bool = ..., /) -> float: ...
def spin_stats() -> tuple[int, int, int, int, float]: ...

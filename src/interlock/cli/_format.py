"""Human-readable rendering of ``Statistics`` (status table, the waiting line of ``run``)."""

from __future__ import annotations

from .._spi import RW_CAPACITY, HolderInfo, Statistics, WaiterInfo


def seconds(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 120:
        return f"{s:.1f}s"
    if s < 7200:
        return f"{s / 60:.0f}min"
    return f"{s / 3600:.1f}h"


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def amount(kind: str, permits: int, mode: str) -> str:
    if kind == "rwlock":
        return "write" if mode == "exclusive" or permits >= RW_CAPACITY else "read"
    if kind == "lock":
        return "lock"
    return f"{permits} permit{'s' if permits != 1 else ''}"


def where(info: HolderInfo | WaiterInfo) -> str:
    parts = []
    if info.pid is not None:
        parts.append(f"pid {info.pid}")
    if info.host:
        parts.append(f"on {info.host}")
    return " ".join(parts)


def capacity(s: Statistics) -> str:
    if s.kind == "rwlock":
        writers = sum(1 for h in s.holders if h.mode == "exclusive")
        readers = len(s.holders) - writers
        return "1 writer" if writers else f"{readers} reader{'s' if readers != 1 else ''}"
    cap = f"{s.held}/{s.capacity}"
    return cap if s.bounded else cap + " (signalling)"


def holder_line(s: Statistics, h: HolderInfo) -> str:
    bits = [f"token {h.token}", amount(s.kind, h.permits, h.mode), where(h), h.owner, f"for {seconds(h.held_for)}"]
    if h.expires_in is not None:
        bits.append(f"lease expires in {seconds(h.expires_in)}")
    if h.command:
        bits.append(h.command)
    return "  ".join(b for b in bits if b)


def waiter_line(s: Statistics, i: int, w: WaiterInfo) -> str:
    bits = [f"#{i}", amount(s.kind, w.permits, w.mode), where(w), w.owner, f"waiting {seconds(w.waiting_for)}"]
    if w.command:
        bits.append(w.command)
    return "  ".join(b for b in bits if b)


def table(stats: list[Statistics]) -> str:
    rows = [["NAME", "KIND", "HELD/CAPACITY", "WAITING", "LAST TOKEN"]]
    for s in stats:
        rows.append([s.name, s.kind, capacity(s), str(len(s.waiters)),
                     "-" if s.last_token is None else str(s.last_token)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        out.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
        if n == 0:
            continue
        st = stats[n - 1]
        for h in st.holders:
            out.append("    holder  " + holder_line(st, h))
        for i, w in enumerate(st.waiters, 1):
            out.append("    waiter  " + waiter_line(st, i, w))
    return "\n".join(out)


def waiting_line(s: Statistics, pid: int) -> str:
    """``run``'s progress line: our place in the queue and who holds the permits."""
    mine = [i for i, w in enumerate(s.waiters, 1) if w.pid == pid]
    place = f"{ordinal(mine[0])} of {len(s.waiters)} in line" if mine else f"{len(s.waiters)} in line"
    if s.holders:
        h = s.holders[0]
        who = f"held by {where(h) or h.owner} ({h.command or h.owner}) for {seconds(h.held_for)}"
        if len(s.holders) > 1:
            who += f" and {len(s.holders) - 1} more"
    else:
        who = "being handed over"
    return f"interlock: waiting for {s.kind} {s.name!r}: {place}; {who}"

"""``interlock demo``: N jobs (processes) through one semaphore of P permits, shown as they happen and
as a timeline in which "never more than P at once" is visible."""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from .. import Semaphore, redact_url


def _worker(name: str, permits: str, url: str, hold: str, job: str) -> int:
    sem = Semaphore(name, int(permits), url=url)

    def say(ev: str, **kw: Any) -> None:
        sys.stdout.write(json.dumps({"job": int(job), "ev": ev, "t": time.monotonic(), **kw}) + "\n")
        sys.stdout.flush()

    say("wait")
    with sem.acquire() as lease:
        say("run", token=lease.token)
        time.sleep(float(hold))
        say("done")
    return 0


def _bar(n: int, cap: int) -> str:
    return "#" * n + "." * max(0, cap - n)


def demo(args: argparse.Namespace) -> int:
    if args.worker:
        return _worker(*args.worker)
    rng = random.Random(args.seed)
    tmp = None
    url = args.url
    if url is None:
        tmp = tempfile.mkdtemp(prefix="interlock-demo-")
        url = "file://" + tmp
    name = f"demo-{os.getpid()}"
    jobs, cap = args.jobs, args.permits
    env = dict(os.environ)
    # The workers import interlock from wherever this process did (an installed package or a checkout).
    pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH", "")) if p)
    print(f"interlock demo: {jobs} jobs, each its own process, share one semaphore of {cap} permits")
    print(f"backend: {redact_url(url)}   (the same code works with redis://... across hosts)\n")
    print("  time   running  event")
    procs = []
    sel = selectors.DefaultSelector()
    events: list[dict[str, Any]] = []
    pending: list[tuple[float, int, dict[str, Any]]] = []  # a short reorder buffer: pipes are read as
    # they become readable, events are printed in time order
    t0: float | None = None
    running = 0
    peak = 0

    def show(ev: dict[str, Any]) -> None:
        nonlocal running, peak, t0
        if t0 is None:
            t0 = ev["t"]
        if ev["ev"] == "run":
            running += 1
            peak = max(peak, running)
            what = f"job {ev['job']:>2} runs (token {ev['token']})"
        elif ev["ev"] == "done":
            running -= 1
            what = f"job {ev['job']:>2} done"
        else:
            what = f"job {ev['job']:>2} waits"
        print(f"{ev['t'] - t0:6.2f}s  {_bar(running, cap)} {running}/{cap}  {what}", flush=True)

    try:
        for j in range(1, jobs + 1):
            hold = max(0.05, rng.uniform(0.5, 1.5) * args.hold)
            p = subprocess.Popen(
                [sys.executable, "-m", "interlock", "demo", "--worker", name, str(cap), url, f"{hold:.3f}", str(j)],
                stdout=subprocess.PIPE, env=env, text=True,
            )
            procs.append(p)
            assert p.stdout is not None
            sel.register(p.stdout, selectors.EVENT_READ)
        open_pipes = len(procs)
        seq = 0
        while open_pipes or pending:
            for key, _ in sel.select(0.05) if open_pipes else []:
                line = key.fileobj.readline()  # type: ignore[union-attr]
                if not line:
                    sel.unregister(key.fileobj)
                    open_pipes -= 1
                    continue
                ev = json.loads(line)
                events.append(ev)
                seq += 1
                heapq.heappush(pending, (ev["t"], seq, ev))
            horizon = time.monotonic() - 0.1 if open_pipes else float("inf")
            while pending and pending[0][0] <= horizon:
                show(heapq.heappop(pending)[2])
        codes = [p.wait() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if tmp is not None:
            from ..backends.file import FileBackend

            FileBackend(url).sweep()
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(_timeline(events, jobs, cap))
    tokens = [e["token"] for e in sorted(events, key=lambda e: e["t"]) if e["ev"] == "run"]
    ok = peak <= cap and all(c == 0 for c in codes)
    print(f"\nnever more than {cap} at once: {'yes' if peak <= cap else 'NO'} (peak {peak});"
          f" fencing tokens increase with every grant: {'yes' if tokens == sorted(tokens) else 'NO'}")
    return 0 if ok else 1


def _timeline(events: list[dict[str, Any]], jobs: int, cap: int, width: int = 60) -> str:
    if not events:
        return "(no events)"
    t0 = min(e["t"] for e in events)
    end = max(e["t"] for e in events)
    span = max(end - t0, 1e-6)

    def col(t: float) -> int:
        return min(width - 1, int((t - t0) / span * width))

    rows = []
    for j in range(1, jobs + 1):
        mine = {e["ev"]: e["t"] for e in events if e["job"] == j}
        line = [" "] * width
        w, r, d = mine.get("wait", t0), mine.get("run", end), mine.get("done", end)
        for c in range(col(w), col(r)):
            line[c] = "."
        for c in range(col(r), col(d) + 1):
            line[c] = "#"
        rows.append(f"  job {j:>3} |{''.join(line)}|")
    # The exact maximum of simultaneous holders within each column (a release and the grant it causes
    # often share a column, so counting overlapping spans would overstate it).
    changes = sorted((e["t"], -1 if e["ev"] == "done" else 1) for e in events if e["ev"] in ("run", "done"))
    cur = 0
    marks = []
    k = 0
    for c in range(width):
        peak = cur
        while k < len(changes) and col(changes[k][0]) == c:
            cur += changes[k][1]
            peak = max(peak, cur)
            k += 1
        marks.append(str(min(peak, 9)))
    rows.append("  holders |" + "".join(marks) + "|")
    legend = f"  ('.' waiting, '#' holding a permit; 'holders' = most jobs holding at once in each column: <= {cap})"
    return "\n".join([f"timeline ({span:.2f}s):", *rows, legend])

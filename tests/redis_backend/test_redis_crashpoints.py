"""A client process dies (``os._exit``, no cleanup) at every round trip of acquire, extend and release,
just before the request is sent and just after it ran on the server. Whatever the step, a fresh client
can take every permit (and no more) within the lease TTL, with a higher token; nothing is left queued."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

import interlock
from interlock.testing.servers import RedisServer
from redis_backend.helpers import SRC, url_for

pytestmark = [pytest.mark.servers, pytest.mark.fault]

TTL = 1.0
STEPS = 3  # ACQUIRE, RENEW (extend), RELEASE

CHILD = textwrap.dedent("""
    import os, sys
    import interlock

    k, when = int(sys.argv[1]), sys.argv[2]
    url = os.environ["INTERLOCK_URL"]
    sem = interlock.Semaphore("crash", 2, url=url)
    transport = interlock.connect(url).transport
    orig = transport.call
    n = [0]

    def call(script, target, args):
        n[0] += 1
        if n[0] == k and when == "before":
            os._exit(137)
        reply = orig(script, target, args)
        if n[0] == k and when == "after":
            os._exit(137)
        return reply

    transport.call = call
    lease = sem.acquire(2)
    lease.extend()
    lease.release()
    print("COMPLETED", flush=True)
""")


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("k", range(1, STEPS + 1))
def test_crash_at_every_step(redis_server: RedisServer, prefix: str, k: int, when: str) -> None:
    url = url_for(redis_server, prefix, ttl=TTL)
    env = dict(os.environ, INTERLOCK_URL=url, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    before = interlock.Semaphore("crash", 2, url=url).statistics().last_token or 0
    out = subprocess.run([sys.executable, "-c", CHILD, str(k), when], env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 137 and "COMPLETED" not in out.stdout, (out.returncode, out.stdout, out.stderr)
    died = time.monotonic()
    sem = interlock.Semaphore("crash", 2, url=url)
    lease = sem.acquire(2, timeout=TTL + 10.0)  # generous liveness bound; the promise is TTL + 1 s
    recovered = time.monotonic() - died
    assert lease.token > before
    with pytest.raises(interlock.WouldBlock):
        sem.acquire(1, blocking=False)  # every permit, and no more
    stats = sem.statistics()
    assert [h.token for h in stats.holders] == [lease.token] and not stats.waiters
    lease.release()
    print(f"k={k} {when}: recovered after {recovered:.2f}s (TTL {TTL}s)")

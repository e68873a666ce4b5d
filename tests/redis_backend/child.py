"""A separate process for the Redis fault tests (killed, stopped, or watched by the test).

Usage: ``python child.py MODE NAME`` with the URL in ``INTERLOCK_URL`` (never in argv: it may hold a
password) and, optionally, a history directory in ``IL_HISTORY`` and a fenced store ``host:port`` in
``IL_FENCED``. Every step is reported on stdout, one line each:

* ``hold``: acquire the lock, print ``ACQUIRED <token>``, wait for a line on stdin, then write to the
  fenced store (``WRITE <accepted>``), report ``HELD <lease.held>`` and release
  (``RELEASED`` or ``RELEASE-ERROR <class>``).
* ``wait``: acquire the lock (queueing), print ``ACQUIRED <token> <previous_owner_died>``, release.
"""

from __future__ import annotations

import os
import sys

import interlock
from interlock.testing.history import Recorder


def main() -> None:
    mode, name = sys.argv[1], sys.argv[2]
    rec = Recorder(os.environ["IL_HISTORY"]) if os.environ.get("IL_HISTORY") else Recorder()
    client = f"child-{os.getpid()}"
    lock = interlock.Lock(name)
    print("READY", flush=True)
    with rec.acquire(client, name) as op:
        lease = lock.acquire()
        op.token = lease.token
    print(f"ACQUIRED {lease.token} {int(lease.previous_owner_died)}", flush=True)
    if mode == "hold":
        sys.stdin.readline()
        fenced = os.environ.get("IL_FENCED")
        if fenced:
            from interlock.testing.fenced import FencedStoreClient

            host, port = fenced.rsplit(":", 1)
            with FencedStoreClient((host, int(port)), client=client) as store:
                print(f"WRITE {store.write(name, lease.token, client)}", flush=True)
        print(f"HELD {lease.held}", flush=True)
    try:
        with rec.release(client, name, token=lease.token):
            lease.release()
        print("RELEASED", flush=True)
    except interlock.InterlockError as exc:
        print(f"RELEASE-ERROR {type(exc).__name__}", flush=True)


if __name__ == "__main__":
    main()

"""The ``redis://`` backend: leased, fenced, fair (FIFO) primitives shared by many hosts.

Design (see ``docs/redis-backend.md`` for the guarantees):

* **One script per state change.** ``lua/prelude.lua`` + an operation body: expired leases are
  purged, the head waiter(s) granted (strict FIFO, weighted) and woken by ``PUBLISH`` inside the
  same script. Expiry uses the server's clock (``TIME``); clients never send timestamps. Acquire
  and release splice an uncontended fast path into the prelude (``lua/*_fast.lua``).
* **Push wake-ups, one subscription per process.** Every process subscribes to one channel
  (``<prefix>c:<sid>``) before its first wait; a grant is delivered as ``"<id> <token> <died>"``.
  A waiter's only timed wake-up is the earliest lease expiry the server reported: the process's
  maintenance thread then re-reads the state once per primitive (``poll``), which purges a dead
  holder and grants the next waiter. Lost messages (a reconnect) cost latency, never a grant.
* **Leases.** Every holder and every queued waiter has an expiry (server time) renewed by ONE
  maintenance thread per process, one pipelined round trip for all primitives every ``ttl/3``.
  A Lease's conservative deadline is ``send time of the last successful acquire/renewal + ttl -
  margin`` on the monotonic clock; at that deadline it is marked lost (``on_lost`` callbacks run).
* **Request ids** make every script idempotent, so a reply lost to a dropped connection is retried
  without leaking or doubling a grant.

Sync and async share one sans-I/O protocol per operation (generators yielding ``_Call``/``_Wait``);
``_run`` drives them on a thread, ``_run_async`` on an event loop (Redis I/O in a bounded pool of
I/O threads, so any number of event loops share the same connections).
"""

from __future__ import annotations

import _thread
import asyncio
import atexit
import concurrent.futures
import itertools
import math
import os
import select
import socket
import sys
import threading
import time
import weakref
from collections.abc import Generator
from typing import Any
from urllib.parse import quote, unquote

from ..._core import deadlock
from ..._core.owner import owner_label, track_task_death, untrack_task_death
from ..._errors import (
    AcquireTimeout,
    BackendError,
    BlockingCallInEventLoop,
    CapacityMismatch,
    InvalidArgument,
    LeaseLost,
    OverRelease,
    WouldBlock,
)
from ..._lease import HELD, LOST, Lease
from ..._spi import Backend, Channel, HolderInfo, Statistics, WaiterInfo
from . import _scripts as S
from ._config import RedisOptions, parse_options
from ._transport import ClusterTransport, StandaloneTransport, Target, Transient, _Incomplete, _parse

_monotonic = time.monotonic
_ref = weakref.ref
_get_running_loop = asyncio._get_running_loop

WAITING, GRANTED, CANCELLED = 0, 1, 2
_MODE = {"exclusive": "x", "shared": "s", "permits": "p"}
_MODE_NAME = {"x": "exclusive", "s": "shared", "p": "permits"}
_SLACK = 0.005  # poll a little after the reported expiry so the server sees it expired
_BACKOFF = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
_THREAD = object()  # ``_leader`` value: the subscriber thread reads the subscription
_PING = b"*1\r\n$4\r\nPING\r\n"
_MESSAGE = b"*3\r\n$7\r\nmessage\r\n$"  # a pub/sub message frame, up to its channel's length


# --------------------------------------------------------------------------------------------------
# protocol operations


class _Call:
    """Run one script (retrying transient failures with the same request id until ``until``)."""

    __slots__ = ("after", "args", "future", "retried", "script", "target", "until", "wait")

    def __init__(self, script: S.Script, target: Target, args: tuple[str | bytes | int, ...],
                 until: float | None, wait: bool = False,
                 after: concurrent.futures.Future[Any] | None = None) -> None:
        self.script = script
        self.target = target
        self.args = args
        self.until = until
        self.wait = wait  # follow with WAIT <replicas> on the same connection
        # Send only once this call has finished: a cancel must reach the server after an in-flight
        # re-queue of the same request id, or it would withdraw nothing and leave an orphan behind.
        self.after = after
        self.retried = False
        self.future: concurrent.futures.Future[Any] | None = None


class _Cell:
    """A queued request of this process. ``state`` changes only under the backend mutex; the grant
    (``token``, ``died``) is delivered by the subscriber thread or the maintenance thread.

    A cell exists only once the server has replied that the request is queued (while its ACQUIRE is
    in flight the id is only in ``RedisBackend._pending``). So renewals and polls, which look at
    cells, never see an id the server does not know yet: they would take it for one the server
    forgot and queue it again, racing with the grant in the reply."""

    __slots__ = ("args", "channel", "confirmed", "died", "fut", "id", "inflight", "lock", "loop", "signalled",
                 "state", "token")

    def __init__(self, channel: RedisChannel, rid: str, loop: asyncio.AbstractEventLoop | None,
                 args: tuple[str | bytes | int, ...], confirmed: float) -> None:
        self.channel = channel
        self.id = rid
        self.state = WAITING
        self.token = 0
        self.died = False
        # Monotonic send time of the last acquire/renewal the server confirmed (the request queued).
        self.confirmed = confirmed
        # The re-queue (ACQUIRE again after the server forgot the request) in flight, if any; set and
        # cleared under the backend mutex, only while the cell is WAITING.
        self.inflight: concurrent.futures.Future[Any] | None = None
        self.loop = loop
        self.args = args  # the ACQUIRE arguments (to queue it again)
        # Thread cells: ``lock`` is held by the waiting thread except after a wake-up (a grant, or a
        # promotion to reading the subscription); ``signalled`` is True exactly while it is released
        # by such a wake-up. Both change only under the backend mutex, so a wake is never lost nor
        # doubled (releasing an unlocked lock would raise).
        self.signalled = False
        if loop is None:
            self.lock: Any = _thread.allocate_lock()
            self.lock.acquire()
            self.fut: asyncio.Future[None] | None = None
        else:
            self.lock = None
            self.fut = loop.create_future()

    def wake(self) -> None:
        """Wake the waiter (thread cells: call under the backend mutex)."""
        if self.loop is None:
            if not self.signalled:
                self.signalled = True
                self.lock.release()
        else:
            try:
                self.loop.call_soon_threadsafe(_resolve, self.fut)
            except RuntimeError:  # loop closed: the waiter is gone; its cancel cleans up
                pass


class _Wait:
    __slots__ = ("cell", "until")

    def __init__(self, cell: _Cell, until: float | None) -> None:
        self.cell = cell
        self.until = until


def _resolve(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


_Proto = Generator[Any, Any, Any]


# --------------------------------------------------------------------------------------------------
# the channel


class RedisChannel(Channel):
    """One named primitive on one Redis backend, in this process."""

    # Under backend._mx: _leases maps request id -> held Lease of this process (renewed by the
    # maintenance thread); _cells maps request id -> queued request of this process.
    # _leases holds the leases WEAKLY: a Lease its holder dropped must be garbage-collected (its
    # finalizer hands it to the reaper, which releases it), not renewed here forever. A plain dict of
    # weak references, not a WeakValueDictionary (whose Python-level methods were a visible share of
    # an uncontended acquire+release): every release removes its entry, and readers skip a dead
    # reference (_check_deadlines removes it).

    def __init__(self, backend: RedisBackend, name: str, kind: str, capacity: int, bounded: bool) -> None:
        super().__init__(backend, name, kind, capacity, bounded)
        self.rb = backend
        self.base = backend._key_base(name)
        o = backend.opts
        self.target = Target.make(
            [self.base + s for s in (":m", ":q", ":x")],
            [o.prefix + "c:", kind, str(capacity), "1" if bounded else "0",
             str(int(o.idle_expiry * 1000))],
        )
        self._leases: dict[str, weakref.ref[Lease]] = {}
        self._cells: dict[str, _Cell] = {}
        self._poll_at: float | None = None
        self._owned = kind != "semaphore"
        self._local_only = False  # the server said every holder is ours (set while we queue)

    # -- acquire -----------------------------------------------------------------------------------
    def acquire(self, permits: int, timeout: float | None, blocking: bool, owner: Any, site: Any, mode: str,
                fair: bool = True) -> Lease:
        on_loop = _get_running_loop() is not None
        lease: Lease = self.rb._run(self._acquire(permits, timeout, blocking, owner, site, mode, fair, on_loop, None))
        return lease

    async def acquire_async(self, permits: int, timeout: float | None, blocking: bool, owner: Any, site: Any,
                            mode: str, fair: bool = True) -> Lease:
        loop = asyncio.get_running_loop()
        lease: Lease = await self.rb._run_async(
            self._acquire(permits, timeout, blocking, owner, site, mode, fair, False, loop)
        )
        return lease

    def _acquire(self, permits: int, timeout: float | None, blocking: bool, owner: Any, site: Any, mode: str,
                 fair: bool, on_loop_thread: bool, loop: asyncio.AbstractEventLoop | None) -> _Proto:
        b = self.rb
        if self.bounded and permits > self.capacity:
            raise InvalidArgument(
                f"cannot acquire {permits} permits of {self.describe()}: its capacity is {self.capacity}; "
                "ask for at most the capacity", name=self.name, permits=permits, capacity=self.capacity,
            )
        now = _monotonic()
        deadline = None if timeout is None else now + timeout
        may_wait = blocking and timeout != 0 and not on_loop_thread
        rid = b._new_id()
        epoch = 0
        if may_wait:
            b._ensure_subscribed()
            # Before sending: the grant message may overtake the reply (see _deliver). No cell yet: an
            # acquire granted at once (the common case) then costs no cell, and see _Cell.
            epoch = b._sub_epoch
            b._pending.add(rid)
        flags = ("b" if may_wait else "") + ("f" if fair else "")
        if may_wait and self._owned and self._leases:
            flags += "o"  # ask whether every holder is ours: then a self-deadlock can be reported
        args = (rid, b.sid, permits, _MODE[mode], flags, b.ttl_ms, b._info(owner))
        call = _Call(S.ACQUIRE, self.target, args, deadline if deadline is not None else now + b.opts.ttl)
        sent = _monotonic()
        try:
            r = yield call
        except BaseException:
            # Outcome unknown (unreachable server, interrupt): withdraw whatever the server did with
            # this id, after the in-flight call (if any) has finished.
            if may_wait:
                b._unpend(rid)
            b._defer_cancel(self, rid, call.future)
            raise
        status = r[0]
        if status == 1:
            if may_wait:
                if call.retried:  # an earlier attempt may have queued it, and a grant been published
                    b._unpend(rid)
                else:  # granted by this very script: no grant message for it exists (nor can _deliver
                    b._pending.discard(rid)  # buffer one), so no need for the mutex
            return (yield from self._granted(rid, int(r[1]), bool(r[2]), sent, permits, owner, site, mode))
        if status == 2:
            if may_wait:  # (not sent with "b": never queued)
                b._unpend(rid)
            if blocking and timeout != 0 and on_loop_thread:
                raise BlockingCallInEventLoop(
                    f"blocking acquire of {self.describe()} on a thread whose event loop is running would "
                    "deadlock it; use 'async with' or 'await acquire_async()' instead", name=self.name,
                )
            raise WouldBlock(f"{self.describe()} cannot grant {permits} permit(s) now", name=self.name,
                             permits=permits)
        if status == -1:
            if may_wait:
                b._unpend(rid)
            raise self._mismatch(r)
        assert may_wait
        cell, early, repoll = b._register(self, rid, loop, args, sent, epoch)
        if early is not None:  # its grant message overtook this reply
            return (yield from self._granted(rid, early[0], early[1], sent, permits, owner, site, mode))
        assert cell is not None
        # (a re-subscription while the ACQUIRE was in flight may have lost our grant message: poll now)
        b._schedule_poll(self, 0 if repoll else int(r[1]))
        # While we queue (FIFO), the set of holders can only shrink: if it was all ours, it stays so.
        self._local_only = len(r) > 2 and r[2] == 1
        try:
            deadlock.enter_wait(owner, self, cell)
        except BaseException:
            self._local_only = False
            b._withdraw(cell)
            yield _Call(S.CANCEL, self.target, (rid, "r"), _monotonic() + b.opts.ttl, after=cell.inflight)
            raise
        try:
            got = yield _Wait(cell, deadline)
        except BaseException:
            b._withdraw(cell)
            b._defer_cancel(self, rid, cell.inflight)  # releases a grant that raced with the interrupt
            raise
        finally:
            deadlock.leave_wait(owner)
            self._local_only = False
        if not got and b._withdraw(cell):
            r = yield _Call(S.CANCEL, self.target, (rid, "k"), _monotonic() + b.opts.ttl, after=cell.inflight)
            if r[0] == 2:  # granted just before the cancel arrived: keep it
                return (yield from self._granted(rid, int(r[1]), bool(r[2]), cell.confirmed, permits, owner,
                                                 site, mode))
            raise AcquireTimeout(
                f"timed out after {timeout}s waiting for {permits} permit(s) of {self.describe()}",
                name=self.name, permits=permits, timeout=timeout,
            )
        return (yield from self._granted(rid, cell.token, cell.died, cell.confirmed, permits, owner, site, mode))

    def _granted(self, rid: str, token: int, died: bool, confirmed: float, permits: int, owner: Any, site: Any,
                 mode: str) -> _Proto:
        b = self.rb
        if b.opts.wait_replicas:
            # Make the grant durable on replicas before anyone relies on it: a write of ours (renew)
            # followed by WAIT covers every earlier write, including the grant.
            sent = _monotonic()
            missing, acked = yield _Call(S.RENEW, self.target, ("", b.ttl_ms, rid), sent + b.opts.ttl, wait=True)
            if missing or acked < b.opts.wait_replicas:
                yield _Call(S.CANCEL, self.target, (rid, "r"), _monotonic() + b.opts.ttl)
                raise BackendError(
                    f"the grant of {self.describe()} reached {acked} of {b.opts.wait_replicas} replica(s) "
                    f"within {b.opts.wait_timeout}s (wait_replicas); it was given back",
                    name=self.name, url=b.display_url,
                )
            confirmed = sent
        lease = Lease(self, token, permits, owner, site, mode, died)
        lease.backend_data = rid
        lease._deadline = confirmed + b.lease_span
        b._add_lease(self, rid, lease)
        if self._owned:
            track_task_death(lease)
        return lease

    def _mismatch(self, r: list[Any]) -> CapacityMismatch:
        kind = r[1].decode() if isinstance(r[1], bytes) else str(r[1])
        cap = int(r[2])
        bounded = r[3] in (b"1", "1")
        return CapacityMismatch(
            f"{self.describe()} on {self.backend.display_url} already exists as a {kind} with capacity {cap}, "
            f"bounded={bounded}; this object asks for a {self.kind} with capacity {self.capacity}, "
            f"bounded={self.bounded}. Use one definition per name (or another name).",
            name=self.name, kind=kind, capacity=cap,
        )

    # -- release -----------------------------------------------------------------------------------
    def release(self, lease: Lease, permits: int, abandoned: bool = False) -> None:
        self.rb._run(self._release(lease, permits, "r", abandoned))

    async def release_async(self, lease: Lease, permits: int) -> None:
        await self.rb._run_async(self._release(lease, permits, "r", False))

    def downgrade(self, lease: Lease) -> None:
        self.rb._run(self._release(lease, lease.permits - 1, "d", False))

    async def downgrade_async(self, lease: Lease) -> None:
        await self.rb._run_async(self._release(lease, lease.permits - 1, "d", False))

    def forget(self, lease: Lease) -> None:
        self.rb._run(self._release(lease, lease.permits, "f", False))

    def _release(self, lease: Lease, permits: int, op: str, abandoned: bool) -> _Proto:
        b = self.rb
        rid = lease.backend_data
        partial = op == "d" or permits < lease.permits
        if not partial:
            b._drop_lease(self, rid)
        now = _monotonic()
        expired = lease._deadline is not None and now >= lease._deadline
        until = max(lease._deadline or now, now + 1.0)
        call = _Call(S.RELEASE, self.target, (rid, op, 0 if op == "d" or not partial else permits,
                                              "1" if abandoned else "0"), until)
        try:
            r = yield call
        except (BackendError, Transient) as exc:
            if abandoned:
                raise
            self._lose(lease, f"the release could not reach the server ({exc}); the lease expires by itself")
            raise LeaseLost(
                f"lease on {self.describe()} (token {lease.token}) could not be released: {exc}; it "
                "expires on the server within its TTL", name=self.name, token=lease.token,
            ) from None
        except BaseException:
            # Interrupted (KeyboardInterrupt, cancellation) with the outcome unknown: finish a full
            # release in the background once the call is done, rather than leave the grant to its
            # TTL. (A cancel of a released id is a no-op; a partial release is not retried.)
            if op == "r" and not partial:
                b._defer_cancel(self, rid, call.future)
            raise
        if not partial and self._owned:
            untrack_task_death(lease)
        if op == "d":
            lease.permits = 1
            lease.mode = "shared"
        elif partial:
            lease.permits -= permits
        if abandoned:
            return None
        if r[0] == 0 and not (call.retried and not expired):
            b._drop_lease(self, rid)
            self._lose(lease, "the server no longer had it (it expired, or the server lost its state)")
            lease.ensure_held()
        if expired:
            self._lose(lease, "its deadline passed before it was released")
            lease.ensure_held()
        return None

    def _lose(self, lease: Lease, reason: str) -> None:
        if lease._state == HELD:
            lease._set_lost(reason)
        elif lease._state != LOST:  # released by the caller already: record why it was lost
            lease._state = LOST
            lease._lost_reason = reason

    def try_release_abandoned(self, lease: Lease) -> bool:
        return False  # needs I/O: the reaper thread releases it

    # -- extend ------------------------------------------------------------------------------------
    def extend(self, lease: Lease) -> None:
        self.rb._run(self._extend(lease))

    async def extend_async(self, lease: Lease) -> None:
        await self.rb._run_async(self._extend(lease))

    def _extend(self, lease: Lease) -> _Proto:
        """Renew one lease now (the background renewal does the same for all of them)."""
        b = self.rb
        rid = lease.backend_data
        lease.ensure_held()
        sent = _monotonic()
        # Retries of a transient failure stop at the lease's deadline: past it, nothing can be vouched for.
        missing = yield _Call(S.RENEW, self.target, ("", b.ttl_ms, rid), lease._deadline or sent + b.opts.ttl)
        if missing:
            b._drop_lease(self, rid)
            self._lose(lease, "the server no longer had it (it expired before it was renewed, or the server "
                              "lost its state)")
            lease.ensure_held()
        with b._mx:
            if lease._state == HELD and lease._deadline is not None:
                lease._deadline = max(lease._deadline, sent + b.lease_span)
        return None

    def is_current(self, lease: Lease) -> bool:
        ref = self._leases.get(lease.backend_data)
        return ref is not None and ref() is lease

    def _live_leases(self) -> list[Lease]:
        return [le for le in [r() for r in list(self._leases.values())] if le is not None]

    def reclaim_owner(self, owner: Any) -> None:
        """Return the grants still held by ``owner`` (a thread that ended), marked abandoned."""
        if not self._owned:
            return
        for lease in [le for le in self._live_leases() if le.owner is owner]:
            if lease._mark_abandoned(f"its owner {owner_label(owner)} ended while holding it"):
                try:
                    self.release(lease, lease.permits, abandoned=True)
                except Exception:
                    pass  # unreachable server: the grant expires within its TTL

    # -- signalling --------------------------------------------------------------------------------
    def signal(self, permits: int) -> None:
        self.rb._run(self._signal(permits))

    async def signal_async(self, permits: int) -> None:
        await self.rb._run_async(self._signal(permits))

    def _signal(self, permits: int) -> _Proto:
        if self.bounded:
            raise OverRelease(
                f"{self.describe()} is bounded: release() without holding a permit would exceed its "
                f"capacity {self.capacity}; release the Lease from acquire(), or create the semaphore "
                "with bounded=False for signalling", name=self.name, capacity=self.capacity,
            )
        b = self.rb
        rid = b._new_id()
        target = Target.make([*self.target.keys, f"{self.base}:sig:{rid}"], self.target.const)
        yield _Call(S.SIGNAL, target, ("", permits, 600_000), _monotonic() + b.opts.ttl)

    # -- inspection --------------------------------------------------------------------------------
    def statistics(self) -> Statistics:
        s = self.rb._statistics(self.name, self.target)
        if s is None:
            return Statistics(self.name, self.kind, self.capacity, self.capacity if self.bounded else 0, (), (),
                              self.bounded, None, self.backend.display_url)
        return s

    def local_holder_owners(self) -> list[Any]:
        return [lease.owner for lease in self._live_leases() if lease._state == HELD]

    def has_remote_holders(self) -> bool:
        # An exclusive grant held here excludes every other holder: then the wait-for graph of this
        # process is complete for this primitive and self-deadlocks can be reported.
        if self._local_only:
            return False
        return not any(lease.mode == "exclusive" and lease._state == HELD for lease in self._live_leases())

    def locked(self) -> bool:
        s = self.statistics()
        return s.available < 1 or bool(s.waiters)


# --------------------------------------------------------------------------------------------------
# the backend

_backends: weakref.WeakSet[RedisBackend] = weakref.WeakSet()
_HOST = socket.gethostname()[:64]


def _clean(text: str) -> str:
    return text.replace("\t", " ").replace("\n", " ").replace("\r", " ")[:120]


class RedisBackend(Backend):
    """Primitives shared through one Redis server, Valkey, or Redis Cluster.

    URL: ``redis://[[user]:password@]host[:port][/db][?options]``, ``rediss://`` (TLS; redis-py's
    ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs`` in the query) or
    ``unix:///path/redis.sock?db=0``. interlock's options (query):

    * ``prefix`` (default ``interlock:``): every key and channel starts with it (tenant isolation,
      ACL key patterns ``~prefix*`` and channel patterns ``&prefix*``);
    * ``ttl`` (seconds, default 10): lease length; leases are renewed every ``ttl/3`` and a dead
      holder's permits return within ``ttl`` (plus one round trip);
    * ``margin`` (default 5 % of ttl): a holder considers its lease lost this long before the server
      can expire it;
    * ``wait_replicas``/``wait_timeout``: make every grant wait until that many replicas have
      acknowledged it (``WAIT``); fewer in time -> the grant is given back and BackendError raised;
    * ``cluster=true``: Redis Cluster (any node's address); ``max_connections`` (default 16).

    Or wrap an existing client: ``RedisBackend.from_client(redis.Redis(...), prefix=..., ttl=...)``.
    """

    schemes = ("redis", "rediss", "unix", "redis+unix")

    def __init__(self, url: str, *, _client: Any = None) -> None:
        super().__init__(url)
        self.opts: RedisOptions = parse_options(url)
        if self.opts.wait_replicas and self.opts.cluster:
            raise InvalidArgument("wait_replicas is not supported with cluster=true", argument="wait_replicas")
        try:
            import redis  # noqa: F401
        except ImportError:
            from ..._errors import MissingDependency

            raise MissingDependency(
                "the redis:// backend needs redis-py; install it with: pip install 'interlock[redis]'",
                extra="redis",
            ) from None
        self._client = _client
        self.ttl_ms = int(self.opts.ttl * 1000)
        self.lease_span = self.opts.ttl - self.opts.margin
        self._chan_lock = threading.Lock()
        self._channels: weakref.WeakValueDictionary[str, RedisChannel] = weakref.WeakValueDictionary()
        self._start()
        try:  # parses the rest of the URL (redis-py's options) now: bad input fails before any I/O
            _ = self.transport
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(
                f"bad Redis URL {self.display_url!r}: {str(exc).replace(self.url, self.display_url)}",
                argument="url",
            ) from None
        _backends.add(self)

    @classmethod
    def from_client(cls, client: Any, *, prefix: str | None = None, ttl: float | None = None,
                    margin: float | None = None) -> RedisBackend:
        """A backend over an existing ``redis.Redis`` or ``redis.cluster.RedisCluster`` client (its
        connection settings are reused; interlock opens its own connections). Not cached by
        ``interlock.connect``: pass it as ``backend=`` to ``Lock``/``Semaphore``/``RWLock``."""
        from urllib.parse import urlencode

        q: dict[str, str] = {}
        if prefix is not None:
            q["prefix"] = prefix
        if ttl is not None:
            q["ttl"] = repr(float(ttl))
        if margin is not None:
            q["margin"] = repr(float(margin))
        from redis.cluster import RedisCluster

        if isinstance(client, RedisCluster):
            q["cluster"] = "1"
        return cls("redis://client/" + ("?" + urlencode(q) if q else ""), _client=client)

    # -- per-process runtime (recreated in a forked child) -----------------------------------------
    def _start(self) -> None:
        self.sid = os.urandom(8).hex()
        self._ids = itertools.count(1)
        self._mx = _thread.allocate_lock()
        self._cells: dict[str, _Cell] = {}
        # Under _mx (adding to _pending needs no mutex: nothing can be buffered for an id not sent yet):
        # ids of blocking ACQUIREs in flight, and grant messages for them that overtook the reply.
        self._pending: set[str] = set()
        self._early: dict[str, tuple[int, bool]] = {}
        self._sub_epoch = 0  # + 1 (under _mx) each time the subscription is (re-)established
        self._active: set[RedisChannel] = set()
        self._deferred: list[tuple[RedisChannel, str, concurrent.futures.Future[Any] | None]] = []
        self._wake = threading.Event()
        self._subscribed = threading.Event()
        self._threads_started = False
        self._stopping = False
        self._transport: Any = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._proc_info = f"\t{_HOST}\t{os.getpid()}\t{_clean(os.path.basename(sys.argv[0] or 'python'))}"
        # owner -> info; weak keys: an ended thread's owner (and the leases its ``with`` stack holds)
        # must stay collectable
        self._infos: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._sub_resets = 0
        # The subscription socket is read by ONE reader at a time (``_leader``, under ``_mx``): a
        # waiting thread (its grant then needs no thread switch), or the subscriber thread (for
        # asyncio waiters, or while no thread waits). ``_sub_*`` belong to the current reader.
        self._leader: _Cell | object | None = None
        self._sync_cells: dict[str, _Cell] = {}
        self._sub_sock: Any = None
        self._sub_buf = b""
        self._sub_last = 0.0
        self._sub_pinged = 0.0
        self._sub_broken = False
        self._sub_evt = threading.Event()
        # The subscriber thread's poll set (subscription socket + wake-up pipe), made again whenever
        # the subscription socket changes: (socket, poll object).
        self._sub_poll: tuple[Any, Any] | None = None
        for fd in getattr(self, "_pipe", ()):
            try:
                os.close(fd)
            except OSError:
                pass
        self._pipe = os.pipe()
        os.set_blocking(self._pipe[1], False)
        self._renewing = False
        self._polling: set[RedisChannel] = set()

    def _after_fork(self) -> None:
        # Leases and waits of the parent are not the child's: mark the child's copies lost (the parent
        # keeps renewing and releasing the real grants) and start afresh (new sid, new connections).
        for ch in list(self._channels.values()):
            for lease in ch._live_leases():
                lease._state = LOST
                lease._lost_reason = "it was inherited across fork(); the parent process owns it"
            ch._leases.clear()
            ch._cells.clear()
            ch._poll_at = None
        self._start()

    @property
    def transport(self) -> Any:
        t = self._transport
        if t is None:
            with self._chan_lock:
                if self._transport is None:
                    self._transport = self._make_transport()
                t = self._transport
        return t

    def _make_transport(self) -> Any:
        c = self._client
        if c is not None:
            from redis.cluster import RedisCluster

            if isinstance(c, RedisCluster):
                return ClusterTransport(self.opts, client=c)
            return StandaloneTransport(self.opts, pool=c.connection_pool)
        if self.opts.cluster:
            return ClusterTransport(self.opts)
        return StandaloneTransport(self.opts)

    def _new_id(self) -> str:
        return f"{self.sid}.{next(self._ids):x}"

    def _info(self, owner: Any) -> str:
        # Cached per owner (a thread's label never changes; a task renamed while it keeps acquiring
        # shows its old name in status): formatting it was a visible share of an uncontended acquire.
        try:
            info = self._infos.get(owner)
        except TypeError:  # not weakly referenceable
            return _clean(owner_label(owner)) + self._proc_info
        if info is None:
            info = self._infos[owner] = _clean(owner_label(owner)) + self._proc_info
        return info

    def _key_base(self, name: str) -> str:
        # Names are data: percent-encoding is injective and keeps '{', '}' and '%' out of the hash tag.
        return f"{self.opts.prefix}{{{quote(name, safe='')}}}"

    def owner_ended(self, owner: Any) -> None:
        with self._chan_lock:
            chans = list(self._channels.values())
        for ch in chans:
            ch.reclaim_owner(owner)

    # -- channels ----------------------------------------------------------------------------------
    def channel(self, name: str, kind: str, capacity: int, bounded: bool) -> RedisChannel:
        with self._chan_lock:
            ch = self._channels.get(name)
            if ch is None:
                ch = RedisChannel(self, name, kind, capacity, bounded)
                self._channels[name] = ch
            else:
                ch.check_compatible(kind, capacity, bounded)
            return ch

    # -- drivers -----------------------------------------------------------------------------------
    def _call(self, op: _Call) -> Any:
        """Run a script, retrying transient failures (same request id) until ``op.until``."""
        t = self.transport
        if op.after is not None:
            left = None if op.until is None else max(0.0, op.until - _monotonic())
            concurrent.futures.wait((op.after,), timeout=left)
        attempt = 0
        while True:
            try:
                if op.wait:
                    return t.call_then_wait(op.script, op.target, op.args, self.opts.wait_replicas,
                                            self.opts.wait_timeout)
                return t.call(op.script, op.target, op.args)
            except Transient as exc:
                now = _monotonic()
                if op.until is not None and now >= op.until:
                    raise BackendError(
                        f"{self.display_url} did not answer ({exc}); gave up after {attempt + 1} attempt(s)",
                        url=self.display_url,
                    ) from None
                delay = _BACKOFF[min(attempt, len(_BACKOFF) - 1)]
                if op.until is not None:
                    delay = min(delay, max(0.0, op.until - now))
                if delay:
                    time.sleep(delay)
                attempt += 1
                op.retried = True

    def _run(self, gen: _Proto) -> Any:
        send: Any = None
        exc: BaseException | None = None
        while True:
            try:
                op = gen.send(send) if exc is None else gen.throw(exc)
            except StopIteration as stop:
                return stop.value
            send = exc = None
            try:
                send = self._call(op) if type(op) is _Call else self._wait_cell(op.cell, op.until)
            except BaseException as e:
                exc = e

    async def _run_async(self, gen: _Proto) -> Any:
        loop = asyncio.get_running_loop()
        send: Any = None
        exc: BaseException | None = None
        while True:
            try:
                op = gen.send(send) if exc is None else gen.throw(exc)
            except StopIteration as stop:
                return stop.value
            send = exc = None
            try:
                if type(op) is _Call:
                    fut = self._io().submit(self._call, op)
                    op.future = fut
                    # Shielded: cancelling the caller must not cancel a request still queued for a
                    # connection. It runs anyway and the generator (seeing CancelledError) undoes it
                    # after it completes (acquire: deferred cancel), or it is the release itself.
                    send = await asyncio.shield(asyncio.wrap_future(fut, loop=loop))
                else:
                    f = op.cell.fut
                    assert f is not None
                    if op.until is None:
                        await asyncio.shield(f)
                    else:
                        await asyncio.wait((f,), timeout=max(0.0, op.until - _monotonic()))
                    send = f.done()
            except BaseException as e:
                exc = e

    def _io(self) -> concurrent.futures.ThreadPoolExecutor:
        ex = self._executor
        if ex is None:
            with self._chan_lock:
                if self._executor is None:
                    self._executor = concurrent.futures.ThreadPoolExecutor(
                        self.opts.max_connections, thread_name_prefix="interlock-redis-io"
                    )
                ex = self._executor
        return ex

    # -- waiters -----------------------------------------------------------------------------------
    def _unpend(self, rid: str) -> None:
        """The ACQUIRE of ``rid`` is no longer in flight, and it will not wait: forget it, and a grant
        message for it that was buffered (its owner, if any, releases it on the server)."""
        with self._mx:
            self._pending.discard(rid)
            self._early.pop(rid, None)

    def _register(self, ch: RedisChannel, rid: str, loop: asyncio.AbstractEventLoop | None,
                  args: tuple[str | bytes | int, ...], sent: float,
                  epoch: int) -> tuple[_Cell | None, tuple[int, bool] | None, bool]:
        """The server queued request ``rid`` (its ACQUIRE was sent at ``sent``, when the subscription
        epoch was ``epoch``): make its cell. -> (cell, its grant if the message came first, whether to
        poll now because the subscription was re-established meanwhile and may have lost the grant)."""
        with self._mx:
            self._pending.discard(rid)
            early = self._early.pop(rid, None)
            if early is not None:
                return None, early, False
            repoll = self._sub_epoch != epoch
            cell = _Cell(ch, rid, loop, args, sent)
            self._cells[cell.id] = cell
            ch._cells[cell.id] = cell
            if cell.loop is None:
                self._sync_cells[cell.id] = cell
                if self._leader is _THREAD:
                    self._poke()  # the subscriber thread hands the socket to this waiter
            elif self._leader is None:
                # Only asyncio waiters need the subscriber thread: a waiting thread reads for itself
                # (not waking the thread here keeps an uncontended acquire free of thread switches).
                self._sub_evt.set()
            fresh = not self._active
            self._active.add(ch)
        if fresh:
            self._ensure_threads()
            self._wake.set()
        return cell, None, repoll

    def _withdraw(self, cell: _Cell) -> bool:
        """Stop waiting. True if the cell was still waiting (no grant was delivered to it)."""
        with self._mx:
            self._cells.pop(cell.id, None)
            cell.channel._cells.pop(cell.id, None)
            self._sync_cells.pop(cell.id, None)
            if self._leader is cell:  # promoted before it started waiting: pass the socket on
                self._leader = None
                if not (self._sub_sock is not None and not self._sub_broken and self._promote_locked()) and (
                    self._cells or self._sub_broken or self._sub_sock is None
                ):
                    self._sub_evt.set()
            if cell.state == WAITING:
                cell.state = CANCELLED
                return True
            return False

    def _deliver(self, rid: str, token: int, died: bool) -> None:
        with self._mx:
            cell = self._cells.pop(rid, None)
            if cell is None:
                if rid in self._pending:  # its ACQUIRE's reply has not been read yet: _register takes it
                    self._early[rid] = (token, died)
                return
            if cell.state != WAITING:
                return
            cell.channel._cells.pop(rid, None)
            self._sync_cells.pop(rid, None)
            cell.state = GRANTED
            cell.token = token
            cell.died = died
            if cell.loop is None:
                cell.wake()
                return
        cell.wake()

    def _schedule_poll(self, ch: RedisChannel, next_ms: int) -> None:
        if next_ms < 0:
            return
        at = _monotonic() + next_ms / 1000.0 + _SLACK
        with self._mx:
            if ch._poll_at is None or at < ch._poll_at:
                ch._poll_at = at
                wake = True
            else:
                wake = False
        if wake:
            self._wake.set()

    def _defer_cancel(self, ch: RedisChannel, rid: str, after: concurrent.futures.Future[Any] | None) -> None:
        """Withdraw request ``rid`` on the server in the background (after ``after`` completes)."""
        if after is not None and not after.done():
            after.add_done_callback(lambda _f: self._defer_cancel(ch, rid, None))
            return
        with self._mx:
            self._deferred.append((ch, rid, None))
        self._ensure_threads()
        self._wake.set()

    # -- leases ------------------------------------------------------------------------------------
    def _add_lease(self, ch: RedisChannel, rid: str, lease: Lease) -> None:
        with self._mx:
            ch._leases[rid] = _ref(lease)
            fresh = not self._active
            self._active.add(ch)
        if fresh or not self._threads_started:
            self._ensure_threads()
            self._wake.set()

    def _drop_lease(self, ch: RedisChannel, rid: str) -> None:
        with self._mx:
            ch._leases.pop(rid, None)

    # -- background threads ------------------------------------------------------------------------
    def _ensure_threads(self) -> None:
        if self._threads_started:
            return
        with self._chan_lock:
            if self._threads_started:
                return
            self._threads_started = True
            pid = os.getpid()
            threading.Thread(target=self._maintain, args=(pid,), name="interlock-redis-renewer",
                             daemon=True).start()
            threading.Thread(target=self._subscribe_loop, args=(pid,), name="interlock-redis-subscriber",
                             daemon=True).start()

    def _ensure_subscribed(self) -> None:
        if self._subscribed.is_set():
            return
        self._ensure_threads()
        # Waiting without a subscription is still correct (polls at lease expiries), only slower.
        self._subscribed.wait(min(max(self.opts.ttl / 3.0, 0.2), 10.0))

    # -- the subscription: one reader at a time (leader/follower) -----------------------------------
    def _poke(self) -> None:
        try:
            os.write(self._pipe[1], b"x")
        except OSError:
            pass  # the pipe is full: the reader wakes anyway

    def _promote_locked(self) -> bool:
        """Make the oldest waiting thread the reader (under ``_mx``, with no reader)."""
        for cell in self._sync_cells.values():
            if cell.state == WAITING and not cell.signalled:
                self._leader = cell
                cell.wake()
                return True
        return False

    def _leave_lead(self, cell: _Cell) -> None:
        with self._mx:
            if self._leader is not cell:
                return
            self._leader = None
            if not self._sub_broken and self._sub_sock is not None and self._promote_locked():
                return
            if self._cells or self._sub_broken or self._sub_sock is None:
                # asyncio waiters (or a reconnect) need the subscriber thread; waking it otherwise
                # would take the GIL from this thread just as its acquire() returns.
                self._sub_evt.set()

    def _wait_cell(self, cell: _Cell, until: float | None) -> bool:
        """Block the calling thread until ``cell`` is granted (True) or ``until`` passes (False).

        The first waiting thread reads the subscription itself, so its own grant costs no thread
        switch; others wait on their cell and are woken by the reader (which, when its own grant
        arrives, times out or is interrupted, hands the socket to the oldest waiting thread)."""
        try:
            while True:
                with self._mx:
                    if cell.signalled:  # woken: hold the one-shot lock again before waiting more
                        cell.lock.acquire(False)
                        cell.signalled = False
                    if cell.state != WAITING:
                        return cell.state == GRANTED
                    usable = self._sub_sock is not None and not self._sub_broken
                    if self._leader is cell and not usable:  # broken: the subscriber thread reconnects
                        self._leader = None
                        self._sub_evt.set()
                    elif self._leader is None and usable:
                        self._leader = cell
                    lead = self._leader is cell
                remaining = None if until is None else until - _monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if lead:
                    self._read_sub(remaining, False)
                elif not cell.lock.acquire(True, -1 if remaining is None else remaining):
                    with self._mx:
                        return cell.state == GRANTED
                else:
                    with self._mx:
                        cell.signalled = False
        finally:
            self._leave_lead(cell)

    def _read_sub(self, timeout: float | None, thread: bool) -> None:
        """Read the subscription once (the caller is the reader) and deliver what arrived. A silent
        subscription is PINGed after ``interval`` and declared broken one interval later."""
        sock = self._sub_sock
        interval = max(self.opts.renew_interval, 0.05)
        t = interval if timeout is None else max(1e-4, min(timeout, interval))
        try:
            if thread:
                pending = getattr(sock, "pending", None)
                if not (pending and pending()):
                    # poll(), not select(): select() refuses descriptors >= 1024 (FD_SETSIZE), which
                    # a process with many open files reaches. An error or hang-up counts as readable:
                    # recv() then reports it.
                    sp = self._sub_poll
                    if sp is None or sp[0] is not sock:
                        poller = select.poll()
                        poller.register(sock, select.POLLIN)
                        poller.register(self._pipe[0], select.POLLIN)
                        sp = self._sub_poll = (sock, poller)
                    fired = {fd for fd, _ in sp[1].poll(math.ceil(t * 1000))}
                    if self._pipe[0] in fired:
                        try:
                            os.read(self._pipe[0], 4096)
                        except OSError:
                            pass
                    ready = [sock] if sock.fileno() in fired else []
                else:
                    ready = [sock]
                data = None
                if ready:
                    sock.settimeout(t)  # a TLS record may still be incomplete
                    try:
                        data = sock.recv(65536)
                    except TimeoutError:
                        pass
            else:
                sock.settimeout(t)
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    data = None
            now = _monotonic()
            if data is None:
                if self._sub_pinged:
                    if now - self._sub_pinged >= interval:
                        raise Transient("the subscription went silent")
                elif now - self._sub_last >= interval:
                    sock.sendall(_PING)
                    self._sub_pinged = now
                return
            if not data:
                raise Transient("the subscription was closed by the server")
            self._sub_last = now
            self._sub_pinged = 0.0
            buf = self._sub_buf + data if self._sub_buf else data
            pos = 0
            try:
                n = len(buf)
                while pos < n:
                    if buf.startswith(_MESSAGE, pos):  # the usual frame, parsed inline (wake-up path)
                        i = pos + len(_MESSAGE)
                        j = buf.find(b"\r\n", i)
                        if j < 0:
                            break
                        k = j + 4 + int(buf[i:j])  # the payload's '$'
                        j = buf.find(b"\r\n", k)
                        if j < 0:
                            break
                        if buf[k] != 36:
                            raise ValueError("bad RESP message frame")
                        end = j + 2 + int(buf[k + 1 : j])
                        if end + 2 > n:
                            break
                        pos = end + 2
                        self._on_message(buf[j + 2 : end])
                        continue
                    msg, pos = _parse(buf, pos)
                    if isinstance(msg, list) and len(msg) == 3 and msg[0] == b"message":
                        self._on_message(msg[2])
            except _Incomplete:
                pass
            self._sub_buf = buf[pos:]
        except BaseException as exc:
            # Also on an interrupt (KeyboardInterrupt in a waiting thread): bytes already read may
            # not have been parsed, so the stream is resynchronised by a reconnect, whose re-read of
            # every queued request recovers any grant message lost with them.
            with self._mx:
                self._sub_broken = True
                self._sub_evt.set()
            if not isinstance(exc, Exception):
                raise

    def _subscribe_loop(self, pid: int) -> None:
        channel = (self.opts.prefix + "c:" + self.sid).encode()
        delay = 0.0
        interval = max(self.opts.renew_interval, 0.05)
        while not self._stopping and os.getpid() == pid:
            conn = None
            try:
                conn = self.transport.subscriber_connection()
                conn.connect()
                sock = conn._sock
                sock.settimeout(min(max(self.opts.ttl / 3.0, 0.2), 10.0))
                sock.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(channel), channel))
                buf = b""
                while True:
                    more = sock.recv(65536)
                    if not more:
                        raise Transient("the subscription was closed by the server")
                    buf += more
                    try:
                        reply, pos = _parse(buf, 0)
                        break
                    except _Incomplete:
                        continue
                if not (isinstance(reply, list) and reply and reply[0] == b"subscribe"):
                    raise Transient(f"unexpected reply to SUBSCRIBE: {reply!r}")
                with self._mx:
                    self._sub_epoch += 1
                    self._sub_sock = sock
                    self._sub_buf = buf[pos:]
                    self._sub_last = _monotonic()
                    self._sub_pinged = 0.0
                    self._sub_broken = False
                if self._sub_resets:
                    self._poll_all()  # grants published while we were not subscribed were lost
                self._sub_resets += 1
                self._subscribed.set()
                delay = 0.0
                while not self._stopping:
                    with self._mx:
                        if self._sub_broken:
                            raise Transient("the subscription broke")
                        if self._leader is None and not self._promote_locked() and self._cells:
                            self._leader = _THREAD
                        mine = self._leader is _THREAD
                        if not mine:
                            self._sub_evt.clear()
                    if not mine:
                        self._sub_evt.wait(interval)
                        continue
                    try:
                        self._read_sub(None, True)
                    finally:
                        with self._mx:
                            if self._leader is _THREAD:
                                self._leader = None
            except Exception:
                self._subscribed.clear()
                with self._mx:
                    self._sub_sock = None
                    self._sub_broken = False
                    if self._leader is _THREAD:
                        self._leader = None
                # A waiting thread still reading must stop before the socket closes: it re-checks
                # ``_sub_sock`` and becomes a follower; wait for it to hand the socket back.
                for _ in range(200):
                    with self._mx:
                        if self._leader is None or self._leader is _THREAD:
                            break
                    time.sleep(0.005)
                if conn is not None:
                    try:
                        conn.disconnect()
                    except Exception:
                        pass
                time.sleep(delay)
                delay = min(max(delay * 2, 0.05), 1.0)

    def _on_message(self, data: bytes) -> None:
        parts = data.split()
        for i in range(0, len(parts) - 2, 3):
            self._deliver(parts[i].decode(), int(parts[i + 1]), parts[i + 2] == b"1")

    def _poll_all(self) -> None:
        # (ACQUIREs in flight poll once they are queued: see _register's ``repoll``)
        now = _monotonic()
        with self._mx:
            for ch in self._active:
                if ch._cells:
                    ch._poll_at = now
        self._wake.set()

    def _maintain(self, pid: int) -> None:
        """Keeps time only: renewals, polls and cancels run on the I/O pool, so a slow or cut-off
        server never delays marking a lease lost at its deadline."""
        next_renew = _monotonic() + self.opts.renew_interval
        while not self._stopping and os.getpid() == pid:
            try:
                with self._mx:
                    deferred, self._deferred = self._deferred, []
                io = self._io()
                for ch, rid, _ in deferred:
                    io.submit(self._cancel_now, ch, rid)
                tick = _monotonic() >= next_renew
                if tick and not self._renewing:
                    self._renewing = True
                    io.submit(self._renew_round)
                    next_renew = _monotonic() + self.opts.renew_interval
                wake_at = self._check_deadlines()
                now = _monotonic()
                with self._mx:
                    polls = [ch for ch in self._active
                             if ch._poll_at is not None and ch._poll_at <= now and ch not in self._polling]
                    for ch in polls:
                        ch._poll_at = None
                        self._polling.add(ch)
                    if tick:
                        # Idle primitives leave _active only at a renewal tick, not at every wake-up:
                        # otherwise a loop of uncontended acquire+release would find none active and
                        # wake this thread (_add_lease) on every acquire, to compete for the GIL with
                        # the release that follows.
                        self._active = {ch for ch in self._active
                                        if ch._leases or ch._cells or ch in self._polling}
                    active = list(self._active)
                    times = [ch._poll_at for ch in active if ch._poll_at is not None]
                for ch in polls:
                    io.submit(self._poll_round, ch)
                if active:
                    times.append(next_renew)
                else:
                    next_renew = _monotonic() + self.opts.renew_interval
                if wake_at is not None:
                    times.append(wake_at)
                timeout = max(0.0, min(times) - _monotonic()) if times else None
                self._wake.wait(timeout)
                self._wake.clear()
            except Exception as exc:  # never let the renewer die
                if isinstance(exc, RuntimeError) and "shutdown" in str(exc):
                    # The I/O pool refuses work after close() or once the interpreter exits (then
                    # the atexit hook releases held leases): nothing left for this thread to do.
                    return
                import warnings

                warnings.warn(f"interlock: redis maintenance error: {exc!r}", RuntimeWarning, stacklevel=1)
                time.sleep(0.05)

    def _renew_round(self) -> None:
        try:
            self._renew_all()
        finally:
            self._renewing = False

    def _poll_round(self, ch: RedisChannel) -> None:
        try:
            self._poll(ch)
        finally:
            with self._mx:
                self._polling.discard(ch)
            self._wake.set()

    def _cancel_now(self, ch: RedisChannel, rid: str) -> None:
        try:
            self._call(_Call(S.CANCEL, ch.target, (rid, "r"), _monotonic() + self.opts.ttl))
        except BackendError:
            pass  # unreachable: the request expires on the server within its TTL

    def _check_deadlines(self) -> float | None:
        """Mark leases lost at their conservative deadline; return the next deadline."""
        now = _monotonic()
        lost: list[tuple[RedisChannel, Lease]] = []
        nxt: float | None = None
        with self._mx:
            for ch in self._active:
                for rid, ref in list(ch._leases.items()):
                    lease = ref()
                    if lease is None or lease._state != HELD:
                        del ch._leases[rid]
                        continue
                    d = lease._deadline
                    if d is not None and d <= now:
                        del ch._leases[rid]
                        lost.append((ch, lease))
                    elif d is not None and (nxt is None or d < nxt):
                        nxt = d
        for ch, lease in lost:
            lease._set_lost("it could not be renewed before its deadline (server unreachable or too slow)")
            self._defer_cancel(ch, lease.backend_data, None)
        return nxt

    def _renew_all(self) -> None:
        with self._mx:
            # (ACQUIREs in flight have no cell yet: see _Cell)
            work = [(ch, [rid for rid, r in ch._leases.items() if r() is not None], list(ch._cells))
                    for ch in self._active]
        work = [(ch, ls, cs) for ch, ls, cs in work if ls or cs]
        if not work:
            return
        sent = _monotonic()
        calls = [(S.RENEW, ch.target, ("", self.ttl_ms, *ls, *cs)) for ch, ls, cs in work]
        try:
            replies = self.transport.call_many(calls)
        except Exception as exc:  # pragma: no cover - call_many converts errors
            replies = [exc] * len(calls)
        span = self.lease_span
        for (ch, ls, cs), reply in zip(work, replies, strict=False):
            if isinstance(reply, BaseException):
                continue  # the deadline check marks leases lost if this keeps failing
            missing = {m.decode() if isinstance(m, bytes) else m for m in reply}
            gone_cells = False
            lost: list[tuple[str, Lease]] = []
            with self._mx:
                for rid in ls:
                    ref = ch._leases.get(rid)
                    lease = ref() if ref is not None else None
                    if lease is None:
                        continue
                    if rid in missing or lease._state != HELD or (lease._deadline or 0) <= sent:
                        del ch._leases[rid]
                        lost.append((rid, lease))
                    else:
                        lease._deadline = sent + span
                for rid in cs:
                    cell = ch._cells.get(rid)
                    if cell is None:
                        continue
                    if rid in missing:
                        gone_cells = True
                    else:
                        cell.confirmed = sent
                if gone_cells:
                    ch._poll_at = _monotonic()
            for rid, lease in lost:
                if lease._state == HELD:
                    lease._set_lost(
                        "the server no longer had it (it expired before it was renewed, or the server lost "
                        "its state)" if rid in missing else "its deadline passed before it was renewed"
                    )
                if rid not in missing:
                    self._defer_cancel(ch, rid, None)

    def _poll(self, ch: RedisChannel) -> None:
        with self._mx:
            ids = list(ch._cells)  # (ACQUIREs in flight have no cell yet: see _Cell)
        if not ids:
            return
        sent = _monotonic()
        try:
            r = self._call(_Call(S.POLL, ch.target, ("", *ids), sent + self.opts.renew_interval))
        except BackendError:
            self._schedule_poll(ch, int(self.opts.renew_interval * 1000))
            return
        if int(r[0]) == -1 and len(r) > 1 and isinstance(r[1], bytes):
            return  # capacity mismatch reply: nothing to poll
        self._schedule_poll(ch, int(r[0]))
        for i, rid in enumerate(ids):
            status, token, died = int(r[1 + 3 * i]), int(r[2 + 3 * i]), int(r[3 + 3 * i])
            if status == 1:
                self._deliver(rid, token, bool(died))
            elif status == -1:
                self._requeue(ch, rid)

    def _requeue(self, ch: RedisChannel, rid: str) -> None:
        """A queued request the server forgot (it expired while this process was stopped or cut off,
        or the server restarted): queue it again, at the back."""
        with self._mx:
            cell = self._cells.get(rid)
            if cell is None or cell.state != WAITING or cell.inflight is not None:
                return
            # Invariant: while ``inflight`` is set, a waiter that withdraws sends its cancel only after
            # this ACQUIRE has completed (``_Call.after``), so the server sees the re-queue first and the
            # cancel then withdraws it (or, for a timeout, keeps a grant it made). Cancelling here
            # instead would race with that waiter keeping the grant.
            done = cell.inflight = concurrent.futures.Future()
        try:
            args = cell.args
            sent = _monotonic()
            try:
                r = self._call(_Call(S.ACQUIRE, ch.target, args, sent + self.opts.renew_interval))
            except BackendError:
                self._schedule_poll(ch, int(self.opts.renew_interval * 1000))
                return
            if r[0] == 1:
                with self._mx:
                    cell.confirmed = sent
                self._deliver(rid, int(r[1]), bool(r[2]))
            elif r[0] == 0:
                cell.confirmed = sent
                self._schedule_poll(ch, int(r[1]))
        finally:
            with self._mx:
                cell.inflight = None
            done.set_result(None)

    # -- inspection --------------------------------------------------------------------------------
    def _statistics(self, name: str, target: Target) -> Statistics | None:
        try:
            r = self._call(_Call(S.STATUS, target, (), _monotonic() + self.opts.ttl))
        except BackendError:
            raise
        now_ms, meta, hs, ws = int(r[0]), r[1], r[2], r[3]
        if not meta[0]:
            return None
        kind = meta[0].decode()
        cap, bounded, avail = int(meta[1]), meta[2] == b"1", int(meta[3])
        last = int(meta[4]) if meta[4] else None
        holders = []
        for i in range(0, len(hs), 3):
            _sid, p, md, tok, t, info = _split(hs[i + 1])
            who, host, pid, cmd = _info_fields(info)
            holders.append(HolderInfo(
                owner=who, permits=int(p), token=int(tok), mode=_MODE_NAME.get(md[:1], md),
                held_for=max(0.0, (now_ms - int(t)) / 1000.0), pid=pid, host=host, command=cmd,
                expires_in=(float(hs[i + 2]) - now_ms) / 1000.0,
            ))
        holders.sort(key=lambda h: h.token)
        waiters = []
        for i in range(0, len(ws), 3):
            if not ws[i + 1]:
                continue
            _sid, p, md, _seq, t, info = _split(ws[i + 1])
            who, host, pid, cmd = _info_fields(info)
            waiters.append(WaiterInfo(
                owner=who, permits=int(p), mode=_MODE_NAME.get(md[:1], md),
                waiting_for=max(0.0, (now_ms - int(t)) / 1000.0), pid=pid, host=host, command=cmd,
            ))
        return Statistics(
            name=name, kind=kind, capacity=cap, available=avail, holders=tuple(holders), waiters=tuple(waiters),
            bounded=bounded, last_token=last, backend=self.display_url,
            extra={"ttl": self.opts.ttl},
        )

    def status(self, name: str | None = None) -> list[Statistics]:
        if name is not None:
            names = [name]
        else:
            pattern = _glob_escape(self.opts.prefix) + "{*}:m"
            start = len(self.opts.prefix) + 1
            names = sorted({unquote(k.decode()[start:-3]) for k in self.transport.scan(pattern)})
        out = []
        for n in names:
            base = self._key_base(n)
            target = Target.make([base + s for s in (":m", ":q", ":x")], [])
            s = self._statistics(n, target)
            if s is not None:
                out.append(s)
        return out

    def close(self) -> None:
        """Stop the helper threads and close connections. Held leases are not released (they expire)."""
        self._stopping = True
        self._wake.set()
        if self._transport is not None:
            self._transport.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def _release_all_at_exit(self) -> None:
        with self._mx:
            work = [(ch, rid) for ch in self._active for rid in ch._leases]
        for ch, rid in work:
            try:
                self.transport.call(S.RELEASE, ch.target, (rid, "r", 0, "0"))
            except Exception:
                pass


def _split(rec: bytes) -> tuple[str, str, str, str, str, str]:
    parts = rec.decode("utf-8", "replace").split("|", 5)
    parts += [""] * (6 - len(parts))
    return parts[0], parts[1], parts[2], parts[3], parts[4], parts[5]


def _info_fields(info: str) -> tuple[str, str | None, int | None, str | None]:
    f = info.split("\t")
    who = f[0]
    host = f[1] if len(f) > 1 else None
    pid = int(f[2]) if len(f) > 2 and f[2].isdigit() else None
    cmd = f[3] if len(f) > 3 else None
    return who, host, pid, cmd


def _glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


def _reset_after_fork() -> None:
    for b in list(_backends):
        b._after_fork()


def _release_at_exit() -> None:
    # Return held permits now instead of making the next holder wait out the TTL.
    for b in list(_backends):
        b._stopping = True
        b._release_all_at_exit()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
atexit.register(_release_at_exit)

__all__ = ["RedisBackend", "RedisChannel"]

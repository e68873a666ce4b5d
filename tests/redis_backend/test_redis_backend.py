"""The Redis backend beyond the contract suite: URLs, names as data, status, FIFO and weights across
processes' worth of clients, security (passwords, ACL tenants, TLS), cluster."""

from __future__ import annotations

import logging
import sys
import threading
import time

import pytest
import redis

import interlock
from interlock.backends.redis import RedisBackend
from interlock.testing.history import Recorder, check, check_fifo
from interlock.testing.servers import AclUser, RedisCluster, RedisServer
from redis_backend.helpers import url_for

pytestmark = pytest.mark.servers


# -- URLs: validated before any I/O -------------------------------------------------------------------
@pytest.mark.parametrize("query", ["ttl=0", "ttl=abc", "prefix=a{b", "prefix=a%20b", "wait_replicas=x",
                                   "margin=100", "max_connections=0", "cluster=maybe"])
def test_bad_options_raise_before_any_io(query):
    with pytest.raises(interlock.InvalidArgument) as ei:
        RedisBackend(f"redis://:s3cret@127.0.0.1:1/0?{query}")  # port 1: any I/O would fail differently
    assert "s3cret" not in str(ei.value)


def test_bad_url_shapes():
    with pytest.raises(interlock.InvalidArgument):
        RedisBackend("redis://127.0.0.1:1/notanumber")
    with pytest.raises(interlock.InvalidArgument):
        RedisBackend("unix://")


def test_missing_redis_py_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(interlock.MissingDependency) as ei:
        RedisBackend("redis://127.0.0.1:1/0")
    assert "interlock[redis]" in str(ei.value)


# -- names are data ------------------------------------------------------------------------------------
NAMES = ["a", "a}", "{a}", "a%7D", "a:b", "a b", "ä/../x", "*", "a\\", "}{", "%"]


def test_names_never_collide_and_share_one_hash_tag(redis_server, prefix):
    url = url_for(redis_server, prefix, 5)
    leases = [interlock.Lock(n, url=url).acquire(timeout=2) for n in NAMES]  # all distinct: none blocks
    keys = [k.decode() for k in redis.Redis(**redis_server.client_kwargs()).keys("*")]
    mine = [k for k in keys if k.startswith(prefix)]
    assert mine and all(k.startswith(prefix) for k in mine)
    from redis.crc import key_slot

    by_name: dict[str, set[int]] = {}
    for k in mine:
        tag = k[len(prefix):k.index("}") + 1]
        by_name.setdefault(tag, set()).add(key_slot(k.encode()))
    assert len(by_name) == len(NAMES)
    assert all(len(slots) == 1 for slots in by_name.values())
    assert sorted(s.name for s in interlock.status(url)) == sorted(NAMES)
    for lease in leases:
        lease.release()


def test_status_shows_holders_and_waiters_in_order(redis_server, prefix):
    url = url_for(redis_server, prefix, 5)
    sem = interlock.Semaphore("st", 3, url=url)
    held = sem.acquire(2)
    started = []

    def wait(n: int) -> None:
        started.append(n)
        sem.acquire(n, timeout=10).release()

    threads = []
    for n in (2, 1, 3):
        t = threading.Thread(target=wait, args=(n,), name=f"waiter-{n}")
        t.start()
        threads.append(t)
        while len(sem.statistics().waiters) < len(threads):
            time.sleep(0.005)
    st = interlock.status(url, "st")[0]
    assert st.kind == "semaphore" and st.capacity == 3 and st.available == 1
    (h,) = st.holders
    assert h.permits == 2 and h.token == held.token and h.pid is not None and h.host
    assert 0 < h.expires_in <= 5
    assert [w.permits for w in st.waiters] == [2, 1, 3]  # FIFO: the 1 does not pass the 2 at the head
    assert [w.owner for w in st.waiters] == ["thread 'waiter-2'", "thread 'waiter-1'", "thread 'waiter-3'"]
    held.release()
    for t in threads:
        t.join(10)
    assert sem.statistics().available == 3


def test_fifo_and_exclusion_across_backends(redis_server, prefix, seed):
    # Four "processes" (separate backends: own connections, subscription and renewer) x 3 threads.
    url = url_for(redis_server, prefix, 5)
    locks = [interlock.Lock("fifo", backend=RedisBackend(url)) for _ in range(4)]
    rec = Recorder()

    def run(i: int) -> None:
        for _ in range(10):
            with rec.acquire(f"c{i}", "fifo") as op:
                lease = locks[i % 4].acquire(timeout=30)
                op.token = lease.token
            with rec.release(f"c{i}", "fifo", token=lease.token):
                lease.release()

    ts = [threading.Thread(target=run, args=(i,)) for i in range(12)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    h = rec.events()
    assert check(h, capacity=1) == []
    assert check_fifo(h, capacity=1, slack=0.005) == []


# -- security --------------------------------------------------------------------------------------
SECRET = "pw-Zq8%/x"  # has URL-special characters


@pytest.fixture(scope="module")
def locked_server():
    users = [AclUser("alice", SECRET + "a", ("~tenant-a:*", "&tenant-a:*", "+@all")),
             AclUser("bob", SECRET + "b", ("~tenant-b:*", "&tenant-b:*", "+@all"))]
    with RedisServer(password=SECRET, acl_users=users) as srv:
        yield srv


def test_wrong_password_is_an_error_without_the_password(locked_server, caplog):
    caplog.set_level(logging.DEBUG)
    bad = locked_server.url_for(password="wrong-" + SECRET)
    with pytest.raises(interlock.BackendError) as ei:
        interlock.Lock("x", url=bad + "?ttl=1").acquire(timeout=1)
    assert "authentication" in str(ei.value)
    nouser = locked_server.url_for(username="nobody", password=SECRET)  # never falls back to "default"
    with pytest.raises(interlock.BackendError):
        interlock.Lock("x", url=nouser + "?ttl=1").acquire(timeout=1)
    for text in (str(ei.value), repr(ei.value), caplog.text):
        assert SECRET not in text and "wrong-" not in text


def test_no_password_in_reprs_statuses_or_errors(locked_server, prefix, caplog):
    caplog.set_level(logging.DEBUG)
    url = f"{locked_server.url}?prefix={prefix}&ttl=1"
    lock = interlock.Lock("p", url=url)
    lease = lock.acquire()
    texts = [repr(lock), repr(lease), repr(lock.backend), lock.backend.display_url, repr(lock.statistics()),
             repr(interlock.status(url))]
    with pytest.raises(interlock.CapacityMismatch) as ei:
        interlock.Semaphore("p", 3, backend=RedisBackend(url)).acquire(timeout=0.5)
    texts += [str(ei.value), caplog.text]
    lease.release()
    for t in texts:
        assert SECRET not in t
        assert "pw-Zq8" not in t


def test_acl_tenants_cannot_touch_each_others_locks(locked_server):
    a = locked_server.url_for(username="alice", password=SECRET + "a")
    b = locked_server.url_for(username="bob", password=SECRET + "b")
    la = interlock.Lock("shared-name", url=a + "?prefix=tenant-a:&ttl=2")
    lb = interlock.Lock("shared-name", url=b + "?prefix=tenant-b:&ttl=2")
    with la.acquire(timeout=2), lb.acquire(timeout=2):  # same name, separate tenants: no contention
        pass
    intruder = interlock.Lock("shared-name", url=b + "?prefix=tenant-a:&ttl=2")
    with pytest.raises(interlock.BackendError) as ei:
        intruder.acquire(timeout=1)
    assert "ACL" in str(ei.value)
    assert SECRET not in str(ei.value)


def test_tls_with_generated_certificates(prefix):
    with RedisServer(tls=True, tls_client_auth=True) as srv:
        assert srv.tls is not None
        url = (f"{srv.url}?prefix={prefix}&ttl=2&ssl_ca_certs={srv.tls.ca_file}"
               f"&ssl_certfile={srv.tls.client_cert_file}&ssl_keyfile={srv.tls.client_key_file}")
        assert url.startswith("rediss://")
        lock = interlock.Lock("tls", url=url)
        with lock.acquire(timeout=5) as lease:
            t = threading.Thread(target=lambda: lock.acquire(timeout=5).release())
            t.start()
            time.sleep(0.05)
        t.join(10)
        assert lease.token > 0
        assert lock.statistics().available == 1


def test_unix_socket_url_and_from_client(prefix):
    with RedisServer(unix_socket=True) as srv:
        lock = interlock.Lock("u", url=srv.unix_url.replace("?db=0", f"?db=0&prefix={prefix}&ttl=2"))
        with lock.acquire(timeout=5) as l1:
            assert l1.held
        client = redis.Redis(**srv.client_kwargs())
        b = RedisBackend.from_client(client, prefix=prefix, ttl=2)
        with interlock.Lock("u", backend=b).acquire(timeout=5) as l2:
            assert l2.token > l1.token


# -- cluster ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_redis_cluster_three_nodes(prefix):
    with RedisCluster(nodes=3) as cluster:
        host, port = cluster.startup_nodes[0]
        url = f"redis://{host}:{port}/0?cluster=true&prefix={prefix}&ttl=2"
        names = [f"n{i}" for i in range(12)]
        from redis.crc import key_slot

        assert len({key_slot(f"{prefix}{{{n}}}:m".encode()) * 3 // 16384 for n in names}) == 3  # every node
        rec = Recorder()
        sems = {n: interlock.Semaphore(n, 2, url=url) for n in names}

        def run(i: int) -> None:
            for j in range(6):
                n = names[(i + j) % len(names)]
                with rec.acquire(f"c{i}", n) as op:
                    lease = sems[n].acquire(timeout=20)
                    op.token = lease.token
                time.sleep(0.002)
                with rec.release(f"c{i}", n, token=lease.token):
                    lease.release()

        ts = [threading.Thread(target=run, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert check(rec.events(), capacity=2) == []
        assert sum(1 for e in rec.events() if e.op == "acquire" and e.ok) == 48
        # A contended handoff on the cluster is pushed (grant published on the key's node).
        lk = interlock.Lock("handoff", url=url)
        first = lk.acquire()
        got: list[interlock.Lease] = []
        t = threading.Thread(target=lambda: got.append(lk.acquire(timeout=10)))
        t.start()
        while not lk.statistics().waiters:
            time.sleep(0.005)
        first.release()
        t.join(10)
        assert got and got[0].token > first.token
        got[0].release()
        assert {s.name for s in interlock.status(url)} >= set(names)


# -- key layout invariants (the scripts skip work based on them) ---------------------------------------
def test_keys_always_carry_an_idle_expiry_and_the_queue_flag_follows_the_queue(redis_server, prefix):
    """The scripts refresh the keys' idle expiry about once per idle_expiry/2 (not on every grant) and
    skip reading the queue while the hash says it is empty; check both against the server's state after
    each step: uncontended, a weighted head that is put back (its queue key is recreated), a cancel."""
    url = url_for(redis_server, prefix, 5)
    r = redis.Redis(**redis_server.client_kwargs())
    sem = interlock.Semaphore("w", 3, url=url)
    base = f"{prefix}{{w}}"

    def check_state() -> None:
        ttls = {k.decode(): int(r.pttl(k)) for k in r.keys(prefix + "*")}
        assert ttls and all(t > 0 for t in ttls.values()), ttls  # no key without an idle expiry
        if r.zcard(base + ":q"):
            assert r.hget(base + ":m", "q") != b"0"  # a non-empty queue is never marked empty

    sem.acquire(3).release()
    check_state()
    a, b = sem.acquire(1), sem.acquire(1)
    check_state()
    got: list[interlock.Lease] = []
    t = threading.Thread(target=lambda: got.append(sem.acquire(3, timeout=30)))
    t.start()
    while not sem.statistics().waiters:
        time.sleep(0.01)
    check_state()
    with pytest.raises(interlock.WouldBlock):  # 1 is free, but the queued head comes first
        sem.acquire(1, blocking=False)
    a.release()  # -> 2 free: the head (3) is popped, does not fit, and is put back in its place
    check_state()
    assert [w.permits for w in sem.statistics().waiters] == [3]
    b.release()
    t.join(30)
    assert got and got[0].permits == 3
    check_state()
    held = got[0]
    with pytest.raises(interlock.AcquireTimeout):  # queued, then withdrawn
        sem.acquire(1, timeout=0.2)
    check_state()
    held.release()
    assert r.hget(base + ":m", "a") == b"3"
    sem.acquire(3).release()
    check_state()


def test_a_silent_server_times_out_the_round_trip() -> None:
    """The command path keeps the connection's timeout in the kernel (SO_RCVTIMEO, no poll() per
    call): a server that accepts but never answers must still make the call fail, not hang."""
    import socket

    from interlock.backends.redis._transport import _roundtrip

    listener = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    sock = socket.create_connection(listener.getsockname())
    sock.settimeout(0.2)

    class Conn:
        _sock = sock

    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            _roundtrip(Conn(), b"*1\r\n$4\r\nPING\r\n")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(30.0)  # liveness bound, not a latency assertion
    try:
        assert not t.is_alive(), "the round trip hung on a silent server"
        assert isinstance(outcome[0], OSError), outcome  # a timeout: the transport retries it (Transient)
    finally:
        sock.close()
        listener.close()

"""FencedStore: the token rule, thread safety, the TCP server and clients in other processes."""

from __future__ import annotations

import itertools
import multiprocessing
import pickle
import random
import subprocess
import sys
import threading

import pytest

from interlock.testing.fenced import (
    FencedStore,
    FencedStoreClient,
    FencedStoreError,
    FencedStoreServer,
    StaleTokenError,
)
from interlock.testing.history import Event, check_writes


def test_token_rule() -> None:
    store = FencedStore()
    assert store.max_token("r") is None
    assert store.write("r", 5, "a", client="A")
    assert store.write("r", 5, "b", client="A"), "the same token may write again"
    assert store.write("r", 7, "c", client="B")
    assert not store.write("r", 6, "d", client="A"), "stale"
    assert store.read("r") == ["a", "b", "c"]
    assert store.max_token("r") == 7
    assert store.write("other", 1, "x"), "resources are independent"
    with pytest.raises(StaleTokenError) as info:
        store.write_checked("r", 1, "e")
    assert (info.value.resource, info.value.token, info.value.max_token) == ("r", 1, 7)
    assert pickle.loads(pickle.dumps(info.value)).max_token == 7
    log = store.log()
    assert [r.accepted for r in log] == [True, True, True, False, True, False]
    assert all(a.time <= b.time for a, b in itertools.pairwise(log))
    assert [r.max_token for r in log if r.resource == "r"] == [None, 5, 5, 7, 7]
    assert [r.token for r in store.rejected()] == [6, 1]
    assert store.resources() == ["other", "r"]
    assert check_writes(store.history()) == []


@pytest.mark.parametrize("token", [True, 1.5, "3", None])
def test_bad_tokens_rejected_before_anything(token: object) -> None:
    store = FencedStore()
    with pytest.raises(FencedStoreError):
        store.write("r", token, "v")  # type: ignore[arg-type]
    with pytest.raises(FencedStoreError):
        store.write(1, 1, "v")  # type: ignore[arg-type]
    assert store.log() == []


def test_history_of_a_broken_store_is_caught() -> None:
    events = [Event("B", "write", 1.0, 1.0, True, 5, 1, "r"), Event("A", "write", 2.0, 2.0, True, 4, 1, "r")]
    assert check_writes(events)


def test_threads(rng: random.Random) -> None:
    store = FencedStore()
    tokens = [rng.randrange(100) for _ in range(2000)]

    def worker(chunk: list[int]) -> None:
        for t in chunk:
            store.write("r", t, t)

    threads = [threading.Thread(target=worker, args=(tokens[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = store.read("r")
    assert accepted == sorted(accepted), "accepted tokens never go down"
    assert len(store.log()) == len(tokens)
    assert store.max_token("r") == max(tokens)
    assert check_writes(store.history()) == []


def test_tcp_round_trip(fenced_store: FencedStoreServer) -> None:
    with FencedStoreClient(fenced_store.address, client="c1") as c:
        assert c.ping()
        assert c.write("r", 3, {"n": 1})
        assert not c.write("r", 2, {"n": 2})
        with pytest.raises(StaleTokenError):
            c.write_checked("r", 1)
        assert c.read("r") == [{"n": 1}]
        assert c.max_token("r") == 3
        assert c.max_token("nothing") is None
        log = c.log()
        assert [(r.client, r.accepted) for r in log] == [("c1", True), ("c1", False), ("c1", False)]
        assert [e.ok for e in c.history()] == [True, False, False]
    store = fenced_store.store
    assert store.read("r") == [{"n": 1}]


def test_tcp_rejects_garbage(fenced_store: FencedStoreServer) -> None:
    import socket

    with socket.create_connection(fenced_store.address, timeout=5) as s:
        f = s.makefile("rwb")
        for line in (b"not json\n", b"[1,2]\n", b'{"op":"write","resource":"r","token":"1"}\n', b'{"op":"eval"}\n'):
            f.write(line)
            f.flush()
            reply = f.readline()
            assert b'"ok":false' in reply, reply
    assert fenced_store.store.log() == []


def _client_process(address: tuple[str, int], name: str, tokens: list[int]) -> None:
    with FencedStoreClient(address, client=name) as c:
        for t in tokens:
            c.write("shared", t, f"{name}:{t}")


def test_clients_in_other_processes(fenced_store: FencedStoreServer) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_client_process, args=(fenced_store.address, f"p{i}", list(range(i, 60, 3))))
        for i in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    log = fenced_store.store.log()
    assert len(log) == 60
    assert {r.client for r in log} == {"p0", "p1", "p2"}
    assert check_writes(fenced_store.store.history()) == []


def test_stop_closes_client_connections() -> None:
    server = FencedStoreServer().start()
    client = FencedStoreClient(server.address, timeout=2)
    assert client.write("r", 1)
    server.stop()
    with pytest.raises(FencedStoreError):
        client.write("r", 2)
    client.close()


def test_module_main_serves_in_a_separate_process() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "interlock.testing.fenced"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("PORT ")
        with FencedStoreClient(("127.0.0.1", int(line.split()[1]))) as c:
            assert c.write("r", 1, "v")
            assert c.read("r") == ["v"]
    finally:
        proc.terminate()
        assert proc.wait(10) == 0

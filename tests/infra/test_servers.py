"""Real servers: Redis (plain, ACL, TLS, unix socket), Valkey, Redis Cluster, PostgreSQL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interlock.testing.servers import (
    PostgresServer,
    RedisCluster,
    RedisServer,
    RespError,
    ServerError,
    TLSFiles,
    free_port,
    make_tls_files,
    process_exists,
    redact_url,
)

from .conftest import need_redis, need_valkey

redis = pytest.importorskip("redis")

pytestmark = pytest.mark.servers


def gone(pid: int | None, timeout: float = 5.0) -> bool:
    assert pid is not None
    deadline = time.monotonic() + timeout
    while process_exists(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- Redis --------------------------------------------------------------------------------------


def test_start_talk_stop(redis_server: RedisServer) -> None:
    r = redis.Redis(**redis_server.client_kwargs())
    assert r.ping()
    assert r.set("k", "v") and r.get("k") == b"v"
    assert redis_server.execute("GET", "k") == b"v"
    assert redis_server.version.startswith("7.")
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis.Redis.from_url(redis_server.url).get("k") == b"v"
    config = r.config_get("*")
    assert config["save"] == "" and config["appendonly"] == "no"
    assert config["bind"] == "127.0.0.1"
    assert Path(config["dir"]) == redis_server.directory
    r.close()


def test_teardown_leaves_no_process_and_no_directory() -> None:
    need_redis()
    server = RedisServer().start()
    pid, directory = server.pid, server.directory
    assert pid is not None and process_exists(pid)
    server.stop()
    assert gone(pid)
    assert not directory.exists()
    assert server.pid is None and not server.running
    server.stop()  # idempotent


def test_restart_same_port_loses_data(redis_server: RedisServer) -> None:
    r = redis.Redis(**redis_server.client_kwargs(), socket_timeout=2)
    r.set("k", "v")
    port, pid = redis_server.port, redis_server.pid
    run_id = redis_server.info()["run_id"]
    redis_server.restart()
    assert redis_server.port == port
    assert gone(pid)
    assert redis_server.pid != pid
    assert redis_server.info()["run_id"] != run_id
    assert r.get("k") is None, "no persistence: the key is gone (client reconnected)"
    r.set("k2", "v")
    redis_server.restart(hard=True, down_for=0.2)
    assert r.get("k2") is None
    assert len(redis_server.past_pids) == 2
    r.close()


def test_persistence_can_be_turned_on() -> None:
    need_redis()
    with RedisServer(config={"appendonly": "yes", "appendfsync": "always"}) as server:
        server.execute("SET", "k", "v")
        server.restart(hard=True)
        assert server.execute("GET", "k") == b"v"


def test_pause_and_resume(redis_server: RedisServer) -> None:
    r = redis.Redis(**redis_server.client_kwargs(), socket_timeout=0.3)
    assert r.ping()
    pid = redis_server.pid
    assert pid is not None
    redis_server.pause()
    assert redis_server.is_paused
    with open(f"/proc/{pid}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] == "T"
    with pytest.raises(redis.exceptions.TimeoutError):
        r.ping()
    redis_server.resume()
    assert r.ping()
    with redis_server.paused(), pytest.raises(redis.exceptions.TimeoutError):
        r.ping()
    assert r.ping()
    r.close()


def test_stop_while_paused(redis_server: RedisServer) -> None:
    pid = redis_server.pid
    redis_server.pause()
    redis_server.stop()
    assert gone(pid)


def test_kill_then_start_again(redis_server: RedisServer) -> None:
    pid, port = redis_server.pid, redis_server.port
    redis_server.kill()
    assert gone(pid)
    assert not redis_server.running
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis(**redis_server.client_kwargs(), socket_connect_timeout=1).ping()
    redis_server.start()
    assert redis_server.port == port
    assert redis_server.execute("PING") == "PONG"


def test_password_and_redaction() -> None:
    need_redis()
    secret = "canary-Pa55word/with:odd@chars"
    with RedisServer(password=secret) as server:
        assert secret not in repr(server)
        assert "***" in repr(server)
        assert secret not in server.redacted_url
        assert redact_url(server.url) == server.redacted_url
        pid = server.pid
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert secret.encode() not in f.read(), "no secret on the command line"
        assert redis.Redis.from_url(server.url).ping(), "url carries the (quoted) password"
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host=server.host, port=server.port).ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host=server.host, port=server.port, password="wrong").ping()


def test_acl_users_are_isolated() -> None:
    need_redis()
    with RedisServer(password="admin-pw", acl_users=[("tenant_a", "pw-a", "~a:*", "+@all")]) as server:
        server.add_acl_user("tenant_b", "pw-b", "~b:*", "+@all")
        a = redis.Redis.from_url(server.url_for("tenant_a", "pw-a"))
        b = redis.Redis(**server.client_kwargs("tenant_b", "pw-b"))
        assert a.set("a:1", "x") and b.set("b:1", "y")
        with pytest.raises(redis.exceptions.NoPermissionError):
            b.get("a:1")
        with pytest.raises(redis.exceptions.NoPermissionError):
            b.delete("a:1")
        with pytest.raises(redis.exceptions.NoPermissionError):
            b.eval("return redis.call('DEL', KEYS[1])", 1, "a:1")
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis.from_url(server.url_for("tenant_a", "wrong")).ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis.from_url(server.url_for("nobody", "pw-a")).ping()
        assert a.get("a:1") == b"x"
        assert "pw-a" not in repr(server._acl_users)
        server.restart()
        assert redis.Redis(**server.client_kwargs("tenant_b", "pw-b")).set("b:2", "z"), "kept across restart"
        with pytest.raises(RespError, match="NOPERM"):
            from interlock.testing.servers import _RespConnection

            with _RespConnection(port=server.port, username="tenant_a", password="pw-a") as conn:
                conn.call("SET", "b:1", "x")


def test_unix_socket() -> None:
    need_redis()
    with RedisServer(unix_socket=True, password="pw") as server:
        path = server.unix_socket_path
        assert path is not None and os.path.exists(path)
        assert redis.Redis(**server.client_kwargs(unix=True)).ping()
        assert redis.Redis.from_url(server.unix_url).ping()


def test_tls() -> None:
    need_redis()
    with RedisServer(tls=True, password="pw") as server:
        assert server.tls is not None
        assert server.url.startswith("rediss://")
        assert redis.Redis(**server.client_kwargs()).ping()
        ca = str(server.tls.ca_file)
        assert redis.Redis.from_url(server.url, ssl_ca_certs=ca).ping(), "no client cert needed by default"
        with pytest.raises(redis.exceptions.ConnectionError):
            redis.Redis.from_url(server.url, socket_timeout=2).ping()  # system CAs: unknown issuer
        with pytest.raises(redis.exceptions.ConnectionError):
            redis.Redis(host=server.host, port=server.port, password="pw", socket_timeout=1).ping()  # plaintext
        # another CA is rejected
        other = make_tls_files(server.directory / "other")
        with pytest.raises(redis.exceptions.ConnectionError):
            redis.Redis.from_url(server.url, ssl_ca_certs=str(other.ca_file), socket_timeout=2).ping()


def test_tls_client_certificate_required() -> None:
    need_redis()
    with RedisServer(tls=True, tls_client_auth=True) as server:
        assert server.tls is not None
        assert redis.Redis(**server.client_kwargs()).ping()
        with pytest.raises(redis.exceptions.ConnectionError):
            redis.Redis.from_url(server.url, ssl_ca_certs=str(server.tls.ca_file), socket_timeout=2).ping()


@pytest.mark.parametrize("backend", ["openssl", "cryptography"])
def test_tls_files_backends(tmp_path: Path, backend: str) -> None:
    if backend == "openssl" and shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    if backend == "cryptography":
        pytest.importorskip("cryptography")
    files = make_tls_files(tmp_path, backend=backend)  # type: ignore[arg-type]
    assert isinstance(files, TLSFiles)
    assert oct(files.key_file.stat().st_mode & 0o777) == "0o600"
    ctx = files.client_context()
    import ssl

    ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # what Python 3.13's default context checks
    need_redis()
    with RedisServer(tls=files) as server:
        for hostname in ("127.0.0.1", "localhost"):
            with ctx.wrap_socket(
                __import__("socket").create_connection(server.address, timeout=5), server_hostname=hostname
            ) as s:
                s.sendall(b"PING\r\n")
                assert s.recv(100) == b"+PONG\r\n"
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(
                __import__("socket").create_connection(server.address, timeout=5), server_hostname="example.com"
            )


def test_startup_failure_is_reported_and_cleaned_up() -> None:
    need_redis()
    server = RedisServer(extra_args=["--no-such-directive", "1"])
    with pytest.raises(ServerError, match="exited at startup"):
        server.start()
    assert server.past_pids and all(not process_exists(p) for p in server.past_pids)
    server.stop()


def test_busy_port_is_reported() -> None:
    need_redis()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        server = RedisServer(port=s.getsockname()[1])
        with pytest.raises(ServerError):
            server.start()
        server.stop()


def test_missing_executable() -> None:
    with pytest.raises(ServerError, match="not found"):
        RedisServer("/nonexistent/redis-server")


def test_free_port() -> None:
    port = free_port()
    assert 0 < port < 65536


def test_atexit_kills_servers_of_a_dying_interpreter(tmp_path: Path) -> None:
    need_redis()
    code = (
        "import sys\n"
        "from interlock.testing.servers import RedisServer\n"
        "s = RedisServer().start()\n"
        "print(s.pid, flush=True)\n"
        "sys.exit(0)\n"  # no stop(): the atexit hook must kill it
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert gone(int(out.stdout.strip()))


# -- Valkey ---------------------------------------------------------------------------------------


def test_valkey(valkey_server: RedisServer) -> None:
    r = redis.Redis(**valkey_server.client_kwargs())
    assert r.ping()
    assert valkey_server.version.split(".")[0] == "9"
    assert "valkey" in repr(valkey_server)
    r.set("k", "v")
    pid = valkey_server.pid
    valkey_server.restart()
    assert r.get("k") is None
    assert gone(pid)
    r.close()


def test_valkey_classmethod_with_acl() -> None:
    need_valkey()
    with RedisServer.valkey(password="pw", acl_users=[("t", "tp", "~t:*", "+@all")]) as server:
        t = redis.Redis.from_url(server.url_for("t", "tp"))
        assert t.set("t:1", "x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            t.set("u:1", "x")


# -- Cluster --------------------------------------------------------------------------------------


def test_cluster() -> None:
    need_redis()
    with RedisCluster(nodes=3) as cluster:
        assert cluster.cluster_info()["cluster_state"] == "ok"
        assert cluster.cluster_info()["cluster_known_nodes"] == "3"
        assert len(cluster.startup_nodes) == 3
        host, port = cluster.startup_nodes[0]
        rc = redis.RedisCluster(host=host, port=port)
        for i in range(20):
            rc.set(f"key{i}", i)
        assert rc.get("key7") == b"7"
        assert rc.set("{tag}a", 1) and rc.set("{tag}b", 2)
        owners = {rc.keyslot(f"key{i}") // (16384 // 3) for i in range(20)}
        assert len(owners) > 1, "keys spread over several masters"
        rc.close()
        rc2 = redis.RedisCluster.from_url(cluster.url)
        assert rc2.get("key3") == b"3"
        rc2.close()
        pids = cluster.pids
        assert len(pids) == 3
    assert all(gone(p) for p in pids)


def test_cluster_with_replicas_on_valkey() -> None:
    binary = need_valkey()
    with RedisCluster(nodes=3, replicas=1, executable=binary) as cluster:
        assert len(cluster.servers) == 6
        info = cluster.cluster_info()
        assert info["cluster_state"] == "ok" and info["cluster_size"] == "3"
        replica_roles = {s.info("replication")["role"] for s in cluster.servers[3:]}
        assert replica_roles == {"slave"}
        pids = cluster.pids
    assert all(gone(p) for p in pids)


# -- PostgreSQL -----------------------------------------------------------------------------------


def need_postgres() -> None:
    try:
        from interlock.testing.servers import _find_pg_bindir

        _find_pg_bindir()
    except ServerError as exc:
        pytest.skip(str(exc))
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("no postgres OS user")


def test_postgres() -> None:
    need_postgres()
    with PostgresServer(password="pg-secret") as pg:
        assert pg.psql("select 1") == "1"
        assert "pg-secret" not in repr(pg)
        assert pg.url.startswith(f"postgresql://postgres:pg-secret@127.0.0.1:{pg.port}/")
        assert pg.psql("show listen_addresses") == "127.0.0.1"
        assert pg.psql("show unix_socket_directories") == str(pg.socket_dir)
        psycopg = pytest.importorskip("psycopg")
        with psycopg.connect(pg.url, connect_timeout=5) as conn:
            assert conn.execute("select 41 + 1").fetchone() == (42,)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg.url_for(password="wrong"), connect_timeout=5)
        pg.psql("create table t (x int); insert into t values (1)")
        pid = pg.pid
        backends = pg.backend_pids()
        assert backends
        pg.restart("kill")
        assert gone(pid) and all(gone(b) for b in backends)
        assert pg.psql("select count(*) from t") == "1", "committed data survives a crash"
        pg.pause()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg.url, connect_timeout=1)
        pg.resume()
        with psycopg.connect(pg.url, connect_timeout=5) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        pid = pg.pid
        backends = pg.backend_pids()
        directory = pg.directory
    assert gone(pid) and all(gone(b) for b in backends)
    assert not directory.exists()


def test_postgres_signals_only_its_own_processes() -> None:
    """Two servers side by side: stopping one leaves the other running."""
    need_postgres()
    with PostgresServer() as a, PostgresServer() as b:
        a_pid = a.pid
        a.stop()
        assert gone(a_pid)
        assert b.pid is not None and process_exists(b.pid)
        assert b.psql("select 1") == "1"


def test_signal_zero_never_sent_to_foreign_pids(redis_server: RedisServer) -> None:
    """kill() of a server that already exited does not touch a recycled PID (it was reaped)."""
    pid = redis_server.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert gone(pid)
    redis_server.kill()  # nothing to do, no error
    redis_server.stop()

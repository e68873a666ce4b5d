"""FaultProxy against a loopback echo server (and, under the servers marker, against redis-server)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from interlock.testing.proxy import FaultProxy

from .conftest import need_redis


class _Echo(socketserver.BaseRequestHandler):
    server: EchoServer

    def handle(self) -> None:
        with self.server.lock:
            self.server.opened += 1
        try:
            while True:
                data = self.request.recv(65536)
                if not data:
                    break
                with self.server.lock:
                    self.server.received += data
                self.request.sendall(data)
        except OSError:
            pass
        finally:
            with self.server.lock:
                self.server.closed += 1


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.lock = threading.Lock()
        self.opened = 0
        self.closed = 0
        self.received = b""

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.server_address[1])


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(echo) as p:
        yield p


def connect(address: tuple[str, int], timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(address, timeout=timeout)


def roundtrip(sock: socket.socket, payload: bytes = b"ping") -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def wait_for(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_pass_through(proxy: FaultProxy, echo: EchoServer) -> None:
    with connect(proxy.address) as s:
        assert roundtrip(s, b"hello" * 1000) == b"hello" * 1000
        assert proxy.connection_count == 1
        assert proxy.mode == "pass"
    assert wait_for(lambda: proxy.connection_count == 0)
    assert proxy.bytes_forwarded == {"up": 5000, "down": 5000}
    assert proxy.total_connections == 1


def test_blackhole_drops_both_ways_and_keeps_connections(proxy: FaultProxy, echo: EchoServer) -> None:
    with connect(proxy.address, timeout=0.3) as s, connect(echo.address) as direct:
        assert roundtrip(s) == b"ping"
        with proxy.blackhole():
            s.sendall(b"lost")
            with pytest.raises(socket.timeout):
                s.recv(100)
            assert roundtrip(direct) == b"ping", "a direct client still works"
            assert proxy.connection_count == 1
            with connect(proxy.address, timeout=0.3) as new:  # new connections are accepted...
                new.sendall(b"x")
                with pytest.raises(socket.timeout):  # ...and black-holed too
                    new.recv(100)
        assert proxy.mode == "pass"
        assert roundtrip(s, b"again") == b"again", "same connection after heal; dropped bytes stay lost"
    assert b"lost" not in echo.received
    assert proxy.bytes_dropped["up"] >= 4


def test_blackhole_holds_back_the_fin(proxy: FaultProxy, echo: EchoServer) -> None:
    s = connect(proxy.address)
    assert roundtrip(s) == b"ping"
    proxy.blackhole()
    s.close()
    time.sleep(0.3)
    assert echo.closed == 0, "the server must not see the close during the partition"
    proxy.heal()
    assert wait_for(lambda: echo.closed == 1)


def test_one_direction_only(proxy: FaultProxy, echo: EchoServer) -> None:
    with connect(proxy.address, timeout=0.3) as s:
        proxy.blackhole("down")
        s.sendall(b"request")
        with pytest.raises(socket.timeout):
            s.recv(100)
        assert wait_for(lambda: b"request" in echo.received), "the request reached the server"
        assert "down=drop" in proxy.mode
        with pytest.raises(ValueError):
            proxy.blackhole("sideways")  # type: ignore[arg-type]


def test_delay_adds_latency(proxy: FaultProxy) -> None:
    with connect(proxy.address) as s:
        roundtrip(s)
        proxy.delay(0.15)
        t0 = time.monotonic()
        assert roundtrip(s) == b"ping"
        assert time.monotonic() - t0 >= 0.3, "0.15 s each way"
        proxy.delay(0.15, "up")
        proxy.delay(0.0, "down")
        t0 = time.monotonic()
        assert roundtrip(s) == b"ping"
        assert time.monotonic() - t0 >= 0.15
        proxy.heal()
        assert roundtrip(s) == b"ping"
    with pytest.raises(ValueError):
        proxy.delay(-1)


def test_delay_keeps_order_without_limiting_throughput(proxy: FaultProxy) -> None:
    with connect(proxy.address, timeout=5) as s, proxy.delay(0.2):
        t0 = time.monotonic()
        payload = b"".join(b"%05d" % i for i in range(2000))
        for i in range(0, len(payload), 1000):
            s.sendall(payload[i : i + 1000])
            time.sleep(0.001)
        got = b""
        while len(got) < len(payload):
            got += s.recv(65536)
        assert got == payload
        assert time.monotonic() - t0 >= 0.4


def test_freeze_then_heal_delivers_everything(proxy: FaultProxy) -> None:
    with connect(proxy.address, timeout=0.3) as s:
        with proxy.freeze():
            s.sendall(b"held back")
            with pytest.raises(socket.timeout):
                s.recv(100)
        s.settimeout(5)
        got = b""
        while len(got) < 9:
            got += s.recv(100)
        assert got == b"held back"


def test_reset_all(proxy: FaultProxy, echo: EchoServer) -> None:
    s = connect(proxy.address)
    assert roundtrip(s) == b"ping"
    assert proxy.reset_all() == 1
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        s.sendall(b"x")
        if not s.recv(10):
            raise ConnectionResetError("EOF")
    s.close()
    assert wait_for(lambda: echo.closed == 1)
    with connect(proxy.address) as s2:
        assert roundtrip(s2) == b"ping", "new connections still work"


def test_refuse_new(proxy: FaultProxy) -> None:
    with connect(proxy.address) as old:
        assert roundtrip(old) == b"ping"  # accepted and forwarded before the fault
        with proxy.refuse_new():
            with connect(proxy.address) as new:
                try:
                    data = new.recv(10)
                except ConnectionResetError:
                    data = b""
                assert data == b""
            assert roundtrip(old) == b"ping"
        with connect(proxy.address) as again:
            assert roundtrip(again) == b"ping"


def test_faults_are_per_proxy_instance(echo: EchoServer) -> None:
    with (
        FaultProxy(echo) as bad,
        FaultProxy(echo.address) as good,
        connect(bad.address, timeout=0.3) as a,
        connect(good.address) as b,
    ):
        bad.blackhole()
        a.sendall(b"x")
        with pytest.raises(socket.timeout):
            a.recv(10)
        assert roundtrip(b) == b"ping"


def test_url_for() -> None:
    class Srv:
        url = "redis://user:p%40ss@127.0.0.1:6379/3?x=1"

    with FaultProxy(("127.0.0.1", 6379)) as p:
        assert p.url_for(Srv()) == f"redis://user:p%40ss@127.0.0.1:{p.port}/3?x=1"
        assert p.url_for("postgresql://127.0.0.1:5432/db") == f"postgresql://127.0.0.1:{p.port}/db"
        assert p.url_for("rediss://[::1]:1/0") == f"rediss://127.0.0.1:{p.port}/0"
        with pytest.raises(ValueError):
            p.url_for("unix:///tmp/x.sock")


def test_unreachable_upstream_closes_the_client() -> None:
    with socket.socket() as tmp:
        tmp.bind(("127.0.0.1", 0))
        dead_port = tmp.getsockname()[1]
    with FaultProxy(("127.0.0.1", dead_port), connect_timeout=1) as p, connect(p.address) as s:
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass


def test_close_stops_listening(echo: EchoServer) -> None:
    p = FaultProxy(echo).start()
    address = p.address
    s = connect(address)
    p.close()
    with pytest.raises(OSError):
        connect(address, timeout=1)
    with pytest.raises((ConnectionResetError, BrokenPipeError, OSError)):
        s.sendall(b"x")
        if not s.recv(10):
            raise ConnectionResetError("EOF")
    s.close()
    p.close()  # idempotent


@pytest.mark.servers
def test_redis_blackhole_times_out_while_direct_client_works() -> None:
    need_redis()
    redis = pytest.importorskip("redis")
    from interlock.testing.servers import RedisServer

    with RedisServer(password="s3cret") as server, FaultProxy(server) as p:
        faulty = redis.Redis.from_url(p.url_for(server), socket_timeout=0.5, socket_connect_timeout=0.5)
        direct = redis.Redis.from_url(server.url, socket_timeout=0.5)
        assert faulty.ping() and direct.ping()
        with p.blackhole():
            t0 = time.monotonic()
            with pytest.raises(redis.exceptions.TimeoutError):
                faulty.ping()
            assert time.monotonic() - t0 >= 0.45
            assert direct.set("k", "v")
        assert faulty.get("k") == b"v", "the client reconnects after the heal"
        p.delay(0.1)
        t0 = time.monotonic()
        assert faulty.ping()
        assert time.monotonic() - t0 >= 0.2
        faulty.close()
        direct.close()

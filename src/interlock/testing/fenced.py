"""A resource that enforces fencing tokens: Jepsen's ``lock-set`` plus fencing.

:class:`FencedStore` keeps, per resource, the list of accepted values and the highest token
it has accepted. ``write(resource, token, value)`` is accepted only if ``token`` is at least
that highest token (equal is fine: one holder may write several times); otherwise it is
rejected and nothing changes. Every write, accepted or rejected, is logged with the store's
own monotonic timestamp; :meth:`FencedStore.history` turns the log into
:class:`~interlock.testing.history.Event` records (``op="write"``) for the checker.

The store is thread-safe in-process and can also serve over loopback TCP so that other
processes can write to it::

    store = FencedStore()
    with store.serve() as server:                       # 127.0.0.1, free port
        with FencedStoreClient(server.address, client="worker-1") as c:   # any process
            c.write("orders", token=7, value="x")       # True
            c.write("orders", token=6, value="y")       # False (stale)

The wire protocol is one JSON object per line in each direction (no pickle, no eval).
Run ``python -m interlock.testing.fenced`` to serve from a separate process; it prints
``PORT <n>`` on its first line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from typing import Any

from interlock.testing.history import WRITE, Event

__all__ = [
    "FencedStore",
    "FencedStoreClient",
    "FencedStoreError",
    "FencedStoreServer",
    "StaleTokenError",
    "WriteRecord",
]

logger = logging.getLogger("interlock.testing.fenced")

MAX_LINE = 1 << 20


class FencedStoreError(Exception):
    """A bad request to the store, or a failed exchange with a remote store."""


class StaleTokenError(FencedStoreError):
    """A write carried a token below the highest one the resource has accepted."""

    def __init__(self, resource: str, token: int, max_token: int | None) -> None:
        super().__init__(f"stale token {token} for {resource!r}: already accepted {max_token}")
        self.resource = resource
        self.token = token
        self.max_token = max_token

    def __reduce__(self) -> tuple[Any, ...]:
        return (StaleTokenError, (self.resource, self.token, self.max_token))


@dataclasses.dataclass(frozen=True)
class WriteRecord:
    """One write as the store saw it. ``max_token`` is the highest accepted token before it."""

    seq: int
    time: float
    resource: str
    token: int
    value: Any
    accepted: bool
    client: str
    max_token: int | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WriteRecord:
        return cls(
            seq=int(data["seq"]),
            time=float(data["time"]),
            resource=str(data["resource"]),
            token=int(data["token"]),
            value=data.get("value"),
            accepted=bool(data["accepted"]),
            client=str(data.get("client", "")),
            max_token=None if data.get("max_token") is None else int(data["max_token"]),
        )

    def event(self) -> Event:
        return Event(self.client, WRITE, self.time, self.time, self.accepted, self.token, 1, self.resource)


def _check_args(resource: object, token: object) -> None:
    if not isinstance(resource, str):
        raise FencedStoreError(f"resource must be a str, not {type(resource).__name__}")
    if isinstance(token, bool) or not isinstance(token, int):
        raise FencedStoreError(f"token must be an int, not {type(token).__name__}")


class FencedStore:
    """In-process fenced store (thread-safe). See the module docstring."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._max: dict[str, int] = {}
        self._values: dict[str, list[Any]] = {}
        self._log: list[WriteRecord] = []

    def __repr__(self) -> str:
        return f"<FencedStore resources={len(self._values)} writes={len(self._log)}>"

    def write(self, resource: str, token: int, value: Any = None, *, client: str = "") -> bool:
        """Append *value* to *resource* if ``token >= max accepted token``; True if accepted."""
        _check_args(resource, token)
        with self._lock:
            current = self._max.get(resource)
            accepted = current is None or token >= current
            if accepted:
                self._max[resource] = token
                self._values.setdefault(resource, []).append(value)
            record = WriteRecord(len(self._log), self._clock(), resource, token, value, accepted, client, current)
            self._log.append(record)
        logger.debug(
            "%s write %r token=%d client=%s (max was %s)",
            "accepted" if accepted else "rejected",
            resource,
            token,
            client,
            current,
        )
        return accepted

    def write_checked(self, resource: str, token: int, value: Any = None, *, client: str = "") -> None:
        """Like :meth:`write` but raises :class:`StaleTokenError` on rejection."""
        if not self.write(resource, token, value, client=client):
            raise StaleTokenError(resource, token, self.max_token(resource))

    def read(self, resource: str) -> list[Any]:
        """The accepted values of *resource*, in acceptance order."""
        with self._lock:
            return list(self._values.get(resource, []))

    def max_token(self, resource: str) -> int | None:
        with self._lock:
            return self._max.get(resource)

    def resources(self) -> list[str]:
        with self._lock:
            return sorted(self._values)

    def log(self) -> list[WriteRecord]:
        """Every write (accepted and rejected) in the order the store handled them."""
        with self._lock:
            return list(self._log)

    def rejected(self) -> list[WriteRecord]:
        return [r for r in self.log() if not r.accepted]

    def history(self) -> list[Event]:
        """The log as ``write`` events (``start == end`` = the store's timestamp)."""
        return [r.event() for r in self.log()]

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> FencedStoreServer:
        """Start serving this store over TCP (returns the started server)."""
        return FencedStoreServer(self, host, port).start()

    # request dispatch shared by the TCP server
    def _handle(self, request: Any) -> Any:
        if not isinstance(request, dict):
            raise FencedStoreError("request must be a JSON object")
        op = request.get("op")
        if op == "write":
            return self.write(
                request.get("resource"),  # type: ignore[arg-type]  # checked in write
                request.get("token"),  # type: ignore[arg-type]
                request.get("value"),
                client=str(request.get("client", "")),
            )
        if op == "read":
            return self.read(str(request.get("resource")))
        if op == "max_token":
            return self.max_token(str(request.get("resource")))
        if op == "log":
            return [r.to_json() for r in self.log()]
        if op == "ping":
            return "pong"
        raise FencedStoreError(f"unknown op {op!r}")


class _Handler(socketserver.StreamRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        self.server.track(self.connection, True)
        try:
            while True:
                line = self.rfile.readline(MAX_LINE + 1)
                if not line:
                    return
                if len(line) > MAX_LINE:
                    self._reply({"ok": False, "error": "request too long"})
                    return
                try:
                    result = self.server.store._handle(json.loads(line))
                    reply: dict[str, Any] = {"ok": True, "result": result}
                except (FencedStoreError, ValueError) as exc:
                    reply = {"ok": False, "error": str(exc)}
                self._reply(reply)
        except OSError:
            return
        finally:
            self.server.track(self.connection, False)

    def _reply(self, reply: dict[str, Any]) -> None:
        self.wfile.write(json.dumps(reply, separators=(",", ":")).encode("utf-8") + b"\n")
        self.wfile.flush()


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], store: FencedStore) -> None:
        self.store = store
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, sock: socket.socket, add: bool) -> None:
        with self.conn_lock:
            if add:
                self.connections.add(sock)
            else:
                self.connections.discard(sock)


class FencedStoreServer:
    """Serves a :class:`FencedStore` on loopback TCP from a background thread."""

    def __init__(self, store: FencedStore | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.store = store if store is not None else FencedStore()
        self._bind = (host, port)
        self._server: _TCPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = "{}:{}".format(*self.address) if self._server is not None else "stopped"
        return f"<FencedStoreServer {where}>"

    def __enter__(self) -> FencedStoreServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("FencedStoreServer is not started")
        host, port = self._server.server_address[:2]
        return (str(host), int(port))

    @property
    def port(self) -> int:
        return self.address[1]

    def start(self) -> FencedStoreServer:
        if self._server is None:
            self._server = _TCPServer(self._bind, self.store)
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                name="FencedStoreServer", daemon=True,
            )  # fmt: skip
            self._thread.start()
        return self

    def stop(self) -> None:
        server = self._server
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with server.conn_lock:
            conns = list(server.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5.0)
        self._server = None
        self._thread = None

    close = stop


class FencedStoreClient:
    """A client of a :class:`FencedStoreServer` (one connection, thread-safe, reconnects)."""

    def __init__(self, address: tuple[str, int], *, client: str = "", timeout: float = 5.0) -> None:
        self.address = (address[0], int(address[1]))
        self.client = client
        self.timeout = timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._rfile: Any = None

    def __repr__(self) -> str:
        return f"<FencedStoreClient {self.address[0]}:{self.address[1]} client={self.client!r}>"

    def __enter__(self) -> FencedStoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._rfile is not None:
            with contextlib.suppress(OSError):
                self._rfile.close()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._rfile = None

    def _request(self, request: dict[str, Any]) -> Any:
        payload = json.dumps(request, separators=(",", ":")).encode("utf-8") + b"\n"
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.create_connection(self.address, timeout=self.timeout)
                    self._rfile = self._sock.makefile("rb")
                self._sock.sendall(payload)
                line = self._rfile.readline(MAX_LINE + 1)
                if not line:
                    raise FencedStoreError("connection closed by the fenced store")
            except OSError as exc:
                self._drop()
                raise FencedStoreError(f"fenced store unreachable: {exc}") from exc
            except FencedStoreError:
                self._drop()
                raise
        reply = json.loads(line)
        if not reply.get("ok"):
            raise FencedStoreError(str(reply.get("error")))
        return reply.get("result")

    def ping(self) -> bool:
        return bool(self._request({"op": "ping"}) == "pong")

    def write(self, resource: str, token: int, value: Any = None) -> bool:
        """True if accepted, False if the token was stale. *value* must be JSON-able."""
        _check_args(resource, token)
        return bool(
            self._request({"op": "write", "resource": resource, "token": token, "value": value, "client": self.client})
        )

    def write_checked(self, resource: str, token: int, value: Any = None) -> None:
        if not self.write(resource, token, value):
            raise StaleTokenError(resource, token, self.max_token(resource))

    def read(self, resource: str) -> list[Any]:
        result = self._request({"op": "read", "resource": resource})
        return list(result)

    def max_token(self, resource: str) -> int | None:
        result = self._request({"op": "max_token", "resource": resource})
        return None if result is None else int(result)

    def log(self) -> list[WriteRecord]:
        return [WriteRecord.from_json(r) for r in self._request({"op": "log"})]

    def history(self) -> list[Event]:
        return [r.event() for r in self.log()]


def main(argv: list[str] | None = None) -> None:
    """``python -m interlock.testing.fenced [--port N]``: serve until SIGTERM/SIGINT."""
    import argparse
    import signal
    import sys

    parser = argparse.ArgumentParser(description="Serve a FencedStore on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FencedStoreServer(port=args.port) as server:
        sys.stdout.write(f"PORT {server.port}\n")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            while not stop.wait(0.5):
                pass


if __name__ == "__main__":
    main()

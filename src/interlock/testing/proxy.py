"""A loopback TCP fault proxy for partition, stall and latency tests.

:class:`FaultProxy` listens on ``127.0.0.1`` (a free port) and forwards every accepted
connection to one upstream address. It runs an asyncio loop in a daemon thread of its own, so
it is driven from ordinary synchronous tests; every control method is thread-safe and has
taken effect when it returns.

Faults apply to every connection through *this* proxy instance (current and new ones), so a
test gives each client it wants to fault its own proxy and lets the other clients connect
directly. Each fault can target one direction: ``"up"`` (client to server), ``"down"`` (server
to client) or ``"both"``.

- ``pass`` -- bytes flow (the initial state, and the state after :meth:`FaultProxy.heal`).
- :meth:`~FaultProxy.blackhole` -- bytes are read and **dropped**; connections stay open, new
  ones are accepted (and black-holed too); a close by one side is held back until the heal,
  so the peer sees silence, not a FIN.
- :meth:`~FaultProxy.freeze` -- bytes stop being read (the kernel buffers fill, the sender
  blocks) and are delivered after :meth:`~FaultProxy.heal`: a stall without loss.
- :meth:`~FaultProxy.delay` -- each chunk is delivered *seconds* after it arrived (latency,
  order kept; throughput is not limited).
- :meth:`~FaultProxy.reset_all` -- close every current connection (RST by default).
- :meth:`~FaultProxy.refuse_new` -- close new connections right after accepting them.

Each fault method returns a handle that can be used as a context manager to heal at the end::

    with FaultProxy(server.address) as proxy:
        client = redis.Redis.from_url(proxy.url_for(server), socket_timeout=0.5)
        with proxy.blackhole():
            ...                      # client times out
        client.ping()                # healed
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import urllib.parse
from collections.abc import Coroutine
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

__all__ = ["Direction", "FaultProxy", "HasAddress", "HasUrl"]

Direction = Literal["up", "down", "both"]
_Mode = Literal["pass", "drop", "freeze"]
_T = TypeVar("_T")


@runtime_checkable
class HasAddress(Protocol):
    """Anything with an ``address`` ``(host, port)``, e.g. the servers in ``servers``."""

    @property
    def address(self) -> tuple[str, int]: ...


@runtime_checkable
class HasUrl(Protocol):
    @property
    def url(self) -> str: ...


class _Lane:
    """State of one direction: its mode and added latency. Lives in the proxy's loop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mode: _Mode = "pass"
        self.delay = 0.0
        self.bytes = 0
        self.dropped = 0
        self._changed = asyncio.Event()

    def set(self, mode: _Mode | None = None, delay: float | None = None) -> None:
        if mode is not None:
            self.mode = mode
        if delay is not None:
            self.delay = delay
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_while(self, *modes: _Mode) -> None:
        while self.mode in modes:
            await self._changed.wait()


class _Conn:
    def __init__(
        self,
        proxy: FaultProxy,
        client: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = False

    def close(self, rst: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for writer in (self.client, self.upstream):
            if rst:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        self.proxy._conns.discard(self)


class _FaultHandle:
    """Returned by fault methods: ``with proxy.blackhole(): ...`` heals on exit."""

    def __init__(self, proxy: FaultProxy) -> None:
        self._proxy = proxy

    def __enter__(self) -> FaultProxy:
        return self._proxy

    def __exit__(self, *exc: object) -> None:
        self._proxy.heal()


Upstream = tuple[str, int] | HasAddress


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of *upstream* (``(host, port)`` or a server object).

    ``port``/``address`` are known after :meth:`start` (or on entering the ``with`` block).
    """

    def __init__(
        self,
        upstream: Upstream,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        connect_timeout: float = 5.0,
        chunk_size: int = 65536,
    ) -> None:
        self._upstream_src = upstream
        self.listen_host = listen_host
        self._listen_port = listen_port
        self.connect_timeout = connect_timeout
        self.chunk_size = chunk_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._lanes: dict[str, _Lane] = {}
        self._refuse = False
        self._port: int | None = None
        self.total_connections = 0

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def upstream(self) -> tuple[str, int]:
        src = self._upstream_src
        if isinstance(src, tuple):
            return src
        return src.address

    def __repr__(self) -> str:
        up = "{}:{}".format(*self.upstream) if isinstance(self._upstream_src, tuple) else "server"
        return f"<FaultProxy 127.0.0.1:{self._port} -> {up} mode={self.mode}>"

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> FaultProxy:
        if self._loop is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="FaultProxy", daemon=True)
        self._thread.start()
        ready.wait()
        self._loop = loop
        try:
            self._call(self._astart())
        except BaseException:
            self.close()
            raise
        return self

    async def _astart(self) -> None:
        self._lanes = {"up": _Lane("up"), "down": _Lane("down")}
        self._server = await asyncio.start_server(self._handle, self.listen_host, self._listen_port, reuse_address=True)
        self._port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        """Close the listener and every connection (RST), stop the thread."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._aclose(), timeout=10.0)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10.0)
        self._loop = None
        self._thread = None

    async def _aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.close(rst=True)
        # Every task of this private loop belongs to the proxy: finish them before the loop stops.
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float = 10.0) -> _T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("FaultProxy is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- addresses ---------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self.listen_host

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FaultProxy is not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (self.listen_host, self.port)

    def url_for(self, target: str | HasUrl) -> str:
        """*target*'s URL (a string or an object with ``.url``) pointed at this proxy.

        Scheme, credentials, path and query are kept; host and port become the proxy's.
        """
        url = target if isinstance(target, str) else target.url
        parts = urllib.parse.urlsplit(url)
        if not parts.hostname:
            raise ValueError("URL has no host to replace")
        userinfo = ""
        if "@" in parts.netloc:
            userinfo = parts.netloc.rsplit("@", 1)[0] + "@"
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}{self.listen_host}:{self.port}"))

    # -- state -------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """``pass``, or a summary such as ``up=drop,down=drop`` / ``delay=0.2``."""
        if not self._lanes:
            return "pass"
        up, down = self._lanes["up"], self._lanes["down"]
        parts = []
        for lane in (up, down):
            if lane.mode != "pass":
                parts.append(f"{lane.name}={lane.mode}")
            if lane.delay:
                parts.append(f"{lane.name}.delay={lane.delay:g}")
        if self._refuse:
            parts.append("refuse-new")
        return ",".join(parts) or "pass"

    @property
    def connection_count(self) -> int:
        """Connections open right now."""
        return len(self._conns)

    @property
    def bytes_forwarded(self) -> dict[str, int]:
        return {name: lane.bytes for name, lane in self._lanes.items()}

    @property
    def bytes_dropped(self) -> dict[str, int]:
        return {name: lane.dropped for name, lane in self._lanes.items()}

    def _set(self, direction: Direction, mode: _Mode | None, delay: float | None) -> _FaultHandle:
        if direction not in ("up", "down", "both"):
            raise ValueError(f"direction must be 'up', 'down' or 'both', not {direction!r}")
        names = ("up", "down") if direction == "both" else (direction,)

        async def apply() -> None:
            for name in names:
                self._lanes[name].set(mode, delay)

        self._call(apply())
        return _FaultHandle(self)

    # -- faults ------------------------------------------------------------------------

    def blackhole(self, direction: Direction = "both") -> _FaultHandle:
        """Read and drop all bytes (in *direction*); connections stay open."""
        return self._set(direction, "drop", None)

    def freeze(self, direction: Direction = "both") -> _FaultHandle:
        """Stop forwarding (in *direction*) without loss: delivered after :meth:`heal`."""
        return self._set(direction, "freeze", None)

    def delay(self, seconds: float, direction: Direction = "both") -> _FaultHandle:
        """Deliver every chunk *seconds* after it arrived (in *direction*)."""
        if not seconds >= 0:
            raise ValueError("delay must be >= 0")
        return self._set(direction, None, float(seconds))

    def refuse_new(self, refuse: bool = True) -> _FaultHandle:
        """Close new connections right after accepting them (until :meth:`heal`)."""

        async def apply() -> None:
            self._refuse = refuse

        self._call(apply())
        return _FaultHandle(self)

    def heal(self) -> None:
        """Back to ``pass``: no drop, no freeze, no delay, accept new connections."""

        async def apply() -> None:
            self._refuse = False
            for lane in self._lanes.values():
                lane.set("pass", 0.0)

        self._call(apply())

    def reset_all(self, rst: bool = True) -> int:
        """Close every current connection, both sides (RST unless *rst* is false).

        Returns how many were closed. The mode is unchanged; new connections are accepted.
        """

        async def apply() -> int:
            conns = list(self._conns)
            for conn in conns:
                conn.close(rst=rst)
            return len(conns)

        return self._call(apply())

    # -- forwarding --------------------------------------------------------------------

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self.total_connections += 1
        if self._refuse:
            cwriter.transport.abort()
            return
        host, port = self.upstream
        try:
            ureader, uwriter = await asyncio.wait_for(asyncio.open_connection(host, port), self.connect_timeout)
        except (OSError, asyncio.TimeoutError):
            cwriter.transport.abort()
            return
        conn = _Conn(self, cwriter, uwriter)
        self._conns.add(conn)
        up, down = self._lanes["up"], self._lanes["down"]
        for reader, writer, lane in ((creader, uwriter, up), (ureader, cwriter, down)):
            queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
            conn.tasks.append(asyncio.ensure_future(self._read(reader, queue, lane, conn)))
            conn.tasks.append(asyncio.ensure_future(self._write(writer, queue, lane, conn)))

    async def _read(
        self,
        reader: asyncio.StreamReader,
        queue: asyncio.Queue[tuple[float, bytes | None]],
        lane: _Lane,
        conn: _Conn,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await lane.wait_while("freeze")
                try:
                    data = await reader.read(self.chunk_size)
                except OSError:
                    data = b""
                if not data:
                    break
                if lane.mode == "drop":
                    lane.dropped += len(data)
                    continue
                queue.put_nowait((loop.time() + lane.delay, data))
            # EOF: a partitioned peer must not see the FIN before the heal.
            await lane.wait_while("drop", "freeze")
            queue.put_nowait((loop.time() + lane.delay, None))
        except asyncio.CancelledError:
            raise
        except Exception:
            conn.close(rst=True)

    async def _write(
        self,
        writer: asyncio.StreamWriter,
        queue: asyncio.Queue[tuple[float, bytes | None]],
        lane: _Lane,
        conn: _Conn,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await lane.wait_while("freeze")
                if data is None:
                    conn.close()
                    return
                if lane.mode == "drop":
                    lane.dropped += len(data)
                    continue
                writer.write(data)
                await writer.drain()
                lane.bytes += len(data)
        except asyncio.CancelledError:
            raise
        except Exception:
            conn.close(rst=True)

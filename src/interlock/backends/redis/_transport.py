"""Sending scripts to Redis: a lean path over redis-py connections (standalone server) and the
redis-py cluster client (Redis Cluster).

The standalone path packs each command once (constant parts are pre-encoded per primitive) and
talks to a redis-py ``Connection`` directly: the per-command cost of the full client (pool checks,
retry wrappers, response callbacks) is about a third of a loopback round trip, and an uncontended
acquire+release is two round trips. Connections are bounded (``max_connections``); a thread that
finds none free waits for one.

Errors leave this module as two kinds only: :class:`Transient` (the outcome of the command is
unknown: connection dropped, timed out, server loading; the caller may retry, since every script is
idempotent per request id) and :class:`~interlock.BackendError` (the server refused: wrong password,
missing ACL permission, out of memory...). Messages are scrubbed of the password.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..._errors import BackendError
from ._config import RedisOptions
from ._scripts import Script, encode_arg, pack


class Transient(Exception):
    """The command's outcome is unknown (connection lost or timed out); retrying is safe."""


@dataclass(frozen=True)
class Target:
    """The keys and constant arguments of one primitive, pre-encoded for the wire."""

    keys: tuple[str, ...]
    const: tuple[str, ...]
    body: bytes
    nbody: int

    @classmethod
    def make(cls, keys: Sequence[str], const: Sequence[str]) -> Target:
        items: list[str | int] = [len(keys), *keys, *const]
        return cls(tuple(keys), tuple(const), b"".join(encode_arg(x) for x in items), len(items))


def _resp2(kw: dict[str, Any]) -> dict[str, Any]:
    """RESP2 for every connection of ours: redis-py >= 8 defaults to RESP3, where SUBSCRIBE replies
    are push frames and RESP3-only options (maintenance notifications) ride along."""
    out = {k: v for k, v in kw.items() if not k.startswith(("maint_notifications", "oss_cluster_maint"))}
    out["protocol"] = 2
    return out


def _scrub(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    return text


class _Errors:
    """Classifies redis-py exceptions (imported lazily)."""

    def __init__(self, opts: RedisOptions, secret: str | None) -> None:
        import redis.exceptions as rx

        self.rx = rx
        self.display = opts.display_url
        self.secret = secret
        self.transient: tuple[type[BaseException], ...] = (
            rx.ConnectionError, rx.TimeoutError, rx.BusyLoadingError, OSError, rx.TryAgainError,
            rx.ClusterDownError, rx.MasterDownError,
        )

    def convert(self, exc: BaseException, what: str) -> BaseException:
        rx = self.rx
        msg = _scrub(str(exc), self.secret)
        if isinstance(exc, rx.AuthenticationError) or (
            isinstance(exc, rx.ResponseError) and str(exc).startswith(("WRONGPASS", "NOAUTH"))
        ):
            return BackendError(
                f"authentication to {self.display} failed ({msg}); check the user name and password",
                url=self.display,
            )
        if isinstance(exc, (rx.NoPermissionError, rx.AuthorizationError)) or "NOPERM" in msg:
            return BackendError(
                f"{what} on {self.display} was refused by the server's ACL ({msg}); the user needs "
                "EVALSHA/EVAL, PUBLISH/SUBSCRIBE and access to the prefix's keys and channels",
                url=self.display,
            )
        if isinstance(exc, self.transient):
            return Transient(f"{type(exc).__name__}: {msg}")
        return BackendError(f"{what} on {self.display} failed: {type(exc).__name__}: {msg}",
                            url=self.display)


class _Incomplete(Exception):
    pass


class _ErrorReply:
    __slots__ = ("msg",)

    def __init__(self, msg: str) -> None:
        self.msg = msg


def _parse(b: bytes, i: int) -> tuple[Any, int]:
    """One RESP2 value from ``b[i:]``: (value, next index); raises _Incomplete."""
    j = b.find(b"\r\n", i)
    if j < 0:
        raise _Incomplete
    t = b[i]
    if t == 58:  # ':' integer
        return int(b[i + 1 : j]), j + 2
    if t == 36:  # '$' bulk string
        n = int(b[i + 1 : j])
        if n < 0:
            return None, j + 2
        end = j + 2 + n
        if end + 2 > len(b):
            raise _Incomplete
        return b[j + 2 : end], end + 2
    if t == 42:  # '*' array
        n = int(b[i + 1 : j])
        if n < 0:
            return None, j + 2
        items = []
        pos = j + 2
        for _ in range(n):
            v, pos = _parse(b, pos)
            items.append(v)
        return items, pos
    if t == 43:  # '+' simple string
        return b[i + 1 : j], j + 2
    if t == 45:  # '-' error
        return _ErrorReply(b[i + 1 : j].decode("utf-8", "replace")), j + 2
    raise ValueError(f"bad RESP type byte {t!r}")


def _kernel_timeouts(sock: Any) -> None:
    """Move a plain socket's timeout into the kernel (SO_RCVTIMEO/SO_SNDTIMEO) and make it blocking.

    Python implements a socket timeout with a poll() before every send and recv: two extra system
    calls per round trip. With the kernel's timeouts a blocking send/recv gives up just the same, as
    ``BlockingIOError`` (an OSError: the caller treats it like a timeout, as redis-py's own reads on
    the connection do). TLS sockets keep Python's timeout (their reads are not plain recv calls)."""
    t = sock.gettimeout()
    if t is None or sock.__class__ is not socket.socket:
        return
    sec = int(t)
    tv = struct.pack("ll", sec, int((t - sec) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    sock.settimeout(None)


def _roundtrip(conn: Any, data: bytes) -> Any:
    """Send one command and read its reply straight from the socket (redis-py's parser costs about a
    fifth of a loopback round trip per reply; ours handles the few reply shapes scripts produce)."""
    sock = conn._sock
    if sock is None:
        conn.connect()
        sock = conn._sock
    if sock.gettimeout() is not None:  # (new connection, or redis-py set a timeout of its own)
        _kernel_timeouts(sock)
    sock.sendall(data)
    buf = sock.recv(65536)
    while True:
        if not buf:
            import redis.exceptions as rx

            raise rx.ConnectionError("connection closed by server")
        try:
            val, _ = _parse(buf, 0)
        except _Incomplete:
            more = sock.recv(65536)
            if not more:
                buf = b""
                continue
            buf += more
            continue
        if isinstance(val, _ErrorReply):
            raise conn._parser.parse_error(val.msg)
        return val


class StandaloneTransport:
    """One Redis server (TCP, TLS or unix socket)."""

    def __init__(self, opts: RedisOptions, pool: Any = None) -> None:
        from redis.connection import ConnectionPool

        if pool is None:
            timeout = min(max(opts.ttl / 3.0, 0.2), 10.0)
            pool = ConnectionPool.from_url(
                opts.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout, protocol=2
            )
        self._cls = pool.connection_class
        self._kw: dict[str, Any] = _resp2(pool.connection_kwargs)
        self.errors = _Errors(opts, self._kw.get("password"))
        self._free: list[Any] = []
        self._created = 0
        self._max = opts.max_connections
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiting = 0
        self._closed = False

    # -- connections -------------------------------------------------------------------------------
    def new_connection(self, socket_timeout: float | None = None) -> Any:
        kw = dict(self._kw)
        if socket_timeout is not None:
            kw["socket_timeout"] = socket_timeout
        return self._cls(**kw)

    def _get(self) -> Any:
        try:
            return self._free.pop()
        except IndexError:
            pass
        with self._cond:
            while not self._free:
                if self._created < self._max:
                    self._created += 1
                    return self._cls(**self._kw)
                self._waiting += 1
                try:
                    self._cond.wait()
                finally:
                    self._waiting -= 1
            return self._free.pop()

    def _put(self, conn: Any) -> None:
        with self._lock:  # (the condition's lock, without Condition's Python-level __enter__)
            self._free.append(conn)
            if self._waiting:
                self._cond.notify()

    # -- commands ----------------------------------------------------------------------------------
    def call(self, script: Script, target: Target, args: tuple[str | bytes | int, ...]) -> Any:
        conn = self._get()
        try:
            return self._call_on(conn, script, target, args)
        finally:
            self._put(conn)

    def _call_on(self, conn: Any, script: Script, target: Target, args: tuple[str | bytes | int, ...]) -> Any:
        rx = self.errors.rx
        try:
            try:
                return _roundtrip(conn, pack(script.evalsha_head, target.nbody, target.body, args))
            except rx.NoScriptError:
                return _roundtrip(conn, pack(script.eval_head, target.nbody, target.body, args))
        except BaseException as exc:
            if isinstance(exc, (rx.ConnectionError, rx.TimeoutError, OSError, ValueError)) or not isinstance(
                exc, Exception
            ):
                # Unknown state of the stream (or interrupted mid-reply): never reuse it.
                conn.disconnect()
            if isinstance(exc, Exception):
                raise self.errors.convert(exc, f"script {script.name}") from None
            raise

    def call_then_wait(self, script: Script, target: Target, args: tuple[str | bytes | int, ...],
                       replicas: int, timeout: float) -> tuple[Any, int]:
        """Run a script, then ``WAIT`` on the same connection (replica acknowledgement of it)."""
        conn = self._get()
        try:
            reply = self._call_on(conn, script, target, args)
            try:
                conn.send_command("WAIT", replicas, max(1, int(timeout * 1000)))
                acked = int(conn.read_response())
            except BaseException as exc:
                conn.disconnect()
                if isinstance(exc, Exception):
                    raise self.errors.convert(exc, "WAIT") from None
                raise
            return reply, acked
        finally:
            self._put(conn)

    def call_many(self, calls: Sequence[tuple[Script, Target, tuple[str | bytes | int, ...]]]) -> list[Any]:
        """Pipeline several scripts (one round trip); each result is a reply or a converted error."""
        if not calls:
            return []
        rx = self.errors.rx
        conn = self._get()
        try:
            try:
                conn.send_packed_command(
                    [b"".join(pack(s.evalsha_head, t.nbody, t.body, a) for s, t, a in calls)], False
                )
                out: list[Any] = []
                for _ in calls:
                    try:
                        out.append(conn.read_response())
                    except rx.ResponseError as exc:
                        out.append(exc)
            except BaseException as exc:
                conn.disconnect()
                if isinstance(exc, Exception):
                    err = self.errors.convert(exc, "renewal")
                    return [err] * len(calls)
                raise
            for i, r in enumerate(out):
                if isinstance(r, rx.NoScriptError):
                    s, t, a = calls[i]
                    try:
                        out[i] = self._call_on(conn, s, t, a)
                    except (Transient, BackendError) as exc:
                        out[i] = exc
                elif isinstance(r, Exception):
                    out[i] = self.errors.convert(r, "renewal")
            return out
        finally:
            self._put(conn)

    def scan(self, pattern: str) -> Iterable[bytes]:
        conn = self._get()
        try:
            cursor = b"0"
            while True:
                conn.send_command("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
                cursor, keys = conn.read_response()
                yield from keys
                if cursor in (b"0", 0, "0"):
                    return
        except Exception as exc:
            conn.disconnect()
            raise self.errors.convert(exc, "SCAN") from None
        finally:
            self._put(conn)

    def subscriber_connection(self) -> Any:
        return self.new_connection(socket_timeout=None)

    def close(self) -> None:
        with self._cond:
            conns, self._free = self._free, []
        for c in conns:
            try:
                c.disconnect()
            except Exception:
                pass


class ClusterTransport:
    """Redis Cluster through redis-py's cluster client (routing by the primitive's hash tag)."""

    def __init__(self, opts: RedisOptions, client: Any = None) -> None:
        from redis.cluster import RedisCluster
        from redis.connection import parse_url

        if client is not None:
            node = client.get_default_node()
            kw = dict(node.redis_connection.connection_pool.connection_kwargs)
            for k in ("host", "port", "db"):
                kw.pop(k, None)
            self.client = client
        else:
            timeout = min(max(opts.ttl / 3.0, 0.2), 10.0)
            kw = parse_url(opts.redis_url)  # type: ignore[no-untyped-call]
            kw.pop("db", None)
            self.client = RedisCluster(
                socket_timeout=timeout, socket_connect_timeout=timeout,
                max_connections=opts.max_connections, protocol=2, **kw,
            )
        self._sub_kw = _resp2(kw)
        self.errors = _Errors(opts, kw.get("password"))

    def call(self, script: Script, target: Target, args: tuple[str | bytes | int, ...]) -> Any:
        rx = self.errors.rx
        flat = (*target.keys, *target.const, *args)
        try:
            try:
                return self.client.evalsha(script.sha, len(target.keys), *flat)
            except rx.NoScriptError:
                return self.client.eval(script.text, len(target.keys), *flat)
        except Exception as exc:
            raise self.errors.convert(exc, f"script {script.name}") from None

    def call_then_wait(self, script: Script, target: Target, args: tuple[str | bytes | int, ...],
                       replicas: int, timeout: float) -> tuple[Any, int]:
        raise BackendError("wait_replicas is not supported with cluster=true")

    def call_many(self, calls: Sequence[tuple[Script, Target, tuple[str | bytes | int, ...]]]) -> list[Any]:
        out: list[Any] = []
        for s, t, a in calls:
            try:
                out.append(self.call(s, t, a))
            except (Transient, BackendError) as exc:
                out.append(exc)
        return out

    def scan(self, pattern: str) -> Iterable[bytes]:
        try:
            yield from self.client.scan_iter(match=pattern, count=1000, target_nodes=RedisClusterPrimaries)
        except Exception as exc:
            raise self.errors.convert(exc, "SCAN") from None

    def subscriber_connection(self) -> Any:
        # Classic PUBLISH is broadcast to every node of a cluster: one subscription on any node
        # receives the grants made on all of them.
        from redis.connection import Connection, SSLConnection

        kw = dict(self._sub_kw)
        cls = kw.pop("connection_class", Connection)
        if kw.pop("ssl", False):
            cls = SSLConnection
        node = self.client.get_random_node()
        kw.update(host=node.host, port=node.port, socket_timeout=None)
        return cls(**kw)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass


RedisClusterPrimaries = "primaries"

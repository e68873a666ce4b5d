"""Where the ``file://`` backend keeps its state, and how it opens files there safely.

Layout of a backend directory::

    <dir>/names/<hash>.state   one per primitive name (never deleted: deleting breaks exclusion)
    <dir>/procs/<id>.live      one per participating process: flock'ed LOCK_EX for the process's life
    <dir>/procs/<id>.fifo      held open for writing by that process: its death hangs up readers
    <dir>/procs/<id>-<n>.sock  that process's wake-up sockets (datagrams: "look at the state again")

Names are data: the file name is a hash of the UTF-8 bytes of the name (no normalisation, so names that
differ only in case or Unicode normalisation are different primitives), and the real name is stored in
the file and compared on open. Every open goes through a directory fd with ``O_NOFOLLOW``, so a symlink
planted at a lock path is refused instead of followed, and renaming the directory's path does not
redirect an open backend.
"""

from __future__ import annotations

import hashlib
import os
import stat
from urllib.parse import unquote, urlsplit

from ..._errors import BackendError, InvalidArgument

O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)

NAMES = "names"
PROCS = "procs"


def parse_url(url: str) -> str | None:
    """The directory named by a ``file://`` URL, or None for the per-user default. Raises
    InvalidArgument (before any I/O) for a host part, a relative path, a query or a NUL."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidArgument(f"unparseable file:// URL: {exc}", argument="url") from None
    if parts.scheme.lower() != "file":
        raise InvalidArgument("the file backend takes file:// URLs", argument="url")
    if parts.netloc not in ("", "localhost"):
        # Never echo the host part: it may carry user:password@.
        raise InvalidArgument(
            "file:// URLs name a local directory, not a host; write file:///absolute/path (three "
            "slashes) or file:// for the per-user default", argument="url",
        )
    if parts.query or parts.fragment:
        raise InvalidArgument("file:// URLs take no query or fragment", argument="url")
    try:
        path = unquote(parts.path, errors="strict")
    except UnicodeDecodeError:
        raise InvalidArgument("the file:// path is not valid percent-encoded UTF-8", argument="url") from None
    if not path:
        return None
    if "\x00" in path:
        raise InvalidArgument("the file:// path contains a NUL character", argument="url")
    if not path.startswith("/"):
        raise InvalidArgument(f"the file:// path must be absolute, got {path!r}", argument="url")
    return path


def default_dir() -> str:
    """``/tmp/interlock-<uid>``: one fixed place per user, so every process of the user (shells, cron
    jobs, services) meets in the same directory. (``$XDG_RUNTIME_DIR`` is not used: it is unset in cron
    jobs and removed at logout, and two processes that silently use different directories do not
    exclude each other.)"""
    return f"/tmp/interlock-{os.getuid()}"


def _check_private(st: os.stat_result, path: str) -> None:
    uid = os.getuid()
    if not stat.S_ISDIR(st.st_mode):
        raise BackendError(f"{path} is not a directory; remove it or set INTERLOCK_URL", path=path)
    if st.st_uid != uid:
        raise BackendError(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {uid}); refusing to use it (another user "
            "could see or tamper with your locks). Remove it, or set INTERLOCK_URL=file:///another/dir",
            path=path,
        )


def open_base(path: str | None) -> tuple[int, str]:
    """Open (creating if needed) the backend directory; returns (dirfd, path).

    The default directory is created 0700 and must be a real directory (not a symlink) owned by the
    calling user, with no group or other access (fixed if the user owns it). An explicit directory is
    created with the usual umask and used as is (sharing it with a group is the user's choice).
    """
    private = path is None
    if path is None:
        path = default_dir()
    try:
        if private:
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
            fd = os.open(path, os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            try:
                st = os.fstat(fd)
                _check_private(st, path)
                if st.st_mode & 0o077:
                    os.fchmod(fd, 0o700)
            except BaseException:
                os.close(fd)
                raise
        else:
            os.makedirs(path, exist_ok=True)
            fd = os.open(path, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        return fd, path
    except OSError as exc:
        if exc.errno == getattr(os, "ELOOP", -1) or (private and exc.errno == getattr(os, "ENOTDIR", -1)):
            raise BackendError(
                f"{path} is a symlink or not a directory; refusing to follow it. Remove it or set "
                "INTERLOCK_URL", path=path,
            ) from None
        raise BackendError(f"cannot open the lock directory {path}: {exc.strerror}", path=path) from None


def open_subdir(base_fd: int, name: str, mode: int, base_path: str) -> int:
    """Open ``base/name`` (creating it), refusing a symlink planted there."""
    try:
        try:
            os.mkdir(name, mode, dir_fd=base_fd)
        except FileExistsError:
            pass
        return os.open(name, os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, dir_fd=base_fd)
    except OSError as exc:
        raise BackendError(
            f"cannot open {base_path}/{name}: {exc.strerror} (a symlink there is refused)", path=base_path
        ) from None


def name_file(name: str) -> str:
    """The state file name for a primitive name: a hash of its exact UTF-8 bytes (lone surrogates
    included), so no name can reach outside ``names/`` and distinct names never share a file."""
    raw = name.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(raw, digest_size=20, person=b"interlock-name").hexdigest() + ".state"


def encode_name(name: str) -> bytes:
    return name.encode("utf-8", "surrogatepass")


def decode_name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")

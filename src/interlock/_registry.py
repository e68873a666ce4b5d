"""URL -> backend. Backends are imported lazily so optional dependencies stay optional."""

from __future__ import annotations

import importlib
import os
import threading
from urllib.parse import urlsplit, urlunsplit

from ._errors import InvalidArgument, InvalidArgumentType, MissingDependency
from ._spi import Backend

DEFAULT_URL = "memory://"

# scheme -> (module, class, pip extra or None)
_SCHEMES: dict[str, tuple[str, str, str | None]] = {
    "memory": ("interlock.backends.memory", "MemoryBackend", None),
    "file": ("interlock.backends.file", "FileBackend", None),
    "redis": ("interlock.backends.redis", "RedisBackend", "redis"),
    "rediss": ("interlock.backends.redis", "RedisBackend", "redis"),
    "unix": ("interlock.backends.redis", "RedisBackend", "redis"),
    "redis+unix": ("interlock.backends.redis", "RedisBackend", "redis"),
}

_cache: dict[str, Backend] = {}
_cache_lock = threading.Lock()

_SECRET_QUERY_KEYS = ("password", "passwd", "pass", "token", "secret", "key")


def redact_url(url: str) -> str:
    """Remove credentials (userinfo password, secret-looking query values) from a URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    query = parts.query
    if query:
        kept = []
        for item in query.split("&"):
            k, sep, _v = item.partition("=")
            kept.append(f"{k}=***" if sep and k.lower() in _SECRET_QUERY_KEYS else item)
        query = "&".join(kept)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def default_url() -> str:
    return os.environ.get("INTERLOCK_URL") or DEFAULT_URL


def backend_class(url: str) -> type[Backend]:
    if not isinstance(url, str):
        raise InvalidArgumentType(f"url must be a str, got {type(url).__name__}", argument="url")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in _SCHEMES:
        known = ", ".join(f"{s}://" for s in _SCHEMES)
        raise InvalidArgument(
            f"unsupported backend URL {redact_url(url)!r}; use one of {known}", argument="url"
        )
    module, cls, extra = _SCHEMES[scheme]
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        if extra is None:
            raise
        raise MissingDependency(
            f"the {scheme}:// backend needs an optional dependency ({exc.name or exc}); "
            f"install it with: pip install 'interlock[{extra}]'",
            extra=extra,
        ) from None
    backend: type[Backend] = getattr(mod, cls)
    return backend


def connect(url: str | None = None) -> Backend:
    """The shared backend for ``url`` (default: ``$INTERLOCK_URL``, else ``memory://``).

    Backends are cached per URL in the process, so every object created with the same URL shares one
    namespace, one connection pool and one set of helper threads. The URL is validated before any I/O.
    """
    if url is None:
        url = default_url()
    cls = backend_class(url)
    with _cache_lock:
        b = _cache.get(url)
        if b is None:
            b = _cache[url] = cls(url)
        return b


def live_backends() -> list[Backend]:
    with _cache_lock:
        return list(_cache.values())


def _forget_after_fork() -> None:
    # A child must not share sockets or helper threads with its parent: start from a clean cache.
    global _cache_lock
    _cache.clear()
    _cache_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)

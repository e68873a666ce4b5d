"""URL -> options for the Redis backend. Validation only: no I/O, no import of redis-py."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ..._errors import InvalidArgument
from ..._registry import redact_url

DEFAULT_TTL = 10.0
DEFAULT_PREFIX = "interlock:"
DEFAULT_IDLE_EXPIRY = 7 * 24 * 3600.0
DEFAULT_MAX_CONNECTIONS = 16

# Query parameters that belong to interlock; everything else is passed to redis-py's URL parser.
_OWN = ("prefix", "ttl", "margin", "wait_replicas", "wait_timeout", "cluster", "idle_expiry",
        "max_connections")
_PREFIX_RE = re.compile(r"^[\x21-\x7a\x7c\x7e]{0,200}$")  # printable, no space, no '{' '}'
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class RedisOptions:
    """Everything the backend needs from its URL. ``redis_url`` still holds the secret: never show it."""

    redis_url: str = field(repr=False)
    display_url: str
    prefix: str = DEFAULT_PREFIX
    ttl: float = DEFAULT_TTL
    margin: float = 0.5
    wait_replicas: int = 0
    wait_timeout: float = 1.0
    cluster: bool = False
    idle_expiry: float = DEFAULT_IDLE_EXPIRY
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    @property
    def renew_interval(self) -> float:
        """Renew every TTL/3: two more attempts fit before the conservative deadline."""
        return self.ttl / 3.0


def _number(url: str, key: str, raw: str, *, low: float, high: float = math.inf) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (low <= value <= high):
        raise InvalidArgument(
            f"{key}={raw!r} in {redact_url(url)!r} must be a number of seconds in [{low}, {high}]",
            argument=key,
        )
    return value


def _flag(url: str, key: str, raw: str) -> bool:
    low = raw.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise InvalidArgument(f"{key}={raw!r} in {redact_url(url)!r} must be true or false", argument=key)


def parse_options(url: str) -> RedisOptions:
    """Split interlock's query parameters off ``url``; raise InvalidArgument before any I/O."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise InvalidArgument(f"cannot parse the URL {redact_url(url)!r}", argument="url") from None
    scheme = parts.scheme.lower()
    if scheme == "redis+unix":
        scheme = "unix"
    if scheme not in ("redis", "rediss", "unix"):
        raise InvalidArgument(f"not a Redis URL: {redact_url(url)!r}", argument="url")
    if scheme == "unix" and not parts.path:
        raise InvalidArgument(
            f"{redact_url(url)!r} names no socket; use unix:///path/to/redis.sock?db=0", argument="url"
        )
    if scheme != "unix":
        try:
            _ = parts.port
        except ValueError:
            raise InvalidArgument(f"bad port in {redact_url(url)!r}", argument="url") from None
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise InvalidArgument(
                f"the path of {redact_url(url)!r} must be a database number (redis://host:6379/0)",
                argument="url",
            )
    kept: list[tuple[str, str]] = []
    own: dict[str, str] = {}
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k in _OWN:
            own[k] = v
        else:
            kept.append((k, v))
    kw: dict[str, Any] = {}
    if "prefix" in own:
        prefix = unquote(own["prefix"])
        if not _PREFIX_RE.match(prefix):
            raise InvalidArgument(
                f"prefix={prefix!r} must be at most 200 printable characters without spaces, '{{' or '}}'",
                argument="prefix",
            )
        kw["prefix"] = prefix
    ttl = _number(url, "ttl", own["ttl"], low=0.05, high=86400.0) if "ttl" in own else DEFAULT_TTL
    kw["ttl"] = ttl
    # The margin is what the holder gives up to stay safe if the server's clock runs faster than its
    # own, plus the time to notice: default 5 % of the TTL, at least 10 ms.
    kw["margin"] = (
        _number(url, "margin", own["margin"], low=0.0, high=ttl / 2) if "margin" in own else max(0.05 * ttl, 0.01)
    )
    if "wait_replicas" in own:
        raw = own["wait_replicas"]
        if not raw.isdigit() or int(raw) > 100:
            raise InvalidArgument(f"wait_replicas={raw!r} must be a whole number 0..100",
                                  argument="wait_replicas")
        kw["wait_replicas"] = int(raw)
    if "wait_timeout" in own:
        kw["wait_timeout"] = _number(url, "wait_timeout", own["wait_timeout"], low=0.001, high=3600.0)
    if "cluster" in own:
        kw["cluster"] = _flag(url, "cluster", own["cluster"])
    if "idle_expiry" in own:
        kw["idle_expiry"] = _number(url, "idle_expiry", own["idle_expiry"], low=max(60.0, 3 * ttl))
    if "max_connections" in own:
        raw = own["max_connections"]
        if not raw.isdigit() or not 1 <= int(raw) <= 10000:
            raise InvalidArgument(f"max_connections={raw!r} must be a whole number 1..10000",
                                  argument="max_connections")
        kw["max_connections"] = int(raw)
    if scheme == "unix":  # urlunsplit drops the "//" of an empty authority
        query = urlencode(kept)
        redis_url = f"unix://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
    else:
        redis_url = urlunsplit((scheme, parts.netloc, parts.path, urlencode(kept), parts.fragment))
    return RedisOptions(redis_url=redis_url, display_url=redact_url(url), **kw)

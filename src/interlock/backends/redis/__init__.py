"""``redis://``, ``rediss://`` and ``unix://``: leased, fenced, fair primitives across hosts.

See :class:`RedisBackend` for the URL options and ``docs/redis-backend.md`` for the guarantees
(recovery time, fencing, failover caveats). redis-py is imported lazily (``interlock[redis]``).
"""

from __future__ import annotations

from ._backend import RedisBackend, RedisChannel
from ._config import DEFAULT_PREFIX, DEFAULT_TTL, RedisOptions, parse_options

__all__ = ["DEFAULT_PREFIX", "DEFAULT_TTL", "RedisBackend", "RedisChannel", "RedisOptions", "parse_options"]

"""The Lua fast paths (lua/acquire_fast.lua, lua/release_fast.lua) against the general path they
short-cut: the same sequence of operations, run once with the scripts as shipped and once with the
fast paths left out, must give the same replies and the same state (up to tokens and times, which
come from the server's clock). The shipped run also asserts which steps took the fast path, so this
cannot pass by the fast path never being used."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from interlock.backends.redis import _scripts as S
from interlock.testing.servers import RedisServer

pytestmark = pytest.mark.servers

_FAST = "--@fast"
_GENERAL_ONLY = "error('general path')"  # inserted after the fast path: reached = not taken

# (op, request id, args after the id, takes the fast path in the shipped scripts)
STEPS: list[tuple[str, str, tuple[Any, ...], bool]] = [
    ("acquire", "s.1", ("s", 1, "x", "bf", 10000, "t1\th\t1\tpy"), False),  # creates the keys
    ("release", "s.1", ("r", 0, "1"), True),  # abandoned: the next grant reports died
    ("acquire", "s.2", ("s", 1, "x", "bf", 10000, "t1\th\t1\tpy"), True),
    ("acquire", "s.2", ("s", 1, "x", "bf", 10000, "t1\th\t1\tpy"), False),  # a retry: same grant
    ("acquire", "s.3", ("s", 1, "x", "f", 10000, "t2\th\t1\tpy"), False),  # taken: would block
    ("release", "s.2", ("r", 0, "0"), True),
    ("release", "s.2", ("r", 0, "0"), False),  # not held any more
    ("acquire", "s.4", ("s", 1, "x", "bf", 10000, "t1\th\t1\tpy"), True),
    ("acquire", "s.5", ("s", 1, "x", "bf", 10000, "t2\th\t1\tpy"), False),  # queues
    ("release", "s.4", ("r", 0, "0"), False),  # grants s.5 (queue not empty)
    ("release", "s.5", ("r", 0, "0"), False),  # (the queue was seen empty: q = "0" from now on)
    ("acquire", "s.6", ("s", 1, "x", "bf", 10000, "t1\th\t1\tpy"), True),
    ("release", "s.6", ("f", 0, "0"), False),  # forget: not a plain release
]


def _text(name: str, fast: bool) -> str:
    script = S.ACQUIRE if name == "acquire" else S.RELEASE
    if fast:
        j = script.text.index("\n" + _FAST) + 1  # the marker line (after the fast path)
        i = script.text.index("\n", j) + 1
        return script.text[:i] + _GENERAL_ONLY + "\n" + script.text[i:]
    return S._read("prelude") + "\n" + S._read(name)  # no fast path spliced in


def _state(r: redis.Redis, keys: list[str]) -> tuple[Any, ...]:
    m = {k.decode(): v.decode() for k, v in r.hgetall(keys[0]).items()}
    norm = {}
    for k, value in m.items():
        v = value
        if k in ("t", "e", "i"):  # token, expiry bound, refresh time: clock values
            v = "<clock>"
        elif k[0] == "h":  # holder record: sid|permits|mode died|token|granted_ms|info
            f = v.split("|")
            f[3] = f[4] = "<clock>"
            v = "|".join(f)
        elif k[0] == "w":  # waiter record: sid|permits|mode|seq|enqueued_ms|info
            f = v.split("|")
            f[4] = "<clock>"
            v = "|".join(f)
        norm[k] = v
    q = [x.decode() for x in r.zrange(keys[1], 0, -1)]
    x = sorted(x.decode() for x in r.zrange(keys[2], 0, -1))
    return norm, q, x


def _run(r: redis.Redis, base: str, fast: bool) -> list[tuple[Any, ...]]:
    keys = [base + ":m", base + ":q", base + ":x"]
    const = ["p:c:", "lock", "1", "1", "604800000"]
    out = []
    for op, rid, args, takes_fast in STEPS:
        try:
            reply = r.eval(_text(op, fast and takes_fast), 3, *keys, *const, rid, *args)
        except redis.ResponseError as exc:
            raise AssertionError(f"{op} {rid} {args}: {'did not take' if 'general path' in str(exc) else ''}"
                                 f" the fast path: {exc}") from None
        if op == "acquire" and reply[0] in (0, 1):  # token, or ms to the next expiry: clock values
            reply = [reply[0], "<clock>", *reply[2:]]
        out.append((op, rid, args, reply, _state(r, keys)))
    return out


def test_fast_paths_write_what_the_general_path_writes(redis_server: RedisServer) -> None:
    r = redis.Redis.from_url(redis_server.url)
    try:
        shipped = _run(r, "p:{fast}", fast=True)
        general = _run(r, "p:{general}", fast=False)
    finally:
        r.close()
    for a, b in zip(shipped, general, strict=True):
        assert a == b

"""The Lua scripts (``lua/*.lua``, KEYS/ARGV documented in each file) and their wire encoding.

Every state change is one script: ``prelude.lua`` (state load, purge of expired leases, FIFO grant,
publish) followed by the operation's body; acquire and release splice a fast path for the
uncontended case (``<name>_fast.lua``) into the prelude right after the state load. Scripts are sent
with ``EVALSHA``; a ``NOSCRIPT`` reply (first use, server restart, ``SCRIPT FLUSH``) is answered by
sending the text with ``EVAL`` once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources


def _read(name: str) -> str:
    return (resources.files(__package__) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def _exists(name: str) -> bool:
    return (resources.files(__package__) / "lua" / f"{name}.lua").is_file()


@dataclass(frozen=True)
class Script:
    name: str
    text: str
    sha: str
    # RESP prefixes ("*<n>\r\n" comes first and is computed per call).
    evalsha_head: bytes
    eval_head: bytes


def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


_FAST = "\n--@fast"  # a line of prelude.lua


def _make(name: str, with_prelude: bool = True) -> Script:
    if with_prelude:
        # An operation's fast path (``<name>_fast.lua``) goes where the prelude has loaded the state
        # but not yet defined its functions: creating those closures costs the server about as much
        # as an uncontended acquire's Redis calls, so the common case returns before them.
        pre = _read("prelude")
        if _FAST not in pre:
            raise RuntimeError(f"prelude.lua lost its {_FAST} line")
        fast = _read(f"{name}_fast") if _exists(f"{name}_fast") else ""
        text = pre.replace(_FAST, "\n" + fast.rstrip("\n") + _FAST, 1) + "\n" + _read(name)
    else:
        text = _read(name)
    raw = text.encode("utf-8")
    sha = hashlib.sha1(raw).hexdigest()
    return Script(
        name=name,
        text=text,
        sha=sha,
        evalsha_head=_bulk(b"EVALSHA") + _bulk(sha.encode("ascii")),
        eval_head=_bulk(b"EVAL") + _bulk(raw),
    )


ACQUIRE = _make("acquire")
RELEASE = _make("release")
CANCEL = _make("cancel")
POLL = _make("poll")
RENEW = _make("renew")
SIGNAL = _make("signal")
STATUS = _make("status", with_prelude=False)
ALL = (ACQUIRE, RELEASE, CANCEL, POLL, RENEW, SIGNAL, STATUS)


def encode_arg(value: str | bytes | int) -> bytes:
    if isinstance(value, bytes):
        return _bulk(value)
    if isinstance(value, str):
        return _bulk(value.encode("utf-8"))
    return _bulk(b"%d" % value)


def _enc(v: str | bytes | int) -> bytes:
    if isinstance(v, str):
        b = v.encode("utf-8")
    elif isinstance(v, int):
        b = b"%d" % v
    else:
        b = v
    return b"$%d\r\n%s\r\n" % (len(b), b)


# Encoded commands around the request id, by value: an acquire repeats the same script, keys, constant
# arguments and sid/permits/mode/flags/ttl/info, a release the same ("r", 0, "0"), so the hot paths
# join three byte strings (bytes %-formatting of the whole command was a measurable share of the
# client's time). Bounded: cleared when full (renewals with many ids are not cached at all).
_packed: dict[tuple[bytes, bytes, int, int, tuple[str | bytes | int, ...]], tuple[bytes, bytes]] = {}
_PACKED_MAX = 1024


def pack(head: bytes, nargs: int, body: bytes, args: tuple[str | bytes | int, ...]) -> bytes:
    """One RESP command: ``head`` (command + sha/text), ``body`` (numkeys, keys and constant args,
    already encoded, ``nargs`` items), then ``args`` (the first one, if a str, is the request id)."""
    n = len(args)
    if not n:
        return b"*%d\r\n%s%s" % (2 + nargs, head, body)
    first = args[0]
    if n > 8 or first.__class__ is not str:
        return b"".join([b"*%d\r\n" % (2 + nargs + n), head, body, *map(_enc, args)])
    rid = first.encode()
    rest = args[1:]
    key = (head, body, nargs, len(rid), rest)
    parts = _packed.get(key)
    if parts is None:
        if len(_packed) >= _PACKED_MAX:
            _packed.clear()
        parts = _packed[key] = (b"*%d\r\n%s%s$%d\r\n" % (2 + nargs + n, head, body, len(rid)),
                                b"\r\n" + b"".join(map(_enc, rest)))
    return parts[0] + rid + parts[1]

"""The Lua scripts (``lua/*.lua``, KEYS/ARGV documented in each file) and their wire encoding.

Every state change is one script: ``prelude.lua`` (state load, purge of expired leases, FIFO grant,
publish) followed by the operation's body. Scripts are sent with ``EVALSHA``; a ``NOSCRIPT`` reply
(first use, server restart, ``SCRIPT FLUSH``) is answered by sending the text with ``EVAL`` once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources


def _read(name: str) -> str:
    return (resources.files(__package__) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


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


def _make(name: str, with_prelude: bool = True) -> Script:
    text = (_read("prelude") + "\n" + _read(name)) if with_prelude else _read(name)
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


def pack(head: bytes, nargs: int, body: bytes, args: tuple[str | bytes | int, ...]) -> bytes:
    """One RESP command: ``head`` (command + sha/text), ``body`` (numkeys, keys and constant args,
    already encoded, ``nargs`` items), then ``args``. (Inlined encoding: this runs twice per
    acquire+release, where a call per argument is a measurable share of the client's time.)"""
    parts = [b"*%d\r\n" % (2 + nargs + len(args)), head, body]
    for v in args:
        if isinstance(v, str):
            b = v.encode("utf-8")
        elif isinstance(v, int):
            b = b"%d" % v
        else:
            b = v
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)

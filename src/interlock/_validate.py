"""Argument checks shared by every backend. They run before any I/O and raise typed errors whose message
says what was wrong and what to do instead."""

from __future__ import annotations

import math

from ._errors import InvalidArgument, InvalidArgumentType

MAX_NAME_LENGTH = 512


def check_name(name: object) -> str:
    if type(name) is not str:
        raise InvalidArgumentType(
            f"name must be a str, got {type(name).__name__}; pass a non-empty string such as 'orders'",
            argument="name",
        )
    if not name:
        raise InvalidArgument(
            "name must not be empty; pass a non-empty string such as 'orders'", argument="name"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"name is {len(name)} characters long; use at most {MAX_NAME_LENGTH}", argument="name"
        )
    if "\x00" in name:
        raise InvalidArgument("name must not contain NUL characters", argument="name")
    return name


def check_permits(value: object, what: str = "permits", *, allow_zero: bool = False) -> int:
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgumentType(
                f"{what} must be an int, got {type(value).__name__} ({value!r}); pass a whole number",
                argument=what,
            )
        value = int(value)
    if value < 0 or (value == 0 and not allow_zero):
        lowest = 0 if allow_zero else 1
        raise InvalidArgument(
            f"{what} must be >= {lowest}, got {value}; pass a positive whole number", argument=what
        )
    return value


def check_timeout(timeout: object) -> float | None:
    """``None`` waits forever; a number is seconds (0 means "only if free now")."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidArgumentType(
            f"timeout must be a number of seconds or None, got {type(timeout).__name__}",
            argument="timeout",
        )
    t = float(timeout)
    if math.isnan(t):
        raise InvalidArgument("timeout is NaN; pass seconds >= 0 or None to wait forever", argument="timeout")
    if t < 0:
        raise InvalidArgument(
            f"timeout must be >= 0 seconds, got {t}; pass None to wait forever", argument="timeout"
        )
    if math.isinf(t):
        return None
    return t

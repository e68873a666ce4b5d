"""``interlock status [NAME] [--url URL] [--json]``."""

from __future__ import annotations

import argparse
import json
import sys

from .. import InterlockError, connect, redact_url
from .._errors import InvalidArgument, InvalidArgumentType
from . import EXIT_MISSING, EXIT_UNAVAILABLE, EXIT_USAGE, resolve_url
from ._format import table


def status(args: argparse.Namespace) -> int:
    url = resolve_url(args.url)
    shown = redact_url(url)
    try:
        backend = connect(url)
        stats = backend.status(args.name)
    except (InvalidArgument, InvalidArgumentType) as exc:
        print(f"interlock status: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except InterlockError as exc:
        print(f"interlock status: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    missing = args.name is not None and not stats
    if args.json:
        doc = {"url": shown, "primitives": [s.to_dict() for s in stats]}
        print(json.dumps(doc, indent=2, sort_keys=True, default=str))
    elif missing:
        print(f"interlock status: no primitive named {args.name!r} on {shown}", file=sys.stderr)
    else:
        where = getattr(backend, "path", None)
        head = f"{shown}" + (f" ({where})" if where and where not in shown else "")
        n = len(stats)
        print(f"{head}: {n} primitive{'s' if n != 1 else ''}")
        if stats:
            print(table(stats))
    return EXIT_MISSING if missing else 0

"""The ``interlock`` command line (``run``, ``status``, ``demo``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(prog="interlock", description=__doc__)
    p.add_argument("--version", action="version", version=f"interlock {__version__}")
    p.add_subparsers(dest="command")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return 0

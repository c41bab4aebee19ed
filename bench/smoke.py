"""``--smoke`` for every benchmark: the real workload at tiny sizes, in seconds.

A smoke run exists so that the test suite can run each benchmark end to end and notice when its
workload no longer produces what it measures (the benchmark then exits non-zero). Its figures mean
nothing and it says so.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

BANNER = "SMOKE RUN: tiny sizes, to show that the workload still runs end to end; the figures mean nothing"


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None, sizes: dict[str, Any],
               fails_when: str) -> argparse.Namespace:
    """Add ``--smoke`` to ``parser`` and parse ``argv``: with it, ``sizes`` become the defaults
    (options given explicitly still win) and the banner is printed."""
    shown = ", ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in sizes.items())
    parser.add_argument("--smoke", action="store_true",
                        help=f"a run of a few seconds at tiny sizes ({shown}; options given explicitly win) that "
                             f"fails when {fails_when}; its figures mean nothing")
    known, _ = parser.parse_known_args(argv)
    if known.smoke:
        parser.set_defaults(**sizes)
    args = parser.parse_args(argv)
    if args.smoke:
        print(BANNER, file=sys.stderr, flush=True)
    return args

"""What every command module shares: logging set-up, the database URL in force, the console."""

from __future__ import annotations

import argparse
import logging
import sys

from bridge.core.config import Config


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def db_url(args: argparse.Namespace, config: Config) -> str:
    """``--db``, else ``storage.url``, else the SQLite file in the user's data folder."""
    from bridge.storage.database import default_db_url
    return args.db or config.storage.url or default_db_url()


def console():
    from rich.console import Console
    return Console(stderr=True)

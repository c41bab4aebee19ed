"""What every command module shares: logging set-up, the database URL in force, the console."""

from __future__ import annotations

import argparse
import logging
import sys

from bridge.core.config import Config


LOG_FILE = "nt8bridge.log"


def setup_logging(level: str) -> None:
    """Log to stderr; where there is none (pythonw.exe, as the logon task starts the sidecar), to
    ``nt8bridge.log`` in the user's data folder, rotated at 10 MB, five kept."""
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if sys.stderr is not None:
        logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr, format=fmt)
        return
    from logging.handlers import RotatingFileHandler

    from bridge.core.config import user_data_dir
    folder = user_data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    handler = RotatingFileHandler(folder / LOG_FILE, maxBytes=10_000_000, backupCount=5, encoding="utf-8")
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], format=fmt)


def db_url(args: argparse.Namespace, config: Config) -> str:
    """``--db``, else ``storage.url``, else the SQLite file in the user's data folder."""
    from bridge.storage.database import default_db_url
    return args.db or config.storage.url or default_db_url()


def console():
    from rich.console import Console
    return Console(stderr=True)


def operator_key(path: str | None, variable: str | None = None):
    """The operator key of ``--key FILE`` (or ``--approver-key``), else of the file the environment names
    ($NT8BRIDGE_OPERATOR_KEY, or ``variable``), else None: an unsigned request, as a sidecar without
    ``security.operators_file`` takes it."""
    from bridge.transport.operators import ENV_KEY, key_from_env, read_operator_key
    return read_operator_key(path) if path else key_from_env(variable or ENV_KEY)


def add_control_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--control", metavar="ENDPOINT", help="the sidecar's control channel (default: "
                        "server.control_bind)")


def add_key_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", metavar="FILE", help="your operator key file, for a sidecar with operator keys "
                        "(default: $NT8BRIDGE_OPERATOR_KEY; docs/security.md)")

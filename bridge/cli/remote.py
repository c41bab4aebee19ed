"""Remote mode's files (docs/security.md): ``nt8bridge secret new`` writes the shared secret of the data
channel, ``nt8bridge operator new`` an operator's key (and adds it to the sidecar's operators file).
Registered on the main parser by :func:`register`. Nothing printed here ever shows a secret or a key."""

from __future__ import annotations

import argparse

from bridge.core.config import Config


def cmd_secret_new(args: argparse.Namespace, config: Config | None) -> int:
    from bridge.transport.security import new_secret_file

    path = new_secret_file(args.path, rotate=args.rotate)
    if args.rotate:
        print(f"{path}: a new secret in front; the old ones are still accepted by the sidecar until you delete their "
              "lines. Restart the sidecar, copy the file to each NT8 machine, then delete the old lines and restart "
              "it again (docs/security.md, key rotation)")
    else:
        print(f"{path}: a new shared secret (readable by you only). Set security.secret_file = \"{path}\" for the "
              "sidecar, and copy the file to each NT8 machine over a private channel for the strategy's 'Shared secret "
              "file' (docs/security.md)")
    return 0


def cmd_operator_new(args: argparse.Namespace, config: Config | None) -> int:
    from bridge.transport.operators import new_operator_key

    key_file = args.key_file or f"{args.name}.key"
    new_operator_key(args.name, key_file, args.operators, replace=args.replace)
    where = f" and added it to {args.operators} (restart the sidecar to load it)" if args.operators else \
        "; add it to the sidecar's operators file with --operators FILE"
    print(f"wrote the operator key of {args.name} to {key_file} (give it to {args.name} only){where}. They sign with "
          f"--key {key_file} or NT8BRIDGE_OPERATOR_KEY={key_file}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``secret`` and ``operator`` to the main parser."""
    s = sub.add_parser("secret", help="remote mode: the shared secret that authenticates NT8 and the sidecar")
    ssub = s.add_subparsers(dest="secret_command", required=True, metavar="SUBCOMMAND")
    d = ssub.add_parser("new", help="write a new random secret (256 bits, hex) to a file only you can read")
    d.add_argument("path", metavar="FILE")
    d.add_argument("--rotate", action="store_true", help="FILE exists: put a new secret in front of the old ones, "
                   "which the sidecar keeps accepting until their lines are deleted")
    d.set_defaults(func=cmd_secret_new, needs_config=False)

    s = sub.add_parser("operator", help="remote mode: operator keys that sign control-channel commands")
    osub = s.add_subparsers(dest="operator_command", required=True, metavar="SUBCOMMAND")
    d = osub.add_parser("new", help="a new key for an operator: their key file, and its entry in the sidecar's "
                        "operators file")
    d.add_argument("name", help="the operator's name, as commands name them (--operator, --who, --approved-by)")
    d.add_argument("--key-file", metavar="FILE", help="where to write the operator's key (default: NAME.key)")
    d.add_argument("--operators", metavar="FILE", help="the sidecar's operators file (security.operators_file) to add "
                   "the key to; created if missing")
    d.add_argument("--replace", action="store_true", help="a new key for an operator who has one (rotation, a lost "
                   "key): the old key stops working once the sidecar restarts with the new file")
    d.set_defaults(func=cmd_operator_new, needs_config=False)

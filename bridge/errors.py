"""Errors shared by the command-line modules (kept out of ``bridge.cli`` so that ``python -m bridge.cli``,
which runs that module as ``__main__``, still catches the one class every command raises)."""


class UserError(Exception):
    """A problem the user can fix; printed without a traceback, exit code 2."""

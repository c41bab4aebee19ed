"""Errors that cross package lines: the ones a command line or an operator sees."""


class UserError(Exception):
    """A problem the user can fix; printed without a traceback, exit code 2."""


class ControlError(RuntimeError):
    """An operator command could not be delivered or was refused; the message says why."""

"""The one kind of error a user's input causes.

Every error whose cause is the user's input (a config, a data file, a backend name, a run
directory, a command-line argument) derives from ``UserError``: its message is one line that
names the thing and what would be valid. The CLI prints it and exits 2; the Python API
(``precision_suite.run``) raises it. Anything else escaping is a bug in precision-suite.
"""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message ("" for none): how a user's code failing is quoted in a
    one-line error or a record."""
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


class UserError(Exception):
    """Bad input from the user; the message is one line (the CLI prints it and exits 2)."""


class UsageError(UserError):
    """Bad input that is none of the more specific kinds (an argument, a directory to resume)."""

"""Errors that a user can cause and fix.

The CLI prints a :class:`UserError` as one line and exits with status 2, without a traceback.
Raise it for bad input (a missing path, an unknown name, an option out of range); let
programming errors stay ordinary exceptions so that they keep their traceback.
"""


class UserError(Exception):
    """Bad input from the user: the message says what was wrong and what to do."""


def check_options(checks: list[tuple[bool, str]]) -> None:
    """Raise :class:`UserError` with the message of the first ``(ok, message)`` that is not
    ok: the check of a recipe's or a method's options, one line that says what to do."""
    for ok, message in checks:
        if not ok:
            raise UserError(message)

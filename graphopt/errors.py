"""Errors a user can cause and fix (bad path, bad key, bad value). The command line prints them in one
line, without a traceback."""


class UserError(Exception):
    """An error the user can fix: printed without a traceback."""

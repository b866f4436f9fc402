"""User-facing errors: the CLI turns these into one sentence and exit status 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (name, path, file, value), not a bug.

    The message must name the problem and the fix in one sentence.
    """


class UnknownNameError(UserError, KeyError):
    """A registry lookup failed; the message lists close matches and all choices."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""

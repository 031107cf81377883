"""The one exception type the CLI turns into a message and exit code 2, never a traceback."""

from __future__ import annotations


class NfcliError(Exception):
    """A problem with the user's input: the message says what is wrong, where, and how to fix it."""

    exit_code = 2

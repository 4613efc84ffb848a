"""The one error type that the command line turns into a one-line message and exit code 2."""


class UsageError(Exception):
    """Bad input from the user: a name, a value, a file. The message says what to do instead."""

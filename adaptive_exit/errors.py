"""The error types that the command line turns into a one-line message and exit code 2."""


class UsageError(Exception):
    """Bad input from the user: a name, a value, a file. The message says what to do instead."""


class PluginError(UsageError):
    """A plugin broke its contract or raised. The message names the plugin; the plugin's own exception, if any,
    is the ``__cause__`` (its traceback is shown under ``--debug``)."""


class DivergedError(UsageError):
    """A training whose loss or gradients stopped being finite. The message names the step and the loss terms."""

"""User-facing errors. Every error a user can cause by bad input is a ``VolumeError``:
the CLI prints its message (which names the field or file and the fix) without a
traceback, and the service turns it into a 4xx answer."""


class VolumeError(ValueError):
    """Bad input: the message says what is wrong and how to fix it."""


class DataError(VolumeError):
    """A data file is missing, unreadable or of the wrong format."""


class TableError(VolumeError):
    """A table file is corrupt, or tables that cannot be combined were combined."""


class Interrupted(VolumeError):
    """A run stopped by Ctrl-C or SIGTERM; the message says what was saved (exit status 130)."""

    exit_status = 130


class FunctionError(VolumeError):
    """A function (labels, '0'/'1' string or hex key) does not fit the input set."""

"""The error a user can cause: the one exception type that every layer of ramvid may raise."""


class UsageError(ValueError):
    """A user mistake: a bad flag value, a missing or unusable file or folder. The message names
    the flag, file or value and what to do; a command prints it as one line, exit code 2."""

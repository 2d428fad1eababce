"""The errors a user can cause: the one exception type every layer may raise."""


class UsageError(ValueError):
    """A user mistake: a bad flag value, a missing or unusable file or folder. The message names
    the flag, file or value and what to do; commands print it as one line, exit code 2."""

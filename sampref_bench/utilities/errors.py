"""The one exception type for mistakes a user can fix.

Command-line entry points catch :class:`SamprefError` and print its message without a traceback;
every other exception is a bug and keeps its traceback.
"""


class SamprefError(Exception):
    """A user-facing error: the message names the file or argument at fault and what to do."""

"""The one exception type for problems the user can fix (bad data, bad config, missing file)."""


class FramecastError(Exception):
    """A user-facing error: ``main.py`` prints its message as one line and exits non-zero.

    The message must name the file or setting at fault and say what is wrong with it.
    Bugs are not wrapped in this type, so they keep their tracebacks.
    """

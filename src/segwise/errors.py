"""The one exception type for mistakes in the user's input, and the one warning type.

Library code raises `SegwiseError` with a message that names the file, the problem and the fix.
The CLI prints it as a single line and exits with code 2; set SEGWISE_DEBUG=1 to see the traceback.
Internal invariants use `assert`, never this class.
"""


class SegwiseError(Exception):
    """A user mistake (missing file, bad mask, bad config): one clear line, exit code 2."""


class PixelLimitError(SegwiseError):
    """An image whose header claims more pixels than `io.max_pixels` allows (a possible decompression
    bomb); a SegwiseError, told apart where the answer differs (the server's 413 rather than 415)."""


class SegwiseWarning(UserWarning):
    """Input that works but is likely not what was meant (masks with no foreground, a run file that
    cannot be read and is left out): the CLI prints it as one line, `segwise: warning: ...`."""

"""The one exception type for errors a user can cause and fix.

Every message names the cause and the fix in one line, e.g.
``"corpus/train/de.txt is not UTF-8 (byte 0xff at offset 12): re-encode it as UTF-8"``.
CLIs print it on one line and exit with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class StepError(Exception):
    """A user-caused error (bad input, missing file, wrong setting) with a one-line message."""

    exit_code = 2

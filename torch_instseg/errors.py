"""The one exception type of torch_instseg."""
from __future__ import annotations


class InstsegError(Exception):
    """Bad input or settings for the instance study (names the file and the problem).

    Console scripts catch it, print one line and exit with status 2.
    """

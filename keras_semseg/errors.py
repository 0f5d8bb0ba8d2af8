"""The one exception type of keras_semseg."""
from __future__ import annotations


class SemsegError(Exception):
    """Bad input or settings for the semantic study (names the file and the problem).

    Console scripts catch it, print one line and exit with status 2.
    """

"""The exception type of keras_semseg."""
from __future__ import annotations

from data.errors import MscsegError


class SemsegError(MscsegError):
    """Bad input or settings for the semantic study (names the file and the problem)."""

"""The exception type of torch_instseg."""
from __future__ import annotations

from data.errors import MscsegError


class InstsegError(MscsegError):
    """Bad input or settings for the instance study (names the file and the problem)."""

"""The exception type of the mscseg glue."""
from __future__ import annotations

from data.errors import MscsegError


class RunError(MscsegError):
    """A configuration problem or a failed step (names the step, file and problem)."""

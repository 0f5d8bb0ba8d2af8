"""The one exception type of the mscseg glue."""
from __future__ import annotations


class RunError(Exception):
    """A configuration problem or a failed step (names the step, file and problem)."""

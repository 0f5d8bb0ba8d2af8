"""The exception type of stats."""
from __future__ import annotations

from data.errors import MscsegError


class StatsError(MscsegError):
    """Bad input for the statistics (names the file and the problem).

    ``path`` may be left out by code that works on DataFrames; the console script then
    fills in the CSV it read.
    """

"""The one exception type of stats."""
from __future__ import annotations

from pathlib import Path


class StatsError(Exception):
    """Bad input for the statistics (names the file and the problem).

    The console script catches it, prints one line and exits with status 2.
    ``path`` may be left out by code that works on DataFrames; the console script then
    fills in the CSV it read.
    """

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)

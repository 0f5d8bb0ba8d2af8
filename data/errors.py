"""The one exception type of the data layer."""
from __future__ import annotations

from pathlib import Path


class DatasetError(Exception):
    """Bad input: names the file (when there is one) and the problem.

    Console scripts catch it, print one line and exit with status 2.
    """

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)

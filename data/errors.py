"""The exception base shared by every package of mscseg, and the data layer's own."""
from __future__ import annotations

from pathlib import Path


class MscsegError(Exception):
    """Bad input or settings: names the file (when there is one) and the problem.

    Every package's error derives from it (``DatasetError``, ``SemsegError``,
    ``InstsegError``, ``StatsError``, ``RunError``); ``data.cli.run_cli`` catches it,
    prints one line and exits with status 2.
    """

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class DatasetError(MscsegError):
    """Bad input data: an unreadable image, a mask that does not fit, a bad annotation file."""

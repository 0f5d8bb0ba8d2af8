"""The one sample type every reader returns."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Sample:
    """One annotated micrograph.

    image:  H x W x 3 float32 in [0, 1] (see ``data.imageio.to_float_rgb`` for the scaling rule).
    labels: H x W int32 instance labels, 0 = background, 1..N = cells.
    name:   the file stem; the image's identity everywhere (CSV ``image`` column, ``<stem>.npy``).
    source: path of the file the image was read from ("" for generated samples).
    """

    image: np.ndarray
    labels: np.ndarray
    name: str
    source: str = ""

    @property
    def mask(self) -> np.ndarray:
        """H x W bool semantic mask (cell = True)."""
        return self.labels > 0

    @property
    def n_cells(self) -> int:
        ids = np.unique(self.labels)
        return int((ids > 0).sum())

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.labels.shape[0]), int(self.labels.shape[1])

"""What a dataset holds: one row per image (size, bit depth, cells) and a short text summary."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from .dataset import Dataset, load_entry
from .errors import DatasetError
from .imageio import image_info
from .units import PixelSize, pixel_size_columns, pixel_size_for

COLUMNS = ["image", "height", "width", "bit_depth", "dtype", "channels", "n_cells", "cell_fraction"]
MICROMETRE_COLUMNS = ["pixel_size_y_um", "pixel_size_x_um", "pixel_size_source", "mean_cell_area_um2"]


def summarize(dataset: Dataset, pixel_size: PixelSize | None = None) -> pd.DataFrame:
    """One row per image: image (stem), height, width (pixels), bit_depth, dtype and channels
    of the stored file, n_cells (instance labels), cell_fraction (cell pixels / all pixels).
    When any image has a pixel size (``pixel_size`` given, else its ImageJ / OME-TIFF
    metadata; ``data.units``): pixel_size_y_um, pixel_size_x_um, pixel_size_source and
    mean_cell_area_um2 too (empty for images without one).

    Every sample is loaded and checked (image/mask sizes, mask values) on the way.
    """
    rows, sizes = [], []
    for entry in dataset.entries:
        if entry.source and Path(entry.source).is_file():
            info = image_info(entry.source)
            labels = entry.load_labels()
            if labels.shape != (info["height"], info["width"]):
                raise DatasetError(
                    f"image is {info['width']}x{info['height']} (WxH) but its mask is {labels.shape[1]}x{labels.shape[0]}",
                    entry.mask_source or entry.source,
                )
        else:
            sample = load_entry(entry)
            labels = sample.labels
            info = {"height": labels.shape[0], "width": labels.shape[1], "bit_depth": sample.image.dtype.itemsize * 8,
                    "dtype": str(sample.image.dtype), "channels": sample.image.shape[-1]}
        ids = np.unique(labels)
        sizes.append(pixel_size_for(entry.source, pixel_size) if entry.source else pixel_size)
        n_cells = int((ids > 0).sum())
        area = sizes[-1].area_um2 * float((labels > 0).sum()) / n_cells if sizes[-1] and n_cells else float("nan")
        rows.append({**pixel_size_columns(sizes[-1]), "mean_cell_area_um2": area,
            "image": entry.name,
            "height": info["height"],
            "width": info["width"],
            "bit_depth": info["bit_depth"],
            "dtype": info["dtype"],
            "channels": info["channels"],
            "n_cells": n_cells,
            "cell_fraction": float((labels > 0).mean()),
        })
    return pd.DataFrame(rows, columns=COLUMNS + (MICROMETRE_COLUMNS if any(sizes) else []))


def _counted(values: list[str]) -> str:
    return ", ".join(f"{value} ({count})" for value, count in Counter(values).most_common())


def _pixel_sizes(frame: pd.DataFrame) -> str:
    """The pixel sizes of a summary table, counted ('none (sizes in pixels)' without any)."""
    if "pixel_size_source" not in frame:
        return "none (sizes in pixels)"
    described = [PixelSize(y, x, source).describe() if source else "none (sizes in pixels)"
                 for y, x, source in zip(frame["pixel_size_y_um"], frame["pixel_size_x_um"],
                                         frame["pixel_size_source"].fillna(""))]
    return _counted(described)


def summary_text(frame: pd.DataFrame) -> str:
    """A few lines: number of images, sizes, bit depths, cells per image (mean, min, max)."""
    if frame.empty:
        return "images: 0"
    sizes = [f"{w}x{h}" for w, h in zip(frame["width"], frame["height"])]
    depths = [
        f"{bits}-bit {dtype}, {'grayscale' if channels == 1 else f'{channels} channels'}"
        for bits, dtype, channels in zip(frame["bit_depth"], frame["dtype"], frame["channels"])
    ]
    cells = frame["n_cells"]
    fraction = frame["cell_fraction"]
    lines = [
        f"images: {len(frame)}",
        f"sizes (W x H): {_counted(sizes)}",
        f"bit depth: {_counted(depths)}",
        f"cells per image: mean {cells.mean():.2f}, min {cells.min()}, max {cells.max()} (total {cells.sum()})",
        f"cell pixel fraction: mean {fraction.mean():.3f}, min {fraction.min():.3f}, max {fraction.max():.3f}",
    ]
    lines.append(f"pixel size: {_pixel_sizes(frame)}")
    empty = int((cells == 0).sum())
    if empty:
        lines.append(f"images without cells: {empty}")
    return "\n".join(lines)

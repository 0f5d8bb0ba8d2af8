"""Physical pixel size: read from microscope TIFF metadata or given, and cell measurements in µm.

Rule (``mscseg-predict`` and ``python -m data summary`` alike): a pixel size given on the
command line (``--pixel-size UM`` or ``--pixel-size UMY UMX``) is used for every image; else
it is read from the image file when the file says it:

- ImageJ TIFF: ``unit=`` in the ImageJ description (micron, um, µm or ImageJ's escaped
  ``\\u00B5m``, nm, mm, cm, m, inch)
  and the XResolution / YResolution tags (pixels per unit);
- OME-TIFF: ``PhysicalSizeX`` / ``PhysicalSizeY`` of the first image's ``Pixels`` (unit
  ``PhysicalSizeXUnit``, µm when absent).

A plain TIFF's dots per inch, PNG and JPEG say nothing about the specimen and are ignored.
Without a pixel size, measurements stay in pixels.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import DatasetError

MICROMETRES_PER_UNIT = {
    "micron": 1.0, "microns": 1.0, "um": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0, "\\u00b5m": 1.0, "micrometer": 1.0,
    "micrometre": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "m": 1e6, "meter": 1e6,
    "inch": 25400.0, "in": 25400.0, "\u00c5": 1e-4, "angstrom": 1e-4,
}
SOURCE_GIVEN = "--pixel-size"
SOURCE_IMAGEJ = "ImageJ TIFF metadata"
SOURCE_OME = "OME-TIFF metadata"
NO_PIXEL_SIZE = "no pixel size (not in the image metadata, no --pixel-size): measurements in pixels"
MICROMETRE_COLUMNS = ["area_um2", "perimeter_um", "major_axis_um", "minor_axis_um", "pixel_size_y_um", "pixel_size_x_um",
                      "pixel_size_source"]


@dataclass(frozen=True)
class PixelSize:
    """Height and width of one pixel in µm, and where they came from."""

    y_um: float
    x_um: float
    source: str

    @property
    def area_um2(self) -> float:
        return self.y_um * self.x_um

    @property
    def length_um(self) -> float:
        """µm per pixel along a line: exact for square pixels, the geometric mean otherwise."""
        return math.sqrt(self.y_um * self.x_um)

    @property
    def isotropic(self) -> bool:
        return math.isclose(self.y_um, self.x_um, rel_tol=1e-6)

    def describe(self) -> str:
        size = f"{self.x_um:.6g}" if self.isotropic else f"{self.y_um:.6g} (y) x {self.x_um:.6g} (x)"
        return f"{size} \u00b5m/pixel ({self.source})"

    def as_dict(self) -> dict:
        return {"y_um": self.y_um, "x_um": self.x_um, "source": self.source}


def given_pixel_size(values: Sequence[float] | None) -> PixelSize | None:
    """``--pixel-size``: one value (square pixels) or two (height then width, µm); None when not given."""
    if not values:
        return None
    if len(values) > 2 or not all(math.isfinite(v) and v > 0 for v in values):
        raise DatasetError(f"--pixel-size takes one or two positive numbers in \u00b5m (height then width), "
                           f"got {' '.join(str(v) for v in values)}")
    y_um, x_um = (float(values[0]), float(values[-1]))
    return PixelSize(y_um, x_um, SOURCE_GIVEN)


def _micrometres_per(unit: str | None) -> float | None:
    if not unit:
        return None
    return MICROMETRES_PER_UNIT.get(str(unit).strip().lower()) or MICROMETRES_PER_UNIT.get(str(unit).strip())


def _per_pixel(tag) -> float | None:
    """Unit length per pixel from an X/YResolution tag (pixels per unit, a rational)."""
    if tag is None:
        return None
    value = tag.value
    numerator, denominator = (value if isinstance(value, tuple) else (value, 1))
    if not numerator or not denominator:
        return None
    return float(denominator) / float(numerator)


def _imagej_pixel_size(tif) -> PixelSize | None:
    factor = _micrometres_per((tif.imagej_metadata or {}).get("unit"))
    page = tif.pages[0]
    x, y = _per_pixel(page.tags.get("XResolution")), _per_pixel(page.tags.get("YResolution"))
    if factor is None or x is None:
        return None
    return PixelSize((y if y is not None else x) * factor, x * factor, SOURCE_IMAGEJ)


def _ome_pixel_size(tif) -> PixelSize | None:
    try:
        root = ElementTree.fromstring(tif.ome_metadata)
    except ElementTree.ParseError:
        return None
    pixels = next((element for element in root.iter() if element.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None
    sizes = []
    for axis in ("X", "Y"):
        value = pixels.attrib.get(f"PhysicalSize{axis}", pixels.attrib["PhysicalSizeX"])
        factor = _micrometres_per(pixels.attrib.get(f"PhysicalSize{axis}Unit", "\u00b5m"))
        try:
            size = float(value) * factor if factor is not None else float("nan")
        except ValueError:
            return None
        if not (math.isfinite(size) and size > 0):
            return None
        sizes.append(size)
    return PixelSize(sizes[1], sizes[0], SOURCE_OME)


def read_pixel_size(path: str | Path) -> PixelSize | None:
    """The pixel size an ImageJ TIFF or OME-TIFF records (module docstring); None for other files or without one."""
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_ome and tif.ome_metadata:
                found = _ome_pixel_size(tif)
                if found is not None:
                    return found
            if tif.is_imagej:
                return _imagej_pixel_size(tif)
    except Exception:  # noqa: BLE001 - unreadable metadata means no pixel size; reading the pixels reports the file
        return None
    return None


def pixel_size_for(path: str | Path | None, given: PixelSize | None = None) -> PixelSize | None:
    """``given`` (``--pixel-size``) when there is one, else what the file records, else None."""
    if given is not None:
        return given
    return read_pixel_size(path) if path else None


def with_micrometres(cells: pd.DataFrame, labels: np.ndarray, pixel_size: PixelSize | None) -> pd.DataFrame:
    """``cells`` (one row per ``cell`` label: area_px, perimeter_px, major/minor_axis_px) with the µm columns added.

    area_um2 = area_px x pixel height x width; perimeter_um = perimeter_px x µm per pixel
    (``PixelSize.length_um``); axis lengths from the second moments in µm coordinates, so
    they are exact for non-square pixels too. Without a pixel size, ``cells`` is returned as it is.
    """
    if pixel_size is None:
        return cells
    out = cells.copy()
    out["area_um2"] = cells["area_px"] * pixel_size.area_um2
    out["perimeter_um"] = cells["perimeter_px"] * pixel_size.length_um
    if pixel_size.isotropic:
        out["major_axis_um"] = cells["major_axis_px"] * pixel_size.x_um
        out["minor_axis_um"] = cells["minor_axis_px"] * pixel_size.x_um
    else:
        from skimage.measure import regionprops

        regions = {int(r.label): r for r in regionprops(labels, spacing=(pixel_size.y_um, pixel_size.x_um))}
        out["major_axis_um"] = [float(regions[int(c)].axis_major_length) for c in cells["cell"]]
        out["minor_axis_um"] = [float(regions[int(c)].axis_minor_length) for c in cells["cell"]]
    out["pixel_size_y_um"] = pixel_size.y_um
    out["pixel_size_x_um"] = pixel_size.x_um
    out["pixel_size_source"] = pixel_size.source
    return out


def pixel_size_columns(pixel_size: PixelSize | None) -> dict:
    """pixel_size_y_um, pixel_size_x_um, pixel_size_source of one image (NaN and '' without a pixel size)."""
    if pixel_size is None:
        return {"pixel_size_y_um": float("nan"), "pixel_size_x_um": float("nan"), "pixel_size_source": ""}
    return {"pixel_size_y_um": pixel_size.y_um, "pixel_size_x_um": pixel_size.x_um, "pixel_size_source": pixel_size.source}


COUNT_MICROMETRE_COLUMNS = ["mean_area_um2", "median_area_um2", "pixel_size_y_um", "pixel_size_x_um", "pixel_size_source"]


def count_micrometres(cells: pd.DataFrame, pixel_size: PixelSize | None) -> dict:
    """One image's counts.csv µm columns: mean and median cell area in µm² and the pixel size (NaN / '' without one)."""
    known = pixel_size is not None and len(cells) > 0
    return {"mean_area_um2": float(cells["area_um2"].mean()) if known else float("nan"),
            "median_area_um2": float(cells["area_um2"].median()) if known else float("nan"),
            **pixel_size_columns(pixel_size)}


def pixel_size_record(sizes: dict[str, PixelSize | None]) -> dict:
    """What a run's JSON record says about units: the pixel size of each image (None: unknown) and a one-line summary."""
    known = sum(size is not None for size in sizes.values())
    if known == 0:
        units = NO_PIXEL_SIZE
    elif known == len(sizes):
        units = "\u00b5m columns for every image (pixel size per image in pixel_size)"
    else:
        units = f"\u00b5m columns for {known} of {len(sizes)} images; the others have no pixel size and stay in pixels"
    return {"pixel_size": {name: None if size is None else size.as_dict() for name, size in sizes.items()}, "units": units}

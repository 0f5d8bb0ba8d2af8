"""Cells as Fiji/ImageJ ROIs and QuPath GeoJSON, traced exactly along pixel edges.

Coordinates are image pixels with the origin at the top-left corner of the first pixel:
pixel (row r, column c) is the square [c, c + 1] x [r, r + 1] in (x, y). A cell's outline
follows the edges of its pixels, so its vertices are pixel corners. ImageJ fills a polygon
with the pixels whose centre (x + 0.5, y + 0.5) is inside it, so the filled ROI is exactly
the cell's pixels; QuPath and the GeoJSON polygon area (shoelace) agree with the pixel count.

- One 8-connected part without holes (the usual cell): an ImageJ polygon ROI.
- Several parts (a Mask R-CNN cell painted over by another) or holes: an ImageJ composite
  (shape) ROI of all rings, holes running the other way, and a GeoJSON MultiPolygon /
  Polygon with interior rings. Diagonal neighbours belong to one part (8-connectivity);
  its outline passes twice through the shared corner.

ROI zips (``rois/<image>.zip``) name each ROI by its label, zero-padded (``0007``), in label
order; the GeoJSON (``geojson/<image>.geojson``) is a FeatureCollection of QuPath detections
classified ``cell``, each with the cell's row of ``cells/<image>.csv`` as measurements.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data.units import PixelSize

# Edge directions, clockwise on screen (y down): east, south, west, north.
_DIRECTIONS = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])
_LEFT_OF = {0: 3, 1: 0, 2: 1, 3: 2}
CELL_COLOUR = [255, 200, 0]


@dataclass(frozen=True)
class OutputOptions:
    """What ``mscseg-predict`` writes beside the masks, labels, overlays and CSVs, and the pixel size to use."""

    rois: bool = False               # rois/<image>.zip, Fiji's ROI Manager
    geojson: bool = False            # geojson/<image>.geojson, QuPath detections
    pixel_size: PixelSize | None = None  # --pixel-size for every image; None: each image's own metadata

    def paths(self, out_dir: Path, name: str) -> list[Path]:
        """The files of one image these options add (for the overwrite check)."""
        return ([out_dir / "rois" / f"{name}.zip"] if self.rois else []) + \
               ([out_dir / "geojson" / f"{name}.geojson"] if self.geojson else [])

    def write(self, folder: Path, name: str, labels: np.ndarray, cells: pd.DataFrame) -> None:
        """The asked-for exports of one image (H x W int labels, its cells table) into ``folder``."""
        if not (self.rois or self.geojson):
            return
        outlines = cell_outlines(labels)
        if self.rois:
            write_roi_zip(folder / "rois" / f"{name}.zip", outlines)
        if self.geojson:
            write_geojson(folder / "geojson" / f"{name}.geojson", outlines, cells)


# ---------------------------------------------------------------- tracing

def _edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boundary edges of a 2-D bool mask: start corners (E x 2, x y), directions (E,), and each edge's pixel (E x 2, r c)."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1]
    outside = (~padded[:-2, 1:-1], ~padded[1:-1, 2:], ~padded[2:, 1:-1], ~padded[1:-1, :-2])  # top, right, bottom, left
    offsets = ((0, 0), (1, 0), (1, 1), (0, 1))  # start corner (dx, dy) of the top, right, bottom, left edge
    starts, directions, pixels = [], [], []
    for direction, (free, (dx, dy)) in enumerate(zip(outside, offsets)):
        rows, cols = np.nonzero(inner & free)
        starts.append(np.stack([cols + dx, rows + dy], axis=1))
        directions.append(np.full(rows.size, direction))
        pixels.append(np.stack([rows, cols], axis=1))
    return np.concatenate(starts), np.concatenate(directions), np.concatenate(pixels)


def boundary_rings(mask: np.ndarray) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Closed outlines of a 2-D bool mask along pixel edges: (ring, a pixel (r, c) inside next to it) per outline.

    A ring is K x 2 int (x, y) pixel corners without the closing repeat and without
    collinear points. Outer outlines run clockwise on screen (positive ``ring_area``),
    holes the other way. At a corner shared by two diagonal pixels the outline turns
    towards the other pixel, so diagonal neighbours share one outline (8-connectivity).
    """
    mask = np.asarray(mask, bool)
    starts, directions, pixels = _edges(mask)
    if not len(starts):
        return []
    width = mask.shape[1] + 2
    ends = starts + _DIRECTIONS[directions]
    start_keys = starts[:, 1] * width + starts[:, 0]
    outgoing: dict[int, list[int]] = {}
    for edge, key in enumerate(start_keys.tolist()):
        outgoing.setdefault(key, []).append(edge)
    end_keys = (ends[:, 1] * width + ends[:, 0]).tolist()
    direction_list = directions.tolist()
    used = np.zeros(len(starts), bool)
    rings = []
    for first in range(len(starts)):
        if used[first]:
            continue
        corners, edge = [], first
        while not used[edge]:
            used[edge] = True
            corners.append(edge)
            candidates = outgoing[end_keys[edge]]
            if len(candidates) == 1:
                edge = candidates[0]
            else:
                turn = _LEFT_OF[direction_list[edge]]
                edge = next(c for c in candidates if direction_list[c] == turn)
        loop = np.asarray(corners)
        turning = directions[loop] != np.roll(directions[loop], 1)
        rings.append((starts[loop[turning]], (int(pixels[first][0]), int(pixels[first][1]))))
    return rings


def ring_area(ring: np.ndarray) -> float:
    """Signed shoelace area of a closed K x 2 (x, y) ring (positive: clockwise on screen, y down)."""
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) / 2.0)


def mask_polygons(mask: np.ndarray) -> list[list[np.ndarray]]:
    """A 2-D bool mask as polygons, one per 8-connected part: [outer ring, hole rings...], largest part first."""
    from scipy import ndimage

    parts, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    polygons: dict[int, list[np.ndarray]] = {}
    holes: dict[int, list[np.ndarray]] = {}
    for ring, (row, col) in boundary_rings(mask):
        part = int(parts[row, col])
        if ring_area(ring) > 0:
            polygons[part] = [ring]
        else:
            holes.setdefault(part, []).append(ring)
    ordered = sorted(polygons, key=lambda part: -ring_area(polygons[part][0]))
    return [polygons[part] + holes.get(part, []) for part in ordered]


def cell_outlines(labels: np.ndarray) -> dict[int, list[list[np.ndarray]]]:
    """``mask_polygons`` of every cell of an H x W label image, in image coordinates, by label."""
    from scipy import ndimage

    labels = np.asarray(labels)
    outlines = {}
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        offset = np.array([box[1].start, box[0].start])
        outlines[index] = [[ring + offset for ring in polygon] for polygon in mask_polygons(labels[box] == index)]
    return outlines


# ---------------------------------------------------------------- ImageJ / Fiji

def roi_name(label: int, largest: int) -> str:
    return f"{label:0{max(4, len(str(largest)))}d}"


def cell_roi(polygons: list[list[np.ndarray]], name: str):
    """A ``roifile.ImagejRoi``: a polygon ROI for one part without holes, else a composite (shape) ROI of every ring."""
    from roifile import ROI_OPTIONS, ROI_TYPE, ImagejRoi

    rings = [ring for polygon in polygons for ring in polygon]
    corners = np.concatenate(rings)
    left, top = corners.min(axis=0)
    right, bottom = corners.max(axis=0)
    if len(rings) == 1:
        roi = ImagejRoi.frompoints(rings[0].astype(np.int32), name=name)
        roi.roitype = ROI_TYPE.POLYGON
        roi.options &= ~(ROI_OPTIONS.OVERLAY_BACKGROUNDS | ROI_OPTIONS.OVERLAY_LABELS)
    else:
        path = []
        for ring in rings:
            path += [0.0, *map(float, ring[0])]
            for x, y in ring[1:]:
                path += [1.0, float(x), float(y)]
            path.append(4.0)
        roi = ImagejRoi()
        roi.roitype, roi.name = ROI_TYPE.RECT, name
        roi.multi_coordinates = np.asarray(path, np.float32)
        roi.shape_roi_size = len(path)
    roi.left, roi.top, roi.right, roi.bottom = int(left), int(top), int(right), int(bottom)
    return roi


def write_roi_zip(path: Path, outlines: dict[int, list[list[np.ndarray]]]) -> int:
    """``rois/<image>.zip`` for Fiji's ROI Manager: one ROI per cell, named by its label; returns the number written."""
    from roifile import roiwrite

    path.parent.mkdir(parents=True, exist_ok=True)
    largest = max(outlines, default=0)
    rois = [cell_roi(polygons, roi_name(label, largest)) for label, polygons in sorted(outlines.items()) if polygons]
    if rois:
        roiwrite(path, rois, mode="w")
    else:
        import zipfile

        zipfile.ZipFile(path, "w").close()
    return len(rois)


# ---------------------------------------------------------------- QuPath

def _closed(ring: np.ndarray) -> list[list[int]]:
    points = ring.astype(int).tolist()
    return points + points[:1]


def _measurements(row: dict) -> dict:
    skip = {"image", "cell", "pixel_size_source"}
    return {key: float(value) for key, value in row.items()
            if key not in skip and isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(float(value))}


def cells_geojson(outlines: dict[int, list[list[np.ndarray]]], cells: pd.DataFrame) -> dict:
    """A GeoJSON FeatureCollection of QuPath detections (classification ``cell``), one per cell, with its measurements."""
    rows = {int(row["cell"]): row for row in cells.to_dict("records")} if len(cells) else {}
    features = []
    for label, polygons in sorted(outlines.items()):
        if not polygons:
            continue
        rings = [[_closed(ring) for ring in polygon] for polygon in polygons]
        geometry = ({"type": "Polygon", "coordinates": rings[0]} if len(rings) == 1
                    else {"type": "MultiPolygon", "coordinates": rings})
        features.append({
            "type": "Feature",
            "geometry": geometry,
            "properties": {"objectType": "detection", "name": str(label),
                           "classification": {"name": "cell", "color": CELL_COLOUR},
                           "isLocked": False, "measurements": _measurements(rows.get(label, {}))},
        })
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: Path, outlines: dict[int, list[list[np.ndarray]]], cells: pd.DataFrame) -> int:
    """``geojson/<image>.geojson`` for QuPath (File > Import objects, or drag and drop); returns the number of cells."""
    from data.outputs import atomic_write_text

    collection = cells_geojson(outlines, cells)
    atomic_write_text(path, json.dumps(collection) + "\n")
    return len(collection["features"])

"""VGG Image Annotator (VIA) JSON: v2 exports and projects, and v3 projects.

v2: ``{"<filename><size>": {"filename", "size", "regions": [{"shape_attributes": {...}}]}}``,
or the same inside ``"_via_img_metadata"`` of a v2 project file. Shapes: polygon
(``all_points_x``/``all_points_y``), rect (``x, y, width, height``), circle (``cx, cy, r``),
ellipse (``cx, cy, rx, ry`` and optional ``theta`` in radians).

v3: a project with ``"file"`` (``fid``, ``fname``, ``src``), ``"view"`` (``fid_list``) and
``"metadata"`` (``vid``, ``xy = [shape_id, coords...]``). Shape ids as in VIA 3's
``_VIA_RSHAPE``: POINT 1, RECTANGLE 2 (x, y, w, h), CIRCLE 3 (cx, cy, r), ELLIPSE 4
(cx, cy, rx, ry), LINE 5, POLYLINE 6, POLYGON 7 (x1, y1, ...), EXTREME_RECTANGLE 8 (four
points on the boundary; their bounding box), EXTREME_CIRCLE 9 (three points on the circle).

Points, lines and polylines are not areas and are skipped. Labels are made at the image's
size: region k of an image (in file order, areas only) gets label k, later regions lie on
top of earlier ones. A pixel belongs to a region when its centre lies inside (pixel (x, y)
covers [x, x+1) x [y, y+1)), the COCO convention, rasterised with pycocotools so that VIA and
COCO polygons give the same pixels. Circles and ellipses become polygons first.
Images are looked for in the ``images`` folder (when given) and beside the JSON file.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..dataset import Dataset, Entry
from ..errors import DatasetError
from ..imageio import image_info, read_image
from .jsonfile import detect_json, find_image, json_head, load_json, resolve_json

Polygon = list[tuple[float, float]]

V3_SHAPES = {1: "point", 2: "rect", 3: "circle", 4: "ellipse", 5: "line", 6: "polyline", 7: "polygon", 8: "extreme_rect", 9: "extreme_circle"}
NOT_AREAS = {"point", "line", "polyline"}
V3_IMAGE_TYPE = 2


def looks_like_via(path: Path) -> bool:
    """Cheap test on the first 64 KiB of a JSON file."""
    head = json_head(path)
    return "_via_img_metadata" in head or '"shape_attributes"' in head or ('"filename"' in head and '"regions"' in head) or (
        '"fid_list"' in head or ('"fname"' in head and '"fid"' in head)
    )


def detect(path: str | Path) -> bool:
    return detect_json(Path(path), looks_like_via)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header where the format allows."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        from PIL import Image

        try:
            with Image.open(path) as handle:
                width, height = handle.size
            return height, width
        except Exception as error:  # noqa: BLE001 - any decoder failure is bad input
            raise DatasetError(f"cannot read image ({type(error).__name__}: {error}); the file is unreadable or truncated", path) from None
    info = image_info(path)
    return info["height"], info["width"]


def polygons_to_labels(polygons: list[Polygon], height: int, width: int) -> np.ndarray:
    """H x W int32: polygon k (0-based) filled with k + 1, later polygons on top.

    Coordinates are continuous image coordinates (pixel (x, y) covers [x, x+1) x [y, y+1));
    a pixel is inside when its centre is, as in COCO (rasterised with pycocotools).
    """
    from pycocotools import mask as mask_utils

    labels = np.zeros((height, width), np.int32)
    for label, polygon in enumerate(polygons, start=1):
        xs, ys = [x for x, _ in polygon], [y for _, y in polygon]
        x0, y0 = max(0, math.floor(min(xs))), max(0, math.floor(min(ys)))
        x1, y1 = min(width, math.ceil(max(xs)) + 1), min(height, math.ceil(max(ys)) + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        flat = [value for x, y in polygon for value in (x - x0, y - y0)]
        inside = mask_utils.decode(mask_utils.frPyObjects([flat], y1 - y0, x1 - x0))[..., 0].astype(bool)
        labels[y0:y1, x0:x1][inside] = label
    return labels


def _ellipse(cx: float, cy: float, rx: float, ry: float, theta: float = 0.0) -> Polygon:
    steps = max(24, int(math.ceil(2 * math.pi * max(rx, ry))))
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    points = []
    for k in range(steps):
        phi = 2 * math.pi * k / steps
        x, y = rx * math.cos(phi), ry * math.sin(phi)
        points.append((cx + x * cos_t - y * sin_t, cy + x * sin_t + y * cos_t))
    return points


def _rect(x: float, y: float, w: float, h: float) -> Polygon:
    return [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]


def _circle_through(points: list[tuple[float, float]]) -> Polygon | None:
    (ax, ay), (bx, by), (cx, cy) = points[:3]
    d = 2 * (ax * (by - cy) + bx * (cy - ay) + cx * (ay - by))
    if abs(d) < 1e-9:
        return None
    ux = ((ax**2 + ay**2) * (by - cy) + (bx**2 + by**2) * (cy - ay) + (cx**2 + cy**2) * (ay - by)) / d
    uy = ((ax**2 + ay**2) * (cx - bx) + (bx**2 + by**2) * (ax - cx) + (cx**2 + cy**2) * (bx - ax)) / d
    radius = math.hypot(ax - ux, ay - uy)
    return _ellipse(ux, uy, radius, radius)


def shape_to_polygon(shape: str, values: dict[str, Any]) -> Polygon | None:
    """A region as a polygon in pixel coordinates; ``None`` for points, lines and zero-size shapes.

    ``values`` holds the VIA v2 attribute names (v3 coordinates are mapped onto them).
    Raises ``KeyError``/``TypeError``/``ValueError`` for missing, non-numeric or non-finite
    values, and for a polygon of fewer than 3 points (an unfinished region: VIA cannot
    draw one, so it is an error rather than a silently dropped cell).
    """
    for key, value in values.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(item, float) and not math.isfinite(item) for item in items):
            raise ValueError(f"'{key}' is not a finite number (NaN or infinity)")
    polygon = _shape_polygon(shape, values)
    if polygon is not None and not all(math.isfinite(x) and math.isfinite(y) for x, y in polygon):
        raise ValueError("a coordinate is not a finite number (NaN or infinity)")
    return polygon


def _shape_polygon(shape: str, values: dict[str, Any]) -> Polygon | None:
    if shape in NOT_AREAS:
        return None
    if shape == "polygon":
        xs, ys = values["all_points_x"], values["all_points_y"]
        if len(xs) != len(ys):
            raise ValueError(f"polygon has {len(xs)} x and {len(ys)} y coordinates")
        points = [(float(x), float(y)) for x, y in zip(xs, ys)]
        if len(points) < 3:
            raise ValueError(f"polygon has {len(points)} point(s); a region needs at least 3 (delete it or finish it in VIA)")
        return points
    if shape == "rect":
        return _rect(float(values["x"]), float(values["y"]), float(values["width"]), float(values["height"]))
    if shape == "circle":
        r = float(values["r"])
        return _ellipse(float(values["cx"]), float(values["cy"]), r, r) if r > 0 else None
    if shape == "ellipse":
        rx, ry = float(values["rx"]), float(values["ry"])
        theta = float(values.get("theta", 0.0) or 0.0)
        return _ellipse(float(values["cx"]), float(values["cy"]), rx, ry, theta) if rx > 0 and ry > 0 else None
    if shape == "extreme_rect":
        xs, ys = [float(x) for x in values["all_points_x"]], [float(y) for y in values["all_points_y"]]
        return _rect(min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)) if len(xs) >= 2 else None
    if shape == "extreme_circle":
        points = [(float(x), float(y)) for x, y in zip(values["all_points_x"], values["all_points_y"])]
        return _circle_through(points) if len(points) >= 3 else None
    raise ValueError(f"unknown region shape '{shape}'")


def _v3_values(shape: str, coords: list[float]) -> dict[str, Any]:
    if shape == "rect":
        return dict(zip(("x", "y", "width", "height"), coords))
    if shape == "circle":
        return dict(zip(("cx", "cy", "r"), coords))
    if shape == "ellipse":
        return dict(zip(("cx", "cy", "rx", "ry"), coords))
    return {"all_points_x": coords[0::2], "all_points_y": coords[1::2]}


def _v2_images(metadata: dict, json_path: Path) -> list[tuple[str, list[Polygon]]]:
    images = []
    for key, item in metadata.items():
        if not isinstance(item, dict) or "filename" not in item:
            raise DatasetError(f"entry '{key}' has no 'filename'; not a VIA v2 image record", json_path)
        file_name = str(item["filename"])
        regions = item.get("regions") or []
        if isinstance(regions, dict):
            regions = list(regions.values())
        polygons = []
        for index, region in enumerate(regions):
            attributes = region.get("shape_attributes", {}) if isinstance(region, dict) else {}
            shape = str(attributes.get("name", "")).lower()
            try:
                polygon = shape_to_polygon(shape, attributes)
            except (KeyError, TypeError, ValueError) as error:
                problem = f"missing value {error}" if isinstance(error, KeyError) else str(error)
                raise DatasetError(f"image '{file_name}', region {index}: bad '{shape}' shape ({problem})", json_path) from None
            if polygon is not None:
                polygons.append(polygon)
        images.append((file_name, polygons))
    return images


def _v3_images(project: dict, json_path: Path) -> list[tuple[str, list[Polygon], tuple[str, ...]]]:
    files = project.get("file")
    if not isinstance(files, dict):
        raise DatasetError("VIA v3 project has no 'file' table", json_path)
    views = project.get("view") or {str(fid): {"fid_list": [fid]} for fid in files}
    polygons: dict[str, list[Polygon]] = {str(fid): [] for fid in files}
    for mid, item in (project.get("metadata") or {}).items():
        xy = item.get("xy") or []
        if not xy:
            continue
        vid = str(item.get("vid"))
        if vid not in views:
            raise DatasetError(f"metadata '{mid}' refers to view '{vid}', which the project does not have", json_path)
        fid_list = [str(fid) for fid in views[vid].get("fid_list", [])]
        if len(fid_list) != 1 or fid_list[0] not in polygons:
            raise DatasetError(f"metadata '{mid}': view '{vid}' must show exactly one file of the project", json_path)
        shape = V3_SHAPES.get(int(xy[0])) if isinstance(xy[0], (int, float)) and float(xy[0]).is_integer() else None
        try:
            if shape is None:
                raise ValueError(f"unknown region shape id {xy[0]!r} (VIA 3 ids are 1..9)")
            polygon = shape_to_polygon(shape, _v3_values(shape, [float(value) for value in xy[1:]]))
        except (KeyError, TypeError, ValueError) as error:
            problem = f"missing value {error}" if isinstance(error, KeyError) else str(error)
            raise DatasetError(f"metadata '{mid}': bad region ({problem})", json_path) from None
        if polygon is not None:
            polygons[fid_list[0]].append(polygon)
    images = []
    for fid, item in files.items():
        if item.get("type", V3_IMAGE_TYPE) != V3_IMAGE_TYPE:
            continue
        src = str(item.get("src") or "")
        extra = () if src.startswith(("http://", "https://", "data:")) else (src, Path(src).name)
        images.append((str(item.get("fname") or src), polygons[str(fid)], extra))
    return images


def read(path: str | Path, images: str | Path | None = None) -> Dataset:
    """A VIA v2/v3 JSON file (or a folder holding exactly one) with its images.

    ``images``: folder of the images, when they are not beside the JSON file.
    Every image listed in the file is a sample; one without regions has no cells.
    """
    json_path = resolve_json(path, looks_like_via, "VIA")
    project = load_json(json_path, "VIA")
    if not isinstance(project, dict):
        raise DatasetError("not a VIA JSON file (expected an object at the top level)", json_path)
    if "_via_img_metadata" in project:
        records = [(name, polygons, ()) for name, polygons in _v2_images(project["_via_img_metadata"], json_path)]
    elif "file" in project and "metadata" in project:
        records = _v3_images(project, json_path)
    elif all(isinstance(item, dict) and "filename" in item for item in project.values()):
        records = [(name, polygons, ()) for name, polygons in _v2_images(project, json_path)]
    else:
        raise DatasetError("not a VIA JSON file (expected VIA v2 image records or a VIA v3 project)", json_path)
    entries = []
    for file_name, polygons, extra in records:
        image_path = find_image(file_name, json_path, images, extra)
        entries.append(
            Entry(
                name=Path(file_name).stem,
                source=str(image_path),
                load_image=lambda p=image_path: read_image(p),
                load_labels=lambda p=image_path, shapes=polygons: polygons_to_labels(shapes, *image_size(p)),
                mask_source=str(json_path),
            )
        )
    return Dataset(entries, str(json_path), "via")

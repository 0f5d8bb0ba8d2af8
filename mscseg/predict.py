"""Apply a trained model to new micrographs of any size: masks, counts, confluence, cell shapes.

``mscseg-predict --model RUN_DIR --images DIR_OR_FILES --out DIR`` with either

- a semantic run folder (``semseg-train`` / ``semantic/<model>/``: ``run.json`` and
  ``best.weights.h5``): a probability map per image, cut at a threshold (``--threshold``;
  else the model's Dice-optimal threshold from ``../sweep/table1.csv`` when that file is
  next to the run folder; else 0.5); cells are the 8-connected components of the mask;
- a Mask R-CNN run folder (``instseg-train`` / ``instance/maskrcnn/``: ``run.json`` and
  ``best.pt``): instances with score >= ``--threshold`` (default 0.5), painted into a
  label image in increasing score order (the higher score keeps a shared pixel).

Scale and tiles (semantic runs): by default new images meet the model as the training
images did. ``semseg-train`` records in run.json how it resized (``geometry``: its images'
native size, resized whole to ``image_size``); predict shows each new image to the model
at that magnification, so an image of the training size is resized whole, exactly as in
training, and a larger one is cut into tiles of the training images' size, each resized to
the model input. An image whose size differs from the training images' gets a one-line
note. ``--scale S`` overrides (model pixels per image pixel, e.g. ``--scale 0.256`` for a
model trained on 1000 px micrographs resized to 256); a run without a recorded geometry
uses scale 1. ``--tile`` and ``--overlap`` are in model pixels (default: the model input,
and a quarter of it). An image smaller than a tile is padded (mirrored) and cropped back.
Overlapping tiles are cross-faded with weights that are 0 at inner tile edges (where the
network sees padding) and rise linearly over the overlap; every pixel, the last row and
column included, is covered. Every measurement is in the original image's pixels.

Minimum cell area: by default half the 1st percentile of the training cells' areas
(recorded by ``semseg-train`` and ``instseg-train``), rescaled to the new images' pixels;
``--min-area`` overrides; the value and its source are in predict.json and counts.csv.

Mask R-CNN runs: ``instseg-train`` records the magnification its images met the network
at (the optional resize to ``image_size``, then torchvision's internal resize to
``min_size``/``max_size``); predict resizes each new image by that factor per axis and
runs it in tiles of 512 pixels at the tiles' own size (no internal resizing), so cells
meet the network at their training size. ``--scale`` overrides; a run without a recorded
geometry uses scale 1. Instances are merged by ownership: each pixel belongs to the tile whose
centre is nearest, and an instance is kept from the tile that owns its centroid, so a
cell cut by one tile's edge is taken from the tile that sees it whole (when the overlap
is wider than the cell).

``--recursive`` searches subfolders and skips annotation folders and files (CTC
``*_GT``/``*_ST``, ``man_seg*``/``man_track*``, ``masks``, ``labels``, ...), saying how
many it skipped. ``--coco FILE.json`` also writes the cells as COCO results (RLE; score =
Mask R-CNN score, or a semantic cell's mean probability), with image ids taken from
``--coco-gt GT.json`` (matched by ``file_name``), so ``python -m torch_instseg.evaluate``
can score a dataset end to end (``python -m data convert SRC --to coco`` writes GT.json).

Outputs (in ``--out``)::

    masks/<name>.png     binary cell mask, 0/255
    labels/<name>.png    16-bit instance labels (0 = background); labels/<name>.tif (32-bit) above 65535 cells
    overlays/<name>.png  the micrograph with each cell's outline
    cells/<name>.csv     one row per cell: area_px, perimeter_px, major/minor axis, elongation, centroid (score)
    counts.csv           one row per image: cell_count, confluence (cell area fraction), mean cell area,
                         min_area_px, tiles, seconds
    predict.json         model, threshold, scale, minimum area and where each came from, tiling, notes, versions,
                         each image's pixel size (or that there is none: measurements in pixels)
    rois/<name>.zip      with --rois: one ImageJ ROI per cell for Fiji's ROI Manager (mscseg.exports)
    geojson/<name>.geojson  with --geojson: the cells as QuPath detections with their measurements

Physical units (``data.units``): with ``--pixel-size UM`` (or ``UMY UMX``), or a pixel size in
an ImageJ TIFF's or OME-TIFF's metadata, cells/ gains area_um2, perimeter_um, major/minor_axis_um
and the pixel size and its source, and counts.csv mean/median_area_um2 and the pixel size.

More than one process or machine (``mscseg.distributed_predict``): ``--workers N`` predicts on a local
Dask cluster of N processes, ``--scheduler ADDRESS`` on a running one (``scripts/predict_on_slurm.py``
for SLURM); ``--resume`` keeps the images an earlier run finished (done markers in ``.mscseg-predict/``)
and predicts the rest. The outputs are byte for byte those of a serial run (counts.csv's ``seconds`` aside).

Image names are file stems; when two inputs share a stem (e.g. ``set1/raw.tif`` and
``set2/raw.tif``), the parent folder's name is put in front (``set1_raw``).
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from data.cli import make_parser, run_cli
from data.lock import lock_output_folder
from data.units import PixelSize, given_pixel_size

from .errors import RunError
from .exports import OutputOptions
from .layout import Layout, run_json

if TYPE_CHECKING:
    from .distributed_predict import Execution

CELL_COLUMNS = ["image", "cell", "area_px", "perimeter_px", "major_axis_px", "minor_axis_px", "elongation",
                "centroid_x", "centroid_y", "score"]
COUNT_COLUMNS = ["image", "width", "height", "cell_count", "confluence", "mean_area_px", "median_area_px",
                 "kind", "model", "threshold", "min_area_px", "tiles", "seconds"]


# ---------------------------------------------------------------- inputs

ANNOTATION_FOLDERS = ("*_GT", "*_ST", "masks", "mask", "labels", "annotations", "ground_truth", "groundtruth", "gt")
ANNOTATION_FILES = ("man_seg*", "man_track*", "mask*", "*_mask", "*_masks", "instances_ids")


def is_annotation(path: Path, root: Path) -> bool:
    """True for a file inside an annotation folder under ``root`` (CTC ``01_GT``/``01_ST``, ``masks``, ...) or named like one
    (CTC ``man_seg*``/``man_track*``, ``mask*``, ``*_mask``, ``instances_ids``); case-insensitive."""
    folders = [part.lower() for part in path.relative_to(root).parts[:-1]]
    stem = path.stem.lower()
    return (any(fnmatch.fnmatch(folder, pattern.lower()) for folder in folders for pattern in ANNOTATION_FOLDERS)
            or any(fnmatch.fnmatch(stem, pattern) for pattern in ANNOTATION_FILES))


def skipped_note(skipped: Sequence[Path]) -> str:
    folders = sorted({str(path.parent) for path in skipped})
    shown = ", ".join(folders[:3]) + (f" and {len(folders) - 3} more" if len(folders) > 3 else "")
    return f"note: skipped {len(skipped)} annotation file(s) (masks, labels, CTC *_GT/*_ST, man_seg/man_track) in {shown}"


def find_images(inputs: Sequence[str | Path], recursive: bool = False, skipped: list[Path] | None = None) -> dict[str, Path]:
    """``{name: path}`` of the image files given (files, or folders of images); names are unique.

    With ``recursive``, files in annotation folders or named like masks (``is_annotation``)
    are left out and appended to ``skipped``; files given by name are always taken.
    """
    from data.imageio import IMAGE_SUFFIXES

    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(p for p in item.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if recursive:
                annotations = [p for p in found if is_annotation(p, item)]
                found = [p for p in found if p not in set(annotations)]
                if skipped is not None:
                    skipped += annotations
            if not found:
                hint = "" if recursive else " (add --recursive to search its subfolders)"
                raise RunError(f"{item}: no image files ({', '.join(IMAGE_SUFFIXES)}){hint}")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise RunError(f"{item}: no such file or folder")
    stems: dict[str, list[Path]] = {}
    for path in paths:
        stems.setdefault(path.stem, []).append(path)
    named: dict[str, Path] = {}
    for stem, group in stems.items():
        for path in group:
            name = stem if len(group) == 1 else f"{path.parent.name}_{stem}"
            if name in named:
                raise RunError(f"{path}: two inputs would both be named '{name}' ({named[name]}); rename one")
            named[name] = path
    return dict(sorted(named.items()))


@dataclass
class LoadedModel:
    """A trained model and what prediction needs to know about it."""

    kind: str              # "semantic" or "instance"
    name: str              # model name from run.json
    model: Any
    input_size: int | None  # the model's square input size (None: native size, torchvision resizes)
    run_dir: Path
    geometry: dict | None = None  # how training resized its images (data.geometry.training_geometry), when recorded


def run_kind(run_dir: Path) -> str:
    """"semantic" (Keras run: *.weights.h5) or "instance" (torch Mask R-CNN run: *.pt)."""
    if not run_json(run_dir).is_file():
        raise RunError(f"{run_dir}: not a training run folder (run.json missing); give semantic/<model>/ or instance/maskrcnn/")
    if (run_dir / "best.pt").is_file() or (run_dir / "last.pt").is_file():
        return "instance"
    if (run_dir / "best.weights.h5").is_file() or (run_dir / "last.weights.h5").is_file():
        return "semantic"
    raise RunError(f"{run_dir}: no weights (best.weights.h5 or best.pt); the training run may not have finished")


def load_model(run_dir: str | Path, which: str = "best", device: str | None = None) -> LoadedModel:
    """The model of a run folder with the training geometry its run record holds (``RunRecord.geometry``)."""
    from data.errors import MscsegError
    from data.run_record import read_record

    run_dir = Path(run_dir)
    kind = run_kind(run_dir)
    try:
        geometry = read_record(run_dir).geometry
    except MscsegError as error:
        raise RunError(error.problem, error.path) from None
    if kind == "semantic":
        from keras_semseg.predict import load_run

        model, settings = load_run(run_dir, which)
        return LoadedModel(kind, str(settings.get("model", run_dir.name)), model, int(settings["image_size"]), run_dir, geometry)
    from torch_instseg.maskrcnn import load_model as load_maskrcnn

    model = load_maskrcnn(run_dir, which=which, device=device)
    size = getattr(model, "mscseg_image_size", None)
    return LoadedModel(kind, "maskrcnn", model, int(size) if size else None, run_dir, geometry)


def default_threshold(loaded: LoadedModel) -> tuple[float, str]:
    """(threshold, where it came from): the sweep's Dice-optimal threshold next to a semantic run, else 0.5."""
    if loaded.kind == "semantic":
        table1 = Layout.of_semantic_run(loaded.run_dir).sweep_table("table1")
        if table1.is_file():
            frame = pd.read_csv(table1, dtype={"model": str})
            rows = frame[frame["model"] == loaded.name]
            if rows.empty:
                rows = frame[frame["model"] == loaded.run_dir.name]
            if len(rows):
                return float(rows["threshold"].iloc[0]), f"Dice-optimal threshold from {table1}"
        return 0.5, "default 0.5 (no sweep table1.csv next to the run)"
    return 0.5, "default score threshold 0.5"


# ---------------------------------------------------------------- tiling

def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start positions of tiles of ``tile`` pixels covering ``length`` with at least ``overlap`` pixels shared."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step)) + [length - tile]
    return sorted(set(starts))


def owner_index(length: int, starts: Sequence[int], tile: int) -> np.ndarray:
    """For each position 0..length-1, the index of the tile whose centre is nearest (ties to the first)."""
    centres = np.asarray(starts, np.float64) + min(tile, length) / 2.0
    positions = np.arange(length)[:, None] + 0.5
    return np.argmin(np.abs(positions - centres[None, :]), axis=1)


def axis_weights(length: int, starts: Sequence[int], tile: int, ramp: int) -> list[np.ndarray]:
    """Per tile along one axis, ``tile`` blend weights that are 0 at the tile's inner edges (edges inside the image).

    A weight rises linearly from 0 at an inner edge to 1 at ``ramp`` pixels from it;
    edges on the image border keep weight 1, so the first and last row and column
    count fully. Where every tile covering a position is at an inner edge (tiles that
    meet without overlap), those tiles share it equally: every position has weight.
    """
    position = np.arange(tile, dtype=np.float64)
    weights = []
    for start in starts:
        distance = np.full(tile, np.inf)
        if start > 0:
            distance = np.minimum(distance, position)
        if start + tile < length:
            distance = np.minimum(distance, tile - 1 - position)
        weights.append(np.clip(distance / max(1, ramp), 0.0, 1.0))
    total = np.zeros(max(length, tile))
    for start, weight in zip(starts, weights):
        total[start:start + tile] += weight
    for start, weight in zip(starts, weights):
        weight[total[start:start + tile] == 0] = 1.0
    return weights


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (int(value), int(value)) if np.isscalar(value) else (int(value[0]), int(value[1]))


def _padded(image: np.ndarray, tile_h: int, tile_w: int | None = None) -> np.ndarray:
    tile_w = tile_h if tile_w is None else tile_w
    height, width = image.shape[:2]
    pad = ((0, max(0, tile_h - height)), (0, max(0, tile_w - width))) + ((0, 0),) * (image.ndim - 2)
    return np.pad(image, pad, mode="symmetric") if any(p[1] for p in pad[:2]) else image


def semantic_probabilities(loaded: LoadedModel, image: np.ndarray, tile: int | tuple[int, int], overlap: int | tuple[int, int],
                           batch_size: int = 32) -> np.ndarray:
    """H x W float32 probabilities of an H x W x 3 image from tiles of ``tile`` (h, w) pixels overlapping by ``overlap``.

    Each tile is resized to the model's input (as training resized whole images) and
    its map back; tiles are cross-faded with ``axis_weights`` (weight 0 at inner tile
    edges, where the model sees padding), so the seams vanish. An image smaller than a
    tile is padded (mirrored) and cropped back.
    """
    from keras_semseg.predict import predict_probs

    (tile_h, tile_w), (overlap_h, overlap_w) = _pair(tile), _pair(overlap)
    height, width = image.shape[:2]
    ys, xs = tile_starts(height, tile_h, overlap_h), tile_starts(width, tile_w, overlap_w)
    padded = _padded(image, tile_h, tile_w)
    pieces = [padded[y0:y0 + tile_h, x0:x0 + tile_w] for y0 in ys for x0 in xs]
    probabilities = iter(predict_probs(loaded.model, pieces, loaded.input_size, batch_size=batch_size))
    weights_y, weights_x = axis_weights(height, ys, tile_h, overlap_h), axis_weights(width, xs, tile_w, overlap_w)
    total = np.zeros((max(height, tile_h), max(width, tile_w)), np.float64)
    weight_sum = np.zeros_like(total)
    for y0, weight_y in zip(ys, weights_y):
        for x0, weight_x in zip(xs, weights_x):
            weights = np.outer(weight_y, weight_x)
            total[y0:y0 + tile_h, x0:x0 + tile_w] += next(probabilities) * weights
            weight_sum[y0:y0 + tile_h, x0:x0 + tile_w] += weights
    return (total / weight_sum)[:height, :width].astype(np.float32)


INSTANCE_TILE = 512


def _native_size(model, height: int, width: int) -> None:
    """Make torchvision's internal resize a no-op for an H x W input (run the network at the tile's own pixels)."""
    model.mscseg_image_size = None
    model.transform.min_size = (min(height, width),)
    model.transform.max_size = max(height, width)


def instance_labels(
    loaded: LoadedModel, image: np.ndarray, tile: int, overlap: int, threshold: float, device: str | None = None
) -> tuple[np.ndarray, dict[int, float]]:
    """H x W int32 labels of Mask R-CNN instances merged across tiles, and each label's score."""
    from torch_instseg.maskrcnn import predict_instances

    height, width = image.shape[:2]
    tile_h, tile_w = min(tile, height), min(tile, width)
    ys, xs = tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap)
    owner_y, owner_x = owner_index(height, ys, tile_h), owner_index(width, xs, tile_w)
    kept: list[tuple[float, int, int, np.ndarray]] = []
    for y0 in ys:
        for x0 in xs:
            piece = image[y0:y0 + tile_h, x0:x0 + tile_w]
            if loaded.model is not None and hasattr(loaded.model, "transform"):
                _native_size(loaded.model, tile_h, tile_w)
            result = predict_instances(loaded.model, [piece], score_threshold=threshold, device=device, image_size=None)[0]
            for mask, score in zip(result["masks"], result["scores"]):
                if not mask.any():
                    continue
                rows, cols = np.nonzero(mask)
                cy, cx = int(rows.mean()) + y0, int(cols.mean()) + x0
                if ys[owner_y[cy]] == y0 and xs[owner_x[cx]] == x0:
                    kept.append((float(score), y0, x0, mask))
    labels = np.zeros((height, width), np.int32)
    scores: dict[int, float] = {}
    for label, (score, y0, x0, mask) in enumerate(sorted(kept, key=lambda k: k[0]), start=1):
        region = labels[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]]
        region[mask] = label
        scores[label] = score
    return relabel(labels, scores)


def resize_image(image: np.ndarray, scale: float | tuple[float, float]) -> np.ndarray:
    """H x W x 3 image resized by ``scale`` (one factor, or (y, x)); bilinear, antialiased when shrinking."""
    from skimage.transform import resize

    scale_y, scale_x = (scale, scale) if np.isscalar(scale) else scale
    height, width = image.shape[:2]
    shape = (max(1, int(round(height * scale_y))), max(1, int(round(width * scale_x))))
    return resize(image, shape + image.shape[2:], order=1, anti_aliasing=min(scale_y, scale_x) < 1,
                  preserve_range=True).astype(np.float32)


def resize_back(array: np.ndarray, shape: tuple[int, int], labels: bool) -> np.ndarray:
    """A probability map (bilinear) or label image (nearest) resized to ``shape``."""
    from skimage.transform import resize

    if array.shape[:2] == tuple(shape):
        return array
    if labels:
        return resize(array, shape, order=0, anti_aliasing=False, preserve_range=True).astype(array.dtype)
    return resize(array, shape, order=1, anti_aliasing=False, preserve_range=True).astype(np.float32)


def relabel(labels: np.ndarray, scores: dict[int, float] | None = None) -> tuple[np.ndarray, dict[int, float]]:
    """Labels renumbered 1..N in order of appearance value (empty labels dropped), scores carried along."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lookup = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int32)
    lookup[ids] = np.arange(1, len(ids) + 1)
    new_scores = {int(lookup[i]): scores[int(i)] for i in ids} if scores else {}
    return lookup[labels], new_scores


# ---------------------------------------------------------------- measurements and outputs

def measure_cells(labels: np.ndarray, name: str, scores: dict[int, float] | None = None,
                  pixel_size: PixelSize | None = None) -> pd.DataFrame:
    """One row per label: area (px), perimeter (px), major/minor axis (px, from second moments), elongation, centroid;
    with a pixel size also area (µm²), perimeter and axes (µm) and the pixel size (``data.units.with_micrometres``)."""
    from skimage.measure import regionprops

    from data.units import with_micrometres

    rows = []
    for region in regionprops(labels):
        major, minor = float(region.axis_major_length), float(region.axis_minor_length)
        rows.append({
            "image": name,
            "cell": int(region.label),
            "area_px": int(region.area),
            "perimeter_px": float(region.perimeter),
            "major_axis_px": major,
            "minor_axis_px": minor,
            "elongation": major / minor if minor > 0 else float("nan"),
            "centroid_x": float(region.centroid[1]),
            "centroid_y": float(region.centroid[0]),
            "score": (scores or {}).get(int(region.label), float("nan")),
        })
    return with_micrometres(pd.DataFrame(rows, columns=CELL_COLUMNS), labels, pixel_size)


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8: the micrograph with a light fill and a coloured outline per cell."""
    from skimage.segmentation import find_boundaries

    base = (np.clip(image, 0, 1) * 255).astype(np.float32)
    rng = np.random.default_rng(0)
    palette = np.vstack([[0, 0, 0], rng.integers(60, 256, size=(max(int(labels.max()), 1), 3))]).astype(np.float32)
    colours = palette[labels]
    inside = labels > 0
    base[inside] = 0.75 * base[inside] + 0.25 * colours[inside]
    edges = find_boundaries(labels, mode="inner")
    base[edges] = colours[edges]
    return base.astype(np.uint8)


def components(mask: np.ndarray, min_area: int = 0) -> np.ndarray:
    """8-connected components of a binary mask as int32 labels, components under ``min_area`` px dropped."""
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if min_area > 0 and count:
        areas = np.bincount(labels.ravel())
        small = np.flatnonzero(areas < min_area)
        labels[np.isin(labels, small[small > 0])] = 0
        labels, _ = relabel(labels)
    return labels.astype(np.int32)


@dataclass
class Scaling:
    """How new images meet the model: the scale per axis (model pixels per image pixel) and where it came from."""

    scale_y: float
    scale_x: float
    source: str

    @property
    def isotropic(self) -> float:
        return float(np.sqrt(self.scale_y * self.scale_x))


def choose_scaling(loaded: LoadedModel, scale: float | None) -> Scaling:
    """``--scale`` when given; else the run's training geometry (the magnification its images met the network at); else 1."""
    if scale is not None:
        if not 0.01 <= scale <= 100:
            raise RunError(f"--scale must be between 0.01 and 100, got {scale}")
        return Scaling(float(scale), float(scale), "--scale")
    geometry = loaded.geometry
    if not geometry:
        return Scaling(1.0, 1.0, "default 1 (the run recorded no training geometry)")
    native = f"training geometry: {geometry['native_width']}x{geometry['native_height']} px images"
    size = geometry.get("image_size")
    if loaded.kind == "semantic":
        return Scaling(float(geometry["scale_y"]), float(geometry["scale_x"]), f"{native} resized whole to {size}x{size}")
    resized = f" resized to {size}x{size}," if size else ""
    return Scaling(float(geometry["scale_y"]), float(geometry["scale_x"]),
                   f"{native}{resized} then by torchvision's internal factor {geometry.get('internal_resize', 1):.4g} "
                   f"(min_size {geometry.get('min_size')}, max_size {geometry.get('max_size')})")


def size_note(name: str, height: int, width: int, geometry: dict | None, tiles: int) -> str:
    """One line when an image's size differs from the training images' ('' when it is the same or unknown)."""
    if not geometry or (height, width) == (geometry["native_height"], geometry["native_width"]):
        return ""
    return (f"note: {name} is {width}x{height} px, the training images were {geometry['native_width']}x{geometry['native_height']}; "
            f"shown to the model at the training magnification in {tiles} tile(s)")


def coco_image_ids(named: dict[str, Path], gt_path: str | Path | None) -> dict[str, int]:
    """Image id per name: from a COCO ground truth's ``file_name`` (the name, the file stem or its folder's name), else 1..N."""
    if gt_path is None:
        return {name: position for position, name in enumerate(named, 1)}
    from torch_instseg.coco import image_id_by_name, load_coco

    by_name = image_id_by_name(load_coco(gt_path))
    ids = {}
    for name, path in named.items():
        found = [by_name[key] for key in (name, path.stem, path.parent.name) if key in by_name]
        if not found:
            raise RunError(f"{gt_path}: no image with file_name '{name}' (or '{path.stem}', '{path.parent.name}') for {path}")
        ids[name] = found[0]
    return ids


def plan_tiles(loaded: "LoadedModel", scaling: "Scaling", tile: int | None, overlap: int | None
               ) -> tuple[int, int, tuple[int, int], tuple[int, int]]:
    """(tile and overlap in model pixels, tile (h, w) and overlap (h, w) in image pixels); ``RunError`` for bad values."""
    if loaded.kind == "semantic":
        model_tile = int(tile) if tile else int(loaded.input_size)
        tile_px = (max(1, round(model_tile / scaling.scale_y)), max(1, round(model_tile / scaling.scale_x)))
    else:
        model_tile = int(tile) if tile else INSTANCE_TILE
        tile_px = (model_tile, model_tile)
    if model_tile < 32:
        raise RunError(f"--tile must be at least 32 pixels, got {model_tile}")
    overlap_model = int(overlap) if overlap is not None else model_tile // 4
    if not 0 <= overlap_model < model_tile:
        raise RunError(f"--overlap must be between 0 and the tile size ({model_tile}), got {overlap_model}")
    if loaded.kind == "semantic":
        overlap_px = (round(overlap_model / scaling.scale_y), round(overlap_model / scaling.scale_x))
    else:
        overlap_px = (overlap_model, overlap_model)
    return model_tile, overlap_model, tile_px, overlap_px


def label_image(loaded: "LoadedModel", image: np.ndarray, threshold: float, scaling: "Scaling", tile_px: tuple[int, int],
                overlap_px: tuple[int, int], min_area: int, device: str | None
                ) -> tuple[np.ndarray, dict[int, float], np.ndarray | None, int]:
    """(H x W int32 cell labels, score per label, H x W probability map or None, tiles run) of one H x W x 3 image."""
    height, width = image.shape[:2]
    if loaded.kind == "semantic":
        probability = semantic_probabilities(loaded, image, tile_px, overlap_px)
        labels = components(probability > np.float32(threshold), min_area)
        n_tiles = len(tile_starts(height, tile_px[0], overlap_px[0])) * len(tile_starts(width, tile_px[1], overlap_px[1]))
        return labels, {}, probability, n_tiles
    scaled = (scaling.scale_y, scaling.scale_x) != (1.0, 1.0)
    work = resize_image(image, (scaling.scale_y, scaling.scale_x)) if scaled else image
    labels, scores = instance_labels(loaded, work, tile_px[0], overlap_px[0], threshold, device)
    labels = resize_back(labels, (height, width), labels=True)
    labels, scores = relabel(labels, scores)
    if min_area > 0:
        small = np.flatnonzero(np.bincount(labels.ravel()) < min_area)
        labels[np.isin(labels, small[small > 0])] = 0
        labels, scores = relabel(labels, scores)
    n_tiles = len(tile_starts(work.shape[0], min(tile_px[0], work.shape[0]), overlap_px[0])) * \
        len(tile_starts(work.shape[1], min(tile_px[1], work.shape[1]), overlap_px[1]))
    return labels, scores, None, n_tiles


def write_image_outputs(folder: Path, name: str, image: np.ndarray, labels: np.ndarray, cells: pd.DataFrame,
                        outputs: OutputOptions | None = None) -> None:
    """masks/, labels/ (16-bit PNG, 32-bit TIFF above 65535 cells), overlays/, cells/ and the ``outputs`` asked for
    (rois/, geojson/) of one image into ``folder``."""
    from data.imageio import write_labels, write_png
    from data.outputs import write_csv

    write_png(folder / "masks" / f"{name}.png", ((labels > 0) * 255).astype(np.uint8))
    write_labels(folder / "labels" / f"{name}{'.png' if labels.max(initial=0) <= 65535 else '.tif'}", labels)
    write_png(folder / "overlays" / f"{name}.png", overlay(image, labels))
    write_csv(folder / "cells" / f"{name}.csv", cells)
    if outputs is not None:
        outputs.write(folder, name, labels, cells)


def predict_folder(
    run_dir: str | Path,
    images: Sequence[str | Path],
    out_dir: str | Path,
    *,
    threshold: float | None = None,
    scale: float | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    min_area: int | None = None,
    which: str = "best",
    device: str | None = None,
    recursive: bool = False,
    overwrite: bool = False,
    quiet: bool = True,
    coco: str | Path | None = None,
    coco_gt: str | Path | None = None,
    outputs: OutputOptions | None = None,
    execution: "Execution | None" = None,
) -> pd.DataFrame:
    """Predict every image, write the outputs listed in the module docstring; returns counts.csv's table.

    ``scale`` None: the run's training geometry (``RunRecord.geometry``), else 1.
    ``min_area`` None: half the training cells' 1st-percentile area rescaled to the new
    images (runs with a training geometry), else 0. ``coco``: also write the
    cells as COCO results (RLE masks; score = instance score, or mean probability for a
    semantic run) with image ids from ``coco_gt`` when given. ``outputs``: ROI zips, GeoJSON
    and the pixel size for every image (``exports.OutputOptions``; default: each image's metadata). ``execution``:
    Dask workers or scheduler and ``--resume`` (``distributed_predict.Execution``; default: this process, all at once).
    """
    from data.imageio import read_image
    from data.units import COUNT_MICROMETRE_COLUMNS, PixelSize, pixel_size_record
    from data.outputs import check_can_write, check_output_folder, staged_outputs, write_csv, write_json

    from .distributed_predict import Execution, describe_model, image_jobs, make_plan, run_images

    execution = execution or Execution()
    execution.check(overwrite)
    out_dir = check_output_folder(out_dir)
    skipped: list[Path] = []
    named = find_images(images, recursive, skipped)
    if skipped and not quiet:
        print(skipped_note(skipped))
    for path in named.values():
        read_image(path)
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise RunError(f"--threshold must be between 0 and 1, got {threshold}")
    if min_area is not None and min_area < 0:
        raise RunError(f"--min-area must be zero or positive, got {min_area}")
    planned = [out_dir / "counts.csv", out_dir / "predict.json"] + ([Path(coco)] if coco else [])
    outputs = outputs or OutputOptions()
    for name in named:
        planned += [out_dir / sub / f"{name}{ext}" for sub, ext in
                    (("masks", ".png"), ("labels", ".png"), ("labels", ".tif"), ("overlays", ".png"), ("cells", ".csv"))]
        planned += outputs.paths(out_dir, name)
    for path in planned if not execution.resume else ():
        check_can_write(path, overwrite)
    image_ids = coco_image_ids(named, coco_gt) if coco else {}
    loaded = describe_model(run_dir, which) if execution.distributed else load_model(run_dir, which, device)
    if threshold is None:
        threshold, threshold_source = default_threshold(loaded)
    else:
        threshold_source = "--threshold"
    scaling = choose_scaling(loaded, scale)
    model_tile, overlap_model, tile_px, overlap_px = plan_tiles(loaded, scaling, tile, overlap)
    if min_area is None:
        from data.geometry import default_min_area

        min_area, min_area_source = (default_min_area(loaded.geometry, scaling.scale_y, scaling.scale_x) if loaded.geometry
                                     else (0, "0 (the run recorded no training cell areas)"))
    else:
        min_area_source = "--min-area"

    plan = make_plan(run_dir, which, device, threshold, scaling, (tile_px, overlap_px), min_area, outputs, bool(coco), out_dir)
    with staged_outputs(out_dir) as stage:
        records, kept = run_images(plan, image_jobs(plan, named, image_ids), execution, loaded, quiet, stage)
        pixel_sizes = {r["name"]: None if r["pixel_size"] is None else PixelSize(**r["pixel_size"]) for r in records}
        notes = [r["note"] for r in records if r["note"]]
        detections = [detection for r in records for detection in r["detections"]]
        counts = [r["counts"] for r in records]
        table = pd.DataFrame(counts, columns=COUNT_COLUMNS + (COUNT_MICROMETRE_COLUMNS if any(pixel_sizes.values()) else []))
        write_csv(stage / "counts.csv", table)
        if coco:
            from torch_instseg.coco import write_results

            write_results(coco, detections, {"score_source": "maskrcnn_score" if loaded.kind == "instance" else "mean_probability",
                                             "model_dir": str(Path(run_dir).resolve()), "threshold": threshold})
        from data.run_record import library_versions

        write_json(stage / "predict.json", {
            "model_dir": str(Path(run_dir).resolve()), "kind": loaded.kind, "model": loaded.name, "weights": which,
            "threshold": threshold, "threshold_source": threshold_source,
            "threshold_meaning": "probability > threshold" if loaded.kind == "semantic" else "instance score >= threshold",
            "scale": scaling.isotropic if scaling.scale_y == scaling.scale_x else [scaling.scale_y, scaling.scale_x],
            "scale_source": scaling.source, "training_geometry": loaded.geometry,
            "tile": model_tile, "overlap": overlap_model, "tile_px": list(tile_px), "overlap_px": list(overlap_px),
            "model_input_size": loaded.input_size,
            "tile_handling": ("each tile (tile_px image pixels) resized to the model input, maps cross-faded with weight 0 at "
                              "inner tile edges" if loaded.kind == "semantic" else "run at the tile's own size"),
            "min_area_px": min_area, "min_area_source": min_area_source, "size_notes": notes,
            "skipped_annotation_files": len(skipped), "coco_results": None if coco is None else str(coco),
            "exports": {"rois": outputs.rois, "geojson": outputs.geojson}, **pixel_size_record(pixel_sizes),
            "images": {name: str(path) for name, path in named.items()}, "versions": library_versions(),
            "execution": execution.record(kept),
        })
    return table


def cell_detections(image_id: int, labels: np.ndarray, scores: dict[int, float], probability: np.ndarray | None) -> list[dict]:
    """COCO results (RLE) of one label image; score = the instance's score, or its mean probability (semantic)."""
    from torch_instseg.coco import labels_to_annotations

    detections = []
    ids = np.arange(1, int(labels.max()) + 1) if labels.size else np.zeros(0, int)
    if probability is not None and ids.size:
        sums = np.bincount(labels.ravel(), weights=probability.ravel().astype(np.float64), minlength=ids.size + 1)
        areas = np.bincount(labels.ravel(), minlength=ids.size + 1)
        mean_probability = {int(i): float(sums[i] / areas[i]) for i in ids if areas[i]}
    for label, annotation in zip(np.unique(labels[labels > 0]), labels_to_annotations(labels, image_id)):
        score = scores.get(int(label)) if probability is None else mean_probability[int(label)]
        detections.append({"image_id": image_id, "category_id": annotation["category_id"],
                           "segmentation": annotation["segmentation"], "score": float(score if score is not None else 1.0),
                           "bbox": annotation["bbox"], "area": annotation["area"]})
    return detections


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "mscseg-predict",
        description="Segment new micrographs with a trained semantic (Keras) or Mask R-CNN (torch) run: masks, "
        "instance labels, overlays, per-cell shape CSVs and a counts/confluence CSV.",
        epilog="Semantic runs use the Dice-optimal threshold of ../sweep/table1.csv when it exists (else 0.5); "
        "Mask R-CNN keeps instances with score >= 0.5 unless --threshold is given.",
    )
    parser.add_argument("--model", required=True, type=Path, help="training run folder (semantic/<model>/ or instance/maskrcnn/)")
    parser.add_argument("--images", required=True, nargs="+", help="image files and/or folders of images")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--threshold", type=float, help="probability (semantic) or score (instance) threshold")
    parser.add_argument("--scale", type=float, default=None,
                        help="resize images by this factor first (model pixels per image pixel); default: the magnification "
                        "the training images met the network at (recorded in run.json), else 1")
    parser.add_argument("--tile", type=int, help="tile size in pixels of the scaled image (default: the semantic model's "
                        f"input size; {INSTANCE_TILE} for Mask R-CNN)")
    parser.add_argument("--overlap", type=int, help="overlap between tiles in pixels (default: a quarter of the tile)")
    parser.add_argument("--min-area", type=int, default=None,
                        help="drop cells smaller than this many pixels (default: half the training cells' 1st-percentile area, "
                        "rescaled to the new images; 0 when the run recorded none)")
    parser.add_argument("--which", choices=("best", "last"), default="best", help="which weights of the run (default best)")
    parser.add_argument("--device", help="torch device for Mask R-CNN (cpu, cuda; default: CUDA when available)")
    parser.add_argument("--recursive", action="store_true", help="also look for images in subfolders of the given folders "
                        "(annotation folders such as CTC *_GT, masks, labels are skipped)")
    parser.add_argument("--coco", type=Path, help="also write the cells as COCO results (RLE) to this JSON file, "
                        "for python -m torch_instseg.evaluate")
    parser.add_argument("--coco-gt", type=Path, help="COCO ground truth whose image ids (by file_name) --coco uses "
                        "(default: ids 1..N in name order)")
    parser.add_argument("--rois", action="store_true", help="also write rois/<image>.zip: one ImageJ polygon ROI per cell, "
                        "named by its label, for Fiji's ROI Manager")
    parser.add_argument("--geojson", action="store_true", help="also write geojson/<image>.geojson: the cells as QuPath "
                        "detections (class 'cell') with their measurements")
    parser.add_argument("--pixel-size", nargs="+", type=float, metavar="UM",
                        help="pixel size in µm for every image: one value, or two (height then width); default: read "
                        "from ImageJ / OME-TIFF metadata, else measurements stay in pixels")
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="predict on a local Dask cluster of N worker processes, one thread each (needs "
                        "pip install \"dask[distributed]\"); outputs are the same as without it")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="predict on the workers of a running Dask scheduler, e.g. "
                        "tcp://node01:8786 (a SLURM cluster: scripts/predict_on_slurm.py); they must see --images and --out "
                        "at the same paths")
    parser.add_argument("--resume", action="store_true", help="keep the images an earlier run into --out finished with "
                        "these settings and predict the others; each image is committed as it finishes, so a stopped "
                        "run continues with the same command")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser


def _main(argv: Sequence[str] | None = None) -> int:
    from .distributed_predict import Execution

    args = build_parser().parse_args(argv)
    outputs = OutputOptions(args.rois, args.geojson, given_pixel_size(args.pixel_size))
    execution = Execution(args.workers, args.scheduler, args.resume)
    execution.check(args.overwrite)
    lock_output_folder(args.out)
    table = predict_folder(args.model, args.images, args.out, threshold=args.threshold, scale=args.scale, tile=args.tile,
                           overlap=args.overlap, min_area=args.min_area, which=args.which, device=args.device,
                           recursive=args.recursive, overwrite=args.overwrite, quiet=False, coco=args.coco,
                           coco_gt=args.coco_gt, outputs=outputs, execution=execution)
    print(table[["image", "cell_count", "confluence"]].to_string(index=False))
    print(f"outputs in {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

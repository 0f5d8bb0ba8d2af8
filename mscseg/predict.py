"""Apply a trained model to new micrographs of any size: masks, counts, confluence, cell shapes.

``mscseg-predict --model RUN_DIR --images DIR_OR_FILES --out DIR`` with either

- a semantic run folder (``semseg-train`` / ``semantic/<model>/``: ``run.json`` and
  ``best.weights.h5``): a probability map per image, cut at a threshold (``--threshold``;
  else the model's Dice-optimal threshold from ``../sweep/table1.csv`` when that file is
  next to the run folder; else 0.5); cells are the 8-connected components of the mask;
- a Mask R-CNN run folder (``instseg-train`` / ``instance/maskrcnn/``: ``run.json`` and
  ``best.pt``): instances with score >= ``--threshold`` (default 0.5), painted into a
  label image in increasing score order (the higher score keeps a shared pixel).

Scale and tiles: ``--scale S`` resizes each image by S first (default 1: the image's own
pixels), so that cells have the pixel size the model was trained on; pass e.g.
``--scale 0.256`` for a model trained on 1000 px micrographs resized to 256. Results are
resized back, and every measurement is in the original image's pixels. The (scaled) image
is cut into ``--tile`` x ``--tile`` tiles overlapping by ``--overlap`` pixels (default a
quarter of the tile):

- semantic models (fixed input size): default tile = the model's input size; a tile of
  another size is resized to the input. An image smaller than a tile is padded (mirrored)
  and cropped back. Probabilities of overlapping tiles are cross-faded: weights fall off
  linearly over the overlap towards each tile's edges.
- Mask R-CNN (torchvision runs at any size): default tile 512, run at the tile's own size
  (no resizing). Instances are merged by ownership: each pixel belongs to the tile whose
  centre is nearest, and an instance is kept from the tile that owns its centroid, so a
  cell cut by one tile's edge is taken from the tile that sees it whole (when the overlap
  is wider than the cell).

Outputs (in ``--out``)::

    masks/<name>.png     binary cell mask, 0/255
    labels/<name>.png    16-bit instance labels (0 = background); labels/<name>.tif (32-bit) above 65535 cells
    overlays/<name>.png  the micrograph with each cell's outline
    cells/<name>.csv     one row per cell: area_px, perimeter_px, major/minor axis, elongation, centroid (score)
    counts.csv           one row per image: cell_count, confluence (cell area fraction), mean cell area
    predict.json         model, threshold and where it came from, tiling, versions

Image names are file stems; when two inputs share a stem (e.g. ``set1/raw.tif`` and
``set2/raw.tif``), the parent folder's name is put in front (``set1_raw``).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from data.cli import make_parser, run_cli

from .errors import RunError
from .layout import Layout, run_json

CELL_COLUMNS = ["image", "cell", "area_px", "perimeter_px", "major_axis_px", "minor_axis_px", "elongation",
                "centroid_x", "centroid_y", "score"]
COUNT_COLUMNS = ["image", "width", "height", "cell_count", "confluence", "mean_area_px", "median_area_px",
                 "kind", "model", "threshold"]


# ---------------------------------------------------------------- inputs

def find_images(inputs: Sequence[str | Path], recursive: bool = False) -> dict[str, Path]:
    """``{name: path}`` of the image files given (files, or folders of images); names are unique."""
    from data.imageio import IMAGE_SUFFIXES

    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(p for p in item.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
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
    run_dir = Path(run_dir)
    kind = run_kind(run_dir)
    if kind == "semantic":
        from keras_semseg.predict import load_run

        model, settings = load_run(run_dir, which)
        return LoadedModel(kind, str(settings.get("model", run_dir.name)), model, int(settings["image_size"]), run_dir)
    from torch_instseg.maskrcnn import load_model as load_maskrcnn

    model = load_maskrcnn(run_dir, which=which, device=device)
    size = getattr(model, "mscseg_image_size", None)
    return LoadedModel(kind, "maskrcnn", model, int(size) if size else None, run_dir)


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


def blend_weights(height: int, width: int, overlap: int) -> np.ndarray:
    """H x W weights: 1 in the tile's middle, falling linearly over ``overlap`` pixels to a small positive value at the edges
    (two overlapping tiles cross-fade, so neither tile's border pixels, where padding affects the model, dominate)."""
    ramp = max(1, overlap)

    def axis(n: int) -> np.ndarray:
        distance = np.minimum(np.arange(n), np.arange(n)[::-1]) + 1
        return np.clip(distance / (ramp + 1), 0.0, 1.0)

    return np.outer(axis(height), axis(width)).astype(np.float32)


def _padded(image: np.ndarray, tile: int) -> np.ndarray:
    height, width = image.shape[:2]
    pad = ((0, max(0, tile - height)), (0, max(0, tile - width))) + ((0, 0),) * (image.ndim - 2)
    return np.pad(image, pad, mode="symmetric") if any(p[1] for p in pad[:2]) else image


def _tiles(image: np.ndarray, tile: int, overlap: int) -> list[tuple[int, int, np.ndarray]]:
    """(y0, x0, tile image) for each tile; tiles past a small image's edge are mirrored padding."""
    height, width = image.shape[:2]
    padded = _padded(image, tile)
    return [(y0, x0, padded[y0:y0 + tile, x0:x0 + tile]) for y0 in tile_starts(height, tile, overlap)
            for x0 in tile_starts(width, tile, overlap)]


def semantic_probabilities(loaded: LoadedModel, image: np.ndarray, tile: int, overlap: int, batch_size: int = 32) -> np.ndarray:
    """H x W float32 probabilities of an H x W x 3 image, tiled and blended."""
    from keras_semseg.predict import predict_probs

    height, width = image.shape[:2]
    pieces = _tiles(image, tile, overlap)
    probabilities = predict_probs(loaded.model, [p[2] for p in pieces], loaded.input_size, batch_size=batch_size)
    total = np.zeros((max(height, tile), max(width, tile)), np.float32)
    weight_sum = np.zeros_like(total)
    weights = blend_weights(tile, tile, overlap) if len(pieces) > 1 else np.ones((tile, tile), np.float32)
    for (y0, x0, _), probability in zip(pieces, probabilities):
        total[y0:y0 + tile, x0:x0 + tile] += probability * weights
        weight_sum[y0:y0 + tile, x0:x0 + tile] += weights
    return (total / np.maximum(weight_sum, 1e-12))[:height, :width]


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


def resize_image(image: np.ndarray, scale: float) -> np.ndarray:
    """H x W x 3 image resized by ``scale`` (bilinear, antialiased when shrinking)."""
    from skimage.transform import resize

    height, width = image.shape[:2]
    shape = (max(1, int(round(height * scale))), max(1, int(round(width * scale))))
    return resize(image, shape + image.shape[2:], order=1, anti_aliasing=scale < 1, preserve_range=True).astype(np.float32)


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

def measure_cells(labels: np.ndarray, name: str, scores: dict[int, float] | None = None) -> pd.DataFrame:
    """One row per label: area (px), perimeter (px), major/minor axis (px, from second moments), elongation, centroid."""
    from skimage.measure import regionprops

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
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


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


def predict_folder(
    run_dir: str | Path,
    images: Sequence[str | Path],
    out_dir: str | Path,
    *,
    threshold: float | None = None,
    scale: float = 1.0,
    tile: int | None = None,
    overlap: int | None = None,
    min_area: int = 0,
    which: str = "best",
    device: str | None = None,
    recursive: bool = False,
    overwrite: bool = False,
    quiet: bool = True,
) -> pd.DataFrame:
    """Predict every image, write the outputs listed in the module docstring; returns counts.csv's table.

    Every image is read once before the model is loaded, and the outputs are written into
    a staging folder and moved into ``out_dir`` together, so a bad input or a failure
    leaves ``out_dir`` as it was.
    """
    from data.imageio import read_image
    from data.outputs import check_can_write, check_output_folder, staged_outputs, write_json

    out_dir = check_output_folder(out_dir)
    named = find_images(images, recursive)
    for path in named.values():
        read_image(path)
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise RunError(f"--threshold must be between 0 and 1, got {threshold}")
    if min_area < 0:
        raise RunError(f"--min-area must be zero or positive, got {min_area}")
    planned = [out_dir / "counts.csv", out_dir / "predict.json"]
    for name in named:
        planned += [out_dir / sub / f"{name}{ext}" for sub, ext in
                    (("masks", ".png"), ("labels", ".png"), ("labels", ".tif"), ("overlays", ".png"), ("cells", ".csv"))]
    for path in planned:
        check_can_write(path, overwrite)
    loaded = load_model(run_dir, which, device)
    if threshold is None:
        threshold, threshold_source = default_threshold(loaded)
    else:
        threshold_source = "--threshold"
    if not 0.01 <= scale <= 100:
        raise RunError(f"--scale must be between 0.01 and 100, got {scale}")
    default_tile = loaded.input_size if loaded.kind == "semantic" else INSTANCE_TILE
    tile_size = int(tile) if tile else int(default_tile)
    if tile_size < 32:
        raise RunError(f"--tile must be at least 32 pixels, got {tile_size}")
    overlap_px = int(overlap) if overlap is not None else tile_size // 4
    if not 0 <= overlap_px < tile_size:
        raise RunError(f"--overlap must be between 0 and the tile size ({tile_size}), got {overlap_px}")

    with staged_outputs(out_dir) as stage:
        table = _predict_into(stage, loaded, named, threshold, scale, tile_size, overlap_px, min_area, device, quiet)
        from data.run_record import library_versions

        write_json(stage / "predict.json", {
            "model_dir": str(Path(run_dir).resolve()), "kind": loaded.kind, "model": loaded.name, "weights": which,
            "threshold": threshold, "threshold_source": threshold_source,
            "threshold_meaning": "probability > threshold" if loaded.kind == "semantic" else "instance score >= threshold",
            "scale": scale, "tile": tile_size, "overlap": overlap_px, "model_input_size": loaded.input_size,
            "tile_handling": "resized to the model input" if loaded.kind == "semantic" else "run at the tile's own size",
            "min_area_px": min_area,
            "images": {name: str(path) for name, path in named.items()}, "versions": library_versions(),
        })
    return table


def _predict_into(out_dir: Path, loaded: LoadedModel, named: dict[str, Path], threshold: float, scale: float,
                  tile_size: int, overlap_px: int, min_area: int, device: str | None, quiet: bool) -> pd.DataFrame:
    """Write masks/, labels/, overlays/, cells/ and counts.csv of every image into ``out_dir``; returns counts."""
    from data.imageio import read_image, write_labels, write_png
    from data.outputs import write_csv

    counts = []
    for position, (name, path) in enumerate(named.items(), 1):
        image = read_image(path)
        height, width = image.shape[:2]
        work = resize_image(image, scale) if scale != 1 else image
        if loaded.kind == "semantic":
            probability = resize_back(semantic_probabilities(loaded, work, tile_size, overlap_px), (height, width), labels=False)
            labels = components(probability > np.float32(threshold), min_area)
            mask = labels > 0
            scores: dict[int, float] = {}
        else:
            labels, scores = instance_labels(loaded, work, tile_size, overlap_px, threshold, device)
            labels = resize_back(labels, (height, width), labels=True)
            labels, scores = relabel(labels, scores)
            if min_area > 0:
                small = np.flatnonzero(np.bincount(labels.ravel()) < min_area)
                labels[np.isin(labels, small[small > 0])] = 0
                labels, scores = relabel(labels, scores)
            mask = labels > 0
        cells = measure_cells(labels, name, scores)
        write_png(out_dir / "masks" / f"{name}.png", (mask * 255).astype(np.uint8))
        write_labels(out_dir / "labels" / f"{name}{'.png' if labels.max(initial=0) <= 65535 else '.tif'}", labels)
        write_png(out_dir / "overlays" / f"{name}.png", overlay(image, labels))
        write_csv(out_dir / "cells" / f"{name}.csv", cells)
        counts.append({
            "image": name, "width": width, "height": height, "cell_count": len(cells),
            "confluence": float(mask.mean()),
            "mean_area_px": float(cells["area_px"].mean()) if len(cells) else float("nan"),
            "median_area_px": float(cells["area_px"].median()) if len(cells) else float("nan"),
            "kind": loaded.kind, "model": loaded.name, "threshold": threshold,
        })
        if not quiet:
            print(f"[{position}/{len(named)}] {name}: {len(cells)} cells, confluence {mask.mean():.3f}")
    table = pd.DataFrame(counts, columns=COUNT_COLUMNS)
    write_csv(out_dir / "counts.csv", table)
    return table


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
    parser.add_argument("--scale", type=float, default=1.0,
                        help="resize images by this factor first, to the pixel size the model was trained at (default 1)")
    parser.add_argument("--tile", type=int, help="tile size in pixels of the scaled image (default: the semantic model's "
                        f"input size; {INSTANCE_TILE} for Mask R-CNN)")
    parser.add_argument("--overlap", type=int, help="overlap between tiles in pixels (default: a quarter of the tile)")
    parser.add_argument("--min-area", type=int, default=0, help="drop cells smaller than this many pixels (default 0)")
    parser.add_argument("--which", choices=("best", "last"), default="best", help="which weights of the run (default best)")
    parser.add_argument("--device", help="torch device for Mask R-CNN (cpu, cuda; default: CUDA when available)")
    parser.add_argument("--recursive", action="store_true", help="also look for images in subfolders of the given folders")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    table = predict_folder(args.model, args.images, args.out, threshold=args.threshold, scale=args.scale, tile=args.tile,
                           overlap=args.overlap, min_area=args.min_area, which=args.which, device=args.device,
                           recursive=args.recursive, overwrite=args.overwrite, quiet=False)
    print(table[["image", "cell_count", "confluence"]].to_string(index=False))
    print(f"outputs in {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

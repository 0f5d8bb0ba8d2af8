"""Apply a trained model to new micrographs of any size: masks, counts, confluence, cell shapes.

``mscseg-predict --model RUN_DIR --images DIR_OR_FILES --out DIR`` with either

- a semantic run folder (``semseg-train`` / ``semantic/<model>/``: ``run.json`` and
  ``best.weights.h5``): a probability map per image, cut at a threshold (``--threshold``;
  else the model's Dice-optimal threshold from ``../sweep/table1.csv`` when that file is
  next to the run folder; else 0.5); cells are the 8-connected components of the mask;
- a Mask R-CNN run folder (``instseg-train`` / ``instance/maskrcnn/``: ``run.json`` and
  ``best.pt``): instances with score >= ``--threshold`` (default 0.5), painted into a
  label image in increasing score order (the higher score keeps a shared pixel);
- a Cellpose or StarDist run folder (``mscseg-run``'s ``instance/cellpose/``, ``instance/stardist/``:
  run.json whose ``trainer`` is the peer): the peer's own model (``peers.<name>.load``) labels each
  whole image (``predict_labels``, the peer's own thresholds); ``--threshold`` (default 0: keep all)
  drops cells whose peer score is lower. The peer resizes each image itself as it did in training
  (StarDist's ``image_size``, Cellpose's diameter rule; the geometry its run.json records), so images
  go in at their own size; ``--scale S`` resizes them by S / the training scale first.

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
from .predict_inputs import (  # noqa: F401  (re-exported)
    ANNOTATION_FILES, ANNOTATION_FOLDERS, coco_image_ids, find_images, is_annotation, skipped_note,
)
from .predict_measure import (  # noqa: F401  (re-exported: mscseg.predict is the public module)
    CELL_COLUMNS, cell_detections, components, measure_cells, overlay, size_note, write_image_outputs,
)
from .predict_tiles import (  # noqa: F401
    INSTANCE_TILE, _native_size, _padded, _pair, axis_weights, instance_labels, owner_index, peer_labels, relabel, resize_back,
    resize_image, semantic_probabilities, tile_starts,
)

if TYPE_CHECKING:
    from .distributed_predict import Execution

COUNT_COLUMNS = ["image", "width", "height", "cell_count", "confluence", "mean_area_px", "median_area_px",
                 "kind", "model", "threshold", "min_area_px", "tiles", "seconds"]


@dataclass
class LoadedModel:
    """A trained model and what prediction needs to know about it."""

    kind: str              # "semantic", "instance" (Mask R-CNN) or "peer" (Cellpose, StarDist; name = the peer)
    name: str              # model name from run.json
    model: Any
    input_size: int | None  # the model's square input size (None: native size, torchvision resizes)
    run_dir: Path
    geometry: dict | None = None  # how training resized its images (data.geometry.training_geometry), when recorded


def run_trainer(run_dir: Path) -> str:
    """The ``trainer`` of a run folder's run.json (``data.run_record.read_record``)."""
    from data.errors import MscsegError
    from data.run_record import read_record

    try:
        return read_record(run_dir).trainer
    except MscsegError as error:
        raise RunError(error.problem, error.path) from None


def run_kind(run_dir: Path) -> str:
    """"semantic" (Keras run: *.weights.h5), "instance" (torch Mask R-CNN run: *.pt) or "peer" (run.json's trainer is
    a peer: cellpose, stardist)."""
    from peers import PEER_NAMES

    if not run_json(run_dir).is_file():
        raise RunError(f"{run_dir}: not a training run folder (run.json missing); give semantic/<model>/, instance/maskrcnn/ "
                       "or instance/<peer>/")
    if run_trainer(run_dir) in PEER_NAMES:
        return "peer"
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
    if kind == "peer":
        return load_peer(run_dir, which, device, geometry)
    from torch_instseg.maskrcnn import load_model as load_maskrcnn

    model = load_maskrcnn(run_dir, which=which, device=device)
    size = getattr(model, "mscseg_image_size", None)
    return LoadedModel(kind, "maskrcnn", model, int(size) if size else None, run_dir, geometry)


def load_peer(run_dir: Path, which: str = "best", device: str | None = None, geometry: dict | None = None) -> LoadedModel:
    """A Cellpose or StarDist run folder's model (``peers.peer_module(trainer).load``): its best weights and tuned
    thresholds; ``PeerUnavailable`` in one line when its package is missing here."""
    import peers

    trainer = run_trainer(run_dir)
    if which != "best":
        raise RunError(f"--which {which}: a {trainer} run gives its best weights only (with the thresholds tuned for them)",
                       run_dir)
    model = peers.peer_module(trainer).load(run_dir, device=device)
    return LoadedModel("peer", trainer, model, None, Path(run_dir), geometry)


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
    if loaded.kind == "peer":
        return 0.0, f"default 0: every cell {loaded.name} keeps by its own thresholds"
    return 0.5, "default score threshold 0.5"


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
    if loaded.kind == "peer":
        return Scaling(float(geometry["scale_y"]), float(geometry["scale_x"]),
                       f"{native}, resized by {loaded.name} itself as in training (images go in at their own size)")
    resized = f" resized to {size}x{size}," if size else ""
    return Scaling(float(geometry["scale_y"]), float(geometry["scale_x"]),
                   f"{native}{resized} then by torchvision's internal factor {geometry.get('internal_resize', 1):.4g} "
                   f"(min_size {geometry.get('min_size')}, max_size {geometry.get('max_size')})")


def plan_tiles(loaded: "LoadedModel", scaling: "Scaling", tile: int | None, overlap: int | None
               ) -> tuple[int, int, tuple[int, int], tuple[int, int]]:
    """(tile and overlap in model pixels, tile (h, w) and overlap (h, w) in image pixels); ``RunError`` for bad values.

    A peer predicts whole images (0 everywhere; ``--tile`` and ``--overlap`` are refused)."""
    if loaded.kind == "peer":
        if tile or overlap:
            raise RunError(f"--tile and --overlap do not apply to a {loaded.name} run: the peer predicts whole images")
        return 0, 0, (0, 0), (0, 0)
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
    factor = (scaling.scale_y, scaling.scale_x)
    if loaded.kind == "peer" and loaded.geometry:
        factor = (scaling.scale_y / float(loaded.geometry["scale_y"]), scaling.scale_x / float(loaded.geometry["scale_x"]))
    scaled = factor != (1.0, 1.0)
    work = resize_image(image, factor) if scaled else image
    if loaded.kind == "peer":
        labels, scores = peer_labels(loaded, work, threshold)
    else:
        labels, scores = instance_labels(loaded, work, tile_px[0], overlap_px[0], threshold, device)
    labels = resize_back(labels, (height, width), labels=True)
    labels, scores = relabel(labels, scores)
    if min_area > 0:
        small = np.flatnonzero(np.bincount(labels.ravel()) < min_area)
        labels[np.isin(labels, small[small > 0])] = 0
        labels, scores = relabel(labels, scores)
    if loaded.kind == "peer":
        return labels, scores, None, 1
    n_tiles = len(tile_starts(work.shape[0], min(tile_px[0], work.shape[0]), overlap_px[0])) * \
        len(tile_starts(work.shape[1], min(tile_px[1], work.shape[1]), overlap_px[1]))
    return labels, scores, None, n_tiles


@dataclass
class PredictOptions:
    """The settings of one ``predict_folder`` call: the ``mscseg-predict`` options (module docstring).

    ``scale`` None: the run's training geometry (``RunRecord.geometry``), else 1. ``min_area`` None:
    half the training cells' 1st-percentile area rescaled to the new images (runs with a training
    geometry), else 0. ``coco``: also write the cells as COCO results (RLE masks; score = instance score,
    or mean probability for a semantic run) with image ids from ``coco_gt`` when given. ``outputs``: ROI
    zips, GeoJSON and the pixel size for every image (``exports.OutputOptions``; default: each image's
    metadata). ``execution``: Dask workers or scheduler and ``--resume`` (``distributed_predict.Execution``;
    default: this process, all at once).
    """

    threshold: float | None = None
    scale: float | None = None
    tile: int | None = None
    overlap: int | None = None
    min_area: int | None = None
    which: str = "best"
    device: str | None = None
    recursive: bool = False
    overwrite: bool = False
    quiet: bool = True
    coco: str | Path | None = None
    coco_gt: str | Path | None = None
    outputs: OutputOptions | None = None
    execution: "Execution | None" = None


@dataclass
class ResolvedSettings:
    """What ``predict_folder`` settled for a model: threshold, scale, tiles and minimum area, each with its source."""

    threshold: float
    threshold_source: str
    scaling: Scaling
    model_tile: int
    overlap_model: int
    tile_px: tuple[int, int]
    overlap_px: tuple[int, int]
    min_area: int
    min_area_source: str


def _checked_inputs(images: Sequence[str | Path], out_dir: Path, options: PredictOptions, resume: bool
                    ) -> tuple[dict[str, Path], list[Path]]:
    """(``{name: path}`` of the images, annotation files skipped); ``RunError`` for unreadable images, bad values or
    outputs that exist (without ``overwrite``; not checked on ``resume``)."""
    from data.imageio import read_image
    from data.outputs import check_can_write

    skipped: list[Path] = []
    named = find_images(images, options.recursive, skipped)
    if skipped and not options.quiet:
        print(skipped_note(skipped))
    for path in named.values():
        read_image(path)
    if options.threshold is not None and not 0.0 <= options.threshold <= 1.0:
        raise RunError(f"--threshold must be between 0 and 1, got {options.threshold}")
    if options.min_area is not None and options.min_area < 0:
        raise RunError(f"--min-area must be zero or positive, got {options.min_area}")
    planned = [out_dir / "counts.csv", out_dir / "predict.json"] + ([Path(options.coco)] if options.coco else [])
    outputs = options.outputs or OutputOptions()
    for name in named:
        planned += [out_dir / sub / f"{name}{ext}" for sub, ext in
                    (("masks", ".png"), ("labels", ".png"), ("labels", ".tif"), ("overlays", ".png"), ("cells", ".csv"))]
        planned += outputs.paths(out_dir, name)
    for path in planned if not resume else ():
        check_can_write(path, options.overwrite)
    return named, skipped


def resolve_settings(loaded: LoadedModel, options: PredictOptions) -> ResolvedSettings:
    """The threshold, scaling, tiles and minimum area for ``loaded``: the options given, else the run's defaults."""
    if options.threshold is None:
        threshold, threshold_source = default_threshold(loaded)
    else:
        threshold, threshold_source = options.threshold, "--threshold"
    scaling = choose_scaling(loaded, options.scale)
    model_tile, overlap_model, tile_px, overlap_px = plan_tiles(loaded, scaling, options.tile, options.overlap)
    if options.min_area is None:
        from data.geometry import default_min_area

        min_area, min_area_source = (default_min_area(loaded.geometry, scaling.scale_y, scaling.scale_x) if loaded.geometry
                                     else (0, "0 (the run recorded no training cell areas)"))
    else:
        min_area, min_area_source = options.min_area, "--min-area"
    return ResolvedSettings(threshold, threshold_source, scaling, model_tile, overlap_model, tile_px, overlap_px,
                            min_area, min_area_source)


def predict_record(run_dir: str | Path, loaded: LoadedModel, options: PredictOptions, settings: ResolvedSettings,
                   notes: list[str], skipped: int) -> dict:
    """predict.json's model, settings and their sources (without the pixel sizes, images, versions and execution)."""
    scaling, outputs = settings.scaling, options.outputs or OutputOptions()
    return {
        "model_dir": str(Path(run_dir).resolve()), "kind": loaded.kind, "model": loaded.name, "weights": options.which,
        "threshold": settings.threshold, "threshold_source": settings.threshold_source,
        "threshold_meaning": {"semantic": "probability > threshold", "peer": f"{loaded.name} score >= threshold"}.get(
            loaded.kind, "instance score >= threshold"),
        "scale": scaling.isotropic if scaling.scale_y == scaling.scale_x else [scaling.scale_y, scaling.scale_x],
        "scale_source": scaling.source, "training_geometry": loaded.geometry,
        "tile": settings.model_tile, "overlap": settings.overlap_model, "tile_px": list(settings.tile_px),
        "overlap_px": list(settings.overlap_px), "model_input_size": loaded.input_size,
        "tile_handling": {"semantic": "each tile (tile_px image pixels) resized to the model input, maps cross-faded with "
                                      "weight 0 at inner tile edges",
                          "peer": f"whole images through {loaded.name}'s own prediction"}.get(loaded.kind,
                                                                                              "run at the tile's own size"),
        "min_area_px": settings.min_area, "min_area_source": settings.min_area_source, "size_notes": notes,
        "skipped_annotation_files": skipped, "coco_results": None if options.coco is None else str(options.coco),
        "exports": {"rois": outputs.rois, "geojson": outputs.geojson},
    }


def predict_folder(run_dir: str | Path, images: Sequence[str | Path], out_dir: str | Path,
                   options: PredictOptions | None = None, **fields: Any) -> pd.DataFrame:
    """Predict every image, write the outputs listed in the module docstring; returns counts.csv's table.

    ``options``: the settings (``PredictOptions``, its docstring); ``fields``: ``PredictOptions`` fields by
    name (``threshold=0.5, quiet=False``), replacing those of ``options``.
    """
    from dataclasses import replace

    from data.outputs import check_output_folder, staged_outputs, write_csv, write_json
    from data.run_record import library_versions
    from data.units import COUNT_MICROMETRE_COLUMNS, pixel_size_record

    from .distributed_predict import Execution, describe_model, image_jobs, make_plan, run_images

    options = replace(options or PredictOptions(), **fields)
    execution = options.execution or Execution()
    execution.check(options.overwrite)
    out_dir = check_output_folder(out_dir)
    named, skipped = _checked_inputs(images, out_dir, options, execution.resume)
    coco = options.coco
    image_ids = coco_image_ids(named, options.coco_gt) if coco else {}
    loaded = (describe_model(run_dir, options.which) if execution.distributed and run_kind(Path(run_dir)) != "peer"
              else load_model(run_dir, options.which, options.device))
    settings = resolve_settings(loaded, options)
    plan = make_plan(run_dir, options, settings, out_dir)
    with staged_outputs(out_dir) as stage:
        records, kept = run_images(plan, image_jobs(plan, named, image_ids), execution, loaded, options.quiet, stage)
        pixel_sizes = {r["name"]: None if r["pixel_size"] is None else PixelSize(**r["pixel_size"]) for r in records}
        notes = [r["note"] for r in records if r["note"]]
        counts = [r["counts"] for r in records]
        table = pd.DataFrame(counts, columns=COUNT_COLUMNS + (COUNT_MICROMETRE_COLUMNS if any(pixel_sizes.values()) else []))
        write_csv(stage / "counts.csv", table)
        if coco:
            from torch_instseg.coco import write_results

            write_results(coco, [detection for r in records for detection in r["detections"]],
                          {"score_source": coco_score_source(loaded),
                           "model_dir": str(Path(run_dir).resolve()), "threshold": settings.threshold})
        write_json(stage / "predict.json", {
            **predict_record(run_dir, loaded, options, settings, notes, len(skipped)), **pixel_size_record(pixel_sizes),
            "images": {name: str(path) for name, path in named.items()}, "versions": library_versions(),
            "execution": execution.record(kept),
        })
    return table


def coco_score_source(loaded: LoadedModel) -> str:
    """How ``--coco``'s scores are made: Mask R-CNN's score, a semantic cell's mean probability, or the peer's own."""
    if loaded.kind == "peer":
        import peers

        return peers.peer_module(loaded.name).SCORE_SOURCE
    return "maskrcnn_score" if loaded.kind == "instance" else "mean_probability"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "mscseg-predict",
        description="Segment new micrographs with a trained semantic (Keras), Mask R-CNN (torch), Cellpose or StarDist run: masks, "
        "instance labels, overlays, per-cell shape CSVs and a counts/confluence CSV.",
        epilog="Semantic runs use the Dice-optimal threshold of ../sweep/table1.csv when it exists (else 0.5); "
        "Mask R-CNN keeps instances with score >= 0.5 unless --threshold is given.",
    )
    parser.add_argument("--model", required=True, type=Path, help="training run folder (semantic/<model>/, instance/maskrcnn/, "
                        "instance/cellpose/ or instance/stardist/)")
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
    options = PredictOptions(args.threshold, args.scale, args.tile, args.overlap, args.min_area, args.which, args.device,
                             args.recursive, args.overwrite, quiet=False, coco=args.coco, coco_gt=args.coco_gt,
                             outputs=outputs, execution=execution)
    table = predict_folder(args.model, args.images, args.out, options)
    print(table[["image", "cell_count", "confluence"]].to_string(index=False))
    print(f"outputs in {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

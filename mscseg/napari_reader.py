"""napari reader (npe2 manifest ``mscseg/napari.yaml``): plain functions returning layer-data tuples.

napari is not a dependency: nothing here imports napari or Qt. ``pip install "napari[pyqt6]"``
then ``napari OUT_FOLDER`` (or drag the folder onto napari) opens

- an ``mscseg-predict`` output folder (``predict.json``): each micrograph as an image layer
  and its cells (``labels/<image>.png|tif``) as a labels layer whose metadata holds the
  image's row of ``counts.csv``; layers are scaled to µm when the pixel size is known;
- an ``mscseg-run`` results folder (``config.json`` and ``instance/predictions/``): each
  validation image of the instance study, its ground truth and each method's instance
  masks (COCO results with score >= ``MIN_SCORE``, higher scores painted on top) as labels
  layers (metadata: detections in the file, cells shown; ``read_results_folder(path,
  min_score=0)`` shows them all). Only the first image's layers are visible at first.

A layer-data tuple is ``(data, kwargs, layer_type)``, as napari's ``LayerDataTuple``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .layout import Layout

LayerData = tuple[Any, dict, str]
PathLike = str | Path
MIN_SCORE = 0.5


def _one_path(path: PathLike | Sequence[PathLike]) -> Path | None:
    if isinstance(path, (list, tuple)):
        return Path(path[0]) if len(path) == 1 else None
    return Path(path)


def is_predict_folder(folder: Path) -> bool:
    return (folder / "predict.json").is_file()


def is_results_folder(folder: Path) -> bool:
    layout = Layout(folder)
    return layout.config_json.is_file() and layout.predictions.is_dir()


def get_reader(path: PathLike | Sequence[PathLike]) -> Callable[[Any], list[LayerData]] | None:
    """The reader for ``path`` (a predict output folder or a results folder), else None (napari tries other plugins)."""
    folder = _one_path(path)
    if folder is None or not folder.is_dir():
        return None
    if is_predict_folder(folder):
        return read_predict_folder
    if is_results_folder(folder):
        return read_results_folder
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


def _image_layer(path: Path, name: str, scale: tuple[float, float] | None, visible: bool) -> list[LayerData]:
    """The micrograph as stored (dtype kept), or nothing when the file is gone."""
    from data.errors import DatasetError
    from data.imageio import read_array

    try:
        image = np.squeeze(read_array(path))
    except DatasetError:
        return []
    rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
    kwargs = {"name": name, "rgb": rgb, "visible": visible, "metadata": {"source": str(path)}}
    if scale:
        kwargs["scale"] = scale
    return [(image, kwargs, "image")]


def _scale(row: dict) -> tuple[float, float] | None:
    y_um, x_um = row.get("pixel_size_y_um"), row.get("pixel_size_x_um")
    if y_um is None or x_um is None:
        return None
    return (float(y_um), float(x_um))


def read_predict_folder(path: PathLike | Sequence[PathLike]) -> list[LayerData]:
    """Image and labels layers of every image of an ``mscseg-predict`` output folder (module docstring)."""
    from data.imageio import read_array

    folder = _one_path(path)
    record = json.loads((folder / "predict.json").read_text())
    rows = {}
    if (folder / "counts.csv").is_file():
        for row in pd.read_csv(folder / "counts.csv", dtype={"image": str}).to_dict("records"):
            rows[str(row["image"])] = {key: _plain(value) for key, value in row.items()}
    layers: list[LayerData] = []
    for position, (name, source) in enumerate(record.get("images", {}).items()):
        row = rows.get(name, {"image": name})
        scale, visible = _scale(row), position == 0
        layers += _image_layer(Path(source), name, scale, visible)
        candidates = (folder / "labels" / f"{name}.png", folder / "labels" / f"{name}.tif")
        labels_path = next((candidate for candidate in candidates if candidate.is_file()), None)
        if labels_path is None:
            continue
        kwargs = {"name": f"{name} cells", "visible": visible,
                  "metadata": {"counts": row, "cells_csv": str(folder / "cells" / f"{name}.csv"), "labels": str(labels_path)}}
        if scale:
            kwargs["scale"] = scale
        layers.append((read_array(labels_path), kwargs, "labels"))
    return layers


def paint_results(detections: Sequence[dict], shape: tuple[int, int], min_score: float = MIN_SCORE) -> np.ndarray:
    """H x W int32 labels of COCO result masks with score >= ``min_score``, painted in increasing score (1 = lowest)."""
    from torch_instseg.coco import decode_rle

    labels = np.zeros(shape, np.int32)
    kept = sorted((d for d in detections if float(d.get("score", 1.0)) >= min_score), key=lambda d: float(d.get("score", 1.0)))
    for label, detection in enumerate(kept, start=1):
        labels[decode_rle(detection["segmentation"])] = label
    return labels


def _results_dataset(layout: Layout):
    from data import read_dataset

    settings = json.loads(layout.config_json.read_text()).get("settings", {})
    spec = (settings.get("instance") or {}).get("dataset") or {}
    if spec.get("synthetic") is not None or not spec.get("path"):
        return read_dataset(layout.synthetic_data("instance"), format="folders")
    return read_dataset(spec["path"], spec.get("format"), **(spec.get("options") or {}))


def read_results_folder(path: PathLike | Sequence[PathLike], min_score: float = MIN_SCORE) -> list[LayerData]:
    """For each validation image of a results folder's instance study: the image, its ground truth, each method's cells."""
    from data.split import read_split
    from torch_instseg.coco import load_coco

    layout = Layout(_one_path(path))
    dataset = _results_dataset(layout)
    names = read_split(layout.split_json("instance"), dataset.names)["val"]
    gt = load_coco(layout.prediction("gt")) if layout.prediction("gt").is_file() else None
    image_ids = {image["file_name"]: image["id"] for image in gt["images"]} if gt else {}
    methods = sorted(p.stem for p in layout.predictions.glob("*.json") if p.stem != "gt" and not p.name.endswith(".meta.json"))
    results = {method: json.loads(layout.prediction(method).read_text()) for method in methods}
    layers: list[LayerData] = []
    for position, name in enumerate(names):
        sample, visible = dataset.get(name), position == 0
        stored = _image_layer(Path(sample.source), name, None, visible) if sample.source else []
        layers += stored or [(sample.image, {"name": name, "rgb": True, "visible": visible}, "image")]
        layers.append((sample.labels, {"name": f"{name} ground truth", "visible": visible}, "labels"))
        for method in methods:
            mine = [d for d in results[method] if d.get("image_id") == image_ids.get(name)]
            painted = paint_results(mine, sample.labels.shape, min_score)
            layers.append((painted, {"name": f"{name} {method}", "visible": visible,
                                     "metadata": {"method": method, "min_score": min_score, "detections": len(mine),
                                                  "shown": int(painted.max())}}, "labels"))
    return layers

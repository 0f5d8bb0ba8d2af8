"""The tools a lab would pick instead of the papers' models, trained on the run's split: Cellpose and StarDist.

Each peer is one module (``peers.cellpose``, ``peers.stardist``) holding its settings class and
its functions (the settings class lives in ``peers.<name>_settings`` and some helpers in other
``peers.<name>_*`` modules, all re-exported by the peer's module); it imports its framework only
inside its functions and runs as a step of its own.
A peer module provides:

- ``NAME`` (the method's name in tables, file names and run.json), ``SCORE_SOURCE`` (how a
  detection's score is made, one line, written beside the results) and ``SETTINGS`` (its
  settings dataclass, fields declared with ``data.settings.setting``; ``problems()``, ``checked()``);
- ``train(settings, dataset, split, out_dir, control=None) -> dict``: trains on the split's
  ``train`` images (validation loss on ``val``) through ``data.lifecycle`` (run.json,
  history.csv, weights; resumable), returns run.json's content;
- ``load(run_dir, device=None)``: the trained model (the best epoch's weights, tuned thresholds);
- ``predict_labels(model, image) -> (labels, scores)``: image H x W x 3 float32 in [0, 1];
  labels H x W int32 (0 background, 1..N cells); scores N float64, the score of label k at k-1;
- ``versions() -> dict``: the peer's package versions (for run.json and the report).

This package imports no framework: the registry, the results writer and the missing-package
message live here and are shared by both peers, the runner and ``mscseg-predict``.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, Sequence

import numpy as np

from data.coco_codec import instances_to_results
from data.errors import MscsegError
from data.outputs import write_json

PEER_NAMES = ("cellpose", "stardist")
PACKAGES = {"cellpose": "cellpose", "stardist": "stardist"}
"""The PyPI package each peer needs (pinned in requirements/*.txt)."""


class PeerError(MscsegError):
    """A peer's bad settings, missing package or missing weights (one line naming the file or setting)."""


class PeerUnavailable(PeerError):
    """The peer's package cannot be imported in this environment."""


def peer_module(name: str) -> ModuleType:
    """``peers.<name>`` (imports no framework); ``PeerError`` for an unknown name."""
    if name not in PEER_NAMES:
        raise PeerError(f"unknown peer '{name}'; peers: {', '.join(PEER_NAMES)}")
    return importlib.import_module(f"{__name__}.{name}")


def require_package(name: str) -> ModuleType:
    """Import the package peer ``name`` needs, or raise ``PeerUnavailable`` in one line saying how to get it."""
    package = PACKAGES[name]
    try:
        return importlib.import_module(package)
    except ImportError as error:
        raise PeerUnavailable(f"peer '{name}' needs the Python package '{package}', which cannot be imported here "
                              f"({error}); it is pinned in requirements/paper.txt and requirements/current.txt: "
                              "run ./run_all.sh or ./run_tests.sh to make the environment") from None


def labels_to_results(image_id: int, labels: np.ndarray, scores: np.ndarray, max_detections: int | None = None) -> list[dict]:
    """COCO results of one image's label map: labels H x W int (0 background, 1..N); scores N (label k's at k-1).

    Labels with no pixel are skipped; at most ``max_detections`` are kept, highest scores first.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    ids = [k for k in range(1, scores.size + 1) if np.any(labels == k)]
    ids.sort(key=lambda k: -scores[k - 1])
    if max_detections is not None:
        ids = ids[:max_detections]
    if not ids:
        return []
    masks = np.stack([labels == k for k in ids])
    return instances_to_results(image_id, masks, scores[np.asarray(ids) - 1])


def meta_path(results_json: str | Path) -> Path:
    """``<name>.meta.json`` beside ``<name>.json`` (the same sidecar ``torch_instseg.coco.results_meta`` reads)."""
    path = Path(results_json)
    return path.with_name(path.stem + ".meta.json")


def write_results(results_json: str | Path, results: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> Path:
    """Write COCO results and their sidecar (``score_source``, versions, weights), both atomically."""
    write_json(meta_path(results_json), dict(meta))
    return write_json(results_json, list(results))

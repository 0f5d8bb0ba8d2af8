"""Cellpose's settings: ``CellposeSettings`` (every setting of a Cellpose run, its checks and its run.json
record), the released Cellpose 3 networks a run may start from, how a ``weights`` value is normalised, the
settings that only prediction reads and those a resumed run must share. No framework is imported;
``peers.cellpose`` re-exports every name here and is the peer's module (``SETTINGS`` is this class).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from data.settings import DETERMINISTIC_HELP, Problem, choice_problem, field_names, is_number, is_whole, problem_text, setting

from . import PeerError

RELEASED = ("cyto3", "cyto2", "cyto", "nuclei", "cyto2_cp3", "tissuenet_cp3", "livecell_cp3", "yeast_PhC_cp3", "yeast_BF_cp3",
            "bact_phase_cp3", "bact_fluor_cp3", "deepbacs_cp3")
"""Released Cellpose 3 networks (``cellpose.models.MODEL_NAMES``, res-U-Net backbone)."""
OPTIMIZERS = ("adamw", "sgd")
MIN_DIAMETER = 5.0


def weights_source(weights: str | os.PathLike | None) -> str:
    """'none', a released model name, or the path given (``~`` expanded)."""
    if weights is None or str(weights).strip().lower() in ("none", "null", ""):
        return "none"
    text = str(weights).strip()
    return text if text in RELEASED else str(Path(text).expanduser())


@dataclass
class CellposeSettings:
    """Every setting of a Cellpose run (defaults: ``cellpose.train.train_seg``'s and ``CellposeModel.eval``'s); in run.json.

    The learning rate follows Cellpose's schedule over ``epochs``: linear from 0 over the first
    10 epochs, then constant; over 100 epochs the last 50 halve it every 5, over 300 the last 100
    every 10. ``diam_mean``: the cell diameter (px) the network sees (Cellpose: 30, nuclei 17).
    """

    weights: str | None = setting("none", f"none (random initialisation), a released Cellpose model ({', '.join(RELEASED[:4])}, ...; "
                                          "kept in ~/.cellpose/models or $CELLPOSE_LOCAL_MODELS_PATH) or a model file")
    epochs: int = setting(100, "training epochs (each shows every training image once, as one random crop)")
    batch_size: int = setting(8, "crops per optimiser step")
    lr: float = setting(0.005, "peak learning rate (Cellpose's schedule: warm-up over 10 epochs, halvings at the end)")
    weight_decay: float = setting(1e-5, "weight decay")
    optimizer: str = setting("adamw", "adamw (Cellpose's default) or sgd (momentum 0.9)", choices=OPTIMIZERS)
    bsize: int = setting(224, "side of the square training crops in pixels, after the diameter rescale")
    diam_mean: float = setting(30.0, "cell diameter in pixels that images are rescaled to (Cellpose: 30; nuclei 17)")
    scale_range: float = setting(0.5, "random rescale of each crop by a factor in 1 +- scale_range / 2 (Cellpose: 0.5)")
    min_train_masks: int = setting(1, "training images with fewer cells are left out (Cellpose's train_seg: 5)")
    diameter: float | None = setting(None, "cell diameter in pixels of the images to predict (none: the training images')")
    flow_threshold: float = setting(0.4, "masks whose flow error exceeds this are dropped (0: keep all)")
    cellprob_threshold: float = setting(0.0, "cell-probability logit above which pixels are followed (Cellpose: 0)")
    min_size: int = setting(15, "masks smaller than this many pixels are dropped (Cellpose: 15)")
    seed: int = setting(0, "random seed (initialisation, image order, crops)")
    max_minutes: float | None = setting(None, "stop after the epoch that passes this wall time of the whole run, resumes included",
                                        stamped_at_default=False)
    deterministic: bool = setting(True, DETERMINISTIC_HELP, stamped_at_default=False)

    def problems(self) -> list[Problem]:
        """``(field, problem)`` for every bad value (no framework needed)."""
        found: list[Problem] = []
        for name in ("epochs", "batch_size"):
            if not (is_whole(getattr(self, name)) and getattr(self, name) >= 1):
                found.append((name, f"must be a whole number of at least 1, got {getattr(self, name)!r}"))
        for name in ("min_train_masks", "min_size"):
            if not (is_whole(getattr(self, name)) and getattr(self, name) >= 0):
                found.append((name, f"must be a whole number, zero or more, got {getattr(self, name)!r}"))
        if not (is_whole(self.bsize) and self.bsize >= 32 and self.bsize % 16 == 0):
            found.append(("bsize", f"must be a multiple of 16, at least 32 pixels, got {self.bsize!r}"))
        if not (is_number(self.lr) and self.lr > 0):
            found.append(("lr", f"must be positive, got {self.lr!r}"))
        if not (is_number(self.weight_decay) and self.weight_decay >= 0):
            found.append(("weight_decay", f"must be zero or positive, got {self.weight_decay!r}"))
        if self.optimizer not in OPTIMIZERS:
            found.append(("optimizer", choice_problem(self.optimizer, OPTIMIZERS)))
        if not (is_number(self.diam_mean) and self.diam_mean >= MIN_DIAMETER):
            found.append(("diam_mean", f"must be a diameter of at least {MIN_DIAMETER:g} pixels, got {self.diam_mean!r}"))
        if self.diameter is not None and not (is_number(self.diameter) and self.diameter > 0):
            found.append(("diameter", f"must be a positive diameter in pixels or none, got {self.diameter!r}"))
        if not (is_number(self.scale_range) and 0 <= self.scale_range < 2):
            found.append(("scale_range", f"must be in [0, 2), got {self.scale_range!r}"))
        if not (is_number(self.flow_threshold) and self.flow_threshold >= 0):
            found.append(("flow_threshold", f"must be zero (keep all) or positive, got {self.flow_threshold!r}"))
        if not is_number(self.cellprob_threshold):
            found.append(("cellprob_threshold", f"must be a number (a logit, Cellpose's 0), got {self.cellprob_threshold!r}"))
        if not is_whole(self.seed):
            found.append(("seed", f"must be a whole number, got {self.seed!r}"))
        if self.max_minutes is not None and not (is_number(self.max_minutes) and self.max_minutes > 0):
            found.append(("max_minutes", f"must be positive or none, got {self.max_minutes!r}"))
        if not isinstance(self.deterministic, bool):
            found.append(("deterministic", f"must be true or false, got {self.deterministic!r}"))
        if not (self.weights is None or isinstance(self.weights, (str, os.PathLike))):
            found.append(("weights", f"must be none, a released model ({', '.join(RELEASED)}) or a file, got {self.weights!r}"))
        else:
            source = weights_source(self.weights)
            if source not in ("none",) + RELEASED and not Path(source).is_file():
                found.append(("weights", f"'{self.weights}' is neither none, a released Cellpose model ({', '.join(RELEASED)}) "
                                         "nor a model file"))
        return found

    def checked(self) -> "CellposeSettings":
        """A copy with the weights normalised and numbers as floats; ``PeerError`` naming every bad value."""
        found = self.problems()
        if found:
            raise PeerError(problem_text(found, "cellpose."))
        return replace(self, weights=weights_source(self.weights), lr=float(self.lr), weight_decay=float(self.weight_decay),
                       diam_mean=float(self.diam_mean), scale_range=float(self.scale_range),
                       flow_threshold=float(self.flow_threshold), cellprob_threshold=float(self.cellprob_threshold),
                       diameter=None if self.diameter is None else float(self.diameter),
                       max_minutes=None if self.max_minutes is None else float(self.max_minutes))

    def to_record(self) -> dict[str, Any]:
        """What run.json holds."""
        return {**asdict(self), "loss": "cellpose.train._loss_fn_seg (MSE on 5 x flows / 2 + BCE on cell probability)",
                "input": "grey (mean of RGB, Cellpose channels [0, 0]) + empty second channel, normalised 1-99 percentile"}


PREDICT_SETTINGS = ("diameter", "flow_threshold", "cellprob_threshold", "min_size")
CELLPOSE_RESUME_MUST_MATCH = tuple(name for name in field_names(CellposeSettings)
                                   if name not in ("epochs", "max_minutes", "deterministic") + PREDICT_SETTINGS)

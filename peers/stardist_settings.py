"""StarDist's settings: ``StardistSettings`` (every setting of a StarDist 2D training run, its checks and its
run.json record), the released model and the network shape it was trained with, how a ``weights`` value is
normalised, and the settings a resumed run must share. No framework is imported; ``peers.stardist``
re-exports every name here and is the peer's module (``SETTINGS`` is this class).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from data.settings import DETERMINISTIC_HELP, Problem, choice_problem, field_names, is_number, is_whole, problem_text, setting

from . import PeerError

RELEASED = {"2D_versatile_fluo": "https://github.com/stardist/stardist-models/releases/download/v0.1/python_2D_versatile_fluo.zip"}
RELEASED_SHAPE = {"n_rays": 32, "grid": (2, 2), "unet_n_depth": 3, "unet_n_filter_base": 32, "unet_batch_norm": False}
LR_SCHEDULES = ("plateau", "cosine")
PERCENTILES = (1.0, 99.8)


def weights_source(weights: str | os.PathLike | None) -> str:
    """'none', a released model's name, or the path given (~ expanded), as run.json records it."""
    if weights is None or str(weights).strip().lower() in ("none", "null", ""):
        return "none"
    text = str(weights).strip()
    return text if text in RELEASED else str(Path(text).expanduser())


def _grid_pair(grid: Any) -> tuple[int, int] | None:
    """``grid`` as (gy, gx) when it is one or two powers of two, else None."""
    values = [grid, grid] if is_whole(grid) else list(grid) if isinstance(grid, (list, tuple)) else []
    if len(values) != 2 or not all(is_whole(v) and v >= 1 and v & (v - 1) == 0 for v in values):
        return None
    return int(values[0]), int(values[1])


@dataclass
class StardistSettings:
    """Every setting of a StarDist 2D training run (StarDist's defaults unless noted); stored in run.json.

    patch_size: square training patches in pixels (at most the smallest image side, rounded down
    to a multiple of 2^unet_n_depth x grid). lr_schedule plateau: StarDist's ReduceLROnPlateau
    on the validation loss (factor, patience in epochs); cosine: lr x 0.5 (1 + cos(pi (e-1) / epochs))
    in epoch e. image_size: resize every image to N x N (none: native size).
    """

    n_rays: int = setting(32, "rays of each star-convex polygon")
    grid: tuple[int, int] = setting((2, 2), "subsampling of the output (powers of 2, y and x)")
    unet_n_depth: int = setting(3, "U-Net resolution levels")
    unet_n_filter_base: int = setting(32, "U-Net filters of the first level (doubled per level)")
    unet_batch_norm: bool = setting(False, "batch normalisation after each U-Net convolution")
    batchnorm_momentum: float = setting(0.99, "momentum of the batch-normalisation moving statistics (Keras' 0.99; "
                                              "0.9 settles within a short run)")
    patch_size: int = setting(256, "square training patch side in pixels")
    image_size: int | None = setting(None, "resize every image to N x N (none: native size)")
    epochs: int = setting(400, "training epochs")
    steps_per_epoch: int = setting(100, "optimiser steps per epoch")
    batch_size: int = setting(4, "patches per optimiser step")
    lr: float = setting(3e-4, "Adam learning rate")
    lr_schedule: str = setting("plateau", "plateau (StarDist's ReduceLROnPlateau on the validation loss) or cosine (per epoch)",
                               choices=LR_SCHEDULES)
    plateau_factor: float = setting(0.5, "ReduceLROnPlateau's factor")
    plateau_patience: int = setting(40, "ReduceLROnPlateau's patience in epochs")
    augment: bool = setting(True, "random flips, 90-degree rotations, intensity scale and shift, noise (StarDist's example)")
    weights: str | None = setting("none", "none (random initialisation), 2D_versatile_fluo (released; downloaded into Keras' "
                                          "cache when online) or a weights .h5 file or a StarDist run folder")
    optimize_thresholds: bool = setting(True, "tune the probability and NMS thresholds on the training images after training "
                                              "(StarDist's optimize_thresholds; off: 0.5 and 0.4)")
    threshold_images: int | None = setting(None, "tune the thresholds on the first N training images (none: all of them)")
    seed: int = setting(0, "random seed")
    max_minutes: float | None = setting(None, "stop after the epoch that passes this wall time of the whole run, resumes included",
                                        stamped_at_default=False)
    deterministic: bool = setting(True, DETERMINISTIC_HELP, stamped_at_default=False)

    def problems(self) -> list[Problem]:
        """``(field, problem)`` for every bad value (no framework needed)."""
        found: list[Problem] = []
        for name in ("n_rays", "unet_n_depth", "unet_n_filter_base", "epochs", "steps_per_epoch", "batch_size", "plateau_patience"):
            least = 3 if name == "n_rays" else 0 if name == "plateau_patience" else 1
            if not (is_whole(getattr(self, name)) and getattr(self, name) >= least):
                found.append((name, f"must be a whole number of at least {least}, got {getattr(self, name)!r}"))
        grid = _grid_pair(self.grid)
        if grid is None:
            found.append(("grid", f"must be one or two powers of 2 (y, x), got {self.grid!r}"))
        if not (is_whole(self.patch_size) and self.patch_size >= 16):
            found.append(("patch_size", f"must be at least 16 pixels, got {self.patch_size!r}"))
        elif grid is not None and is_whole(self.unet_n_depth) and self.unet_n_depth >= 1:
            step = max(grid) * 2 ** self.unet_n_depth
            if self.patch_size % step:
                found.append(("patch_size", f"must be a multiple of {step} (2^unet_n_depth x grid), got {self.patch_size}"))
        if self.threshold_images is not None and not (is_whole(self.threshold_images) and self.threshold_images >= 1):
            found.append(("threshold_images", f"must be at least 1 or none (all training images), got {self.threshold_images!r}"))
        if self.image_size is not None and not (is_whole(self.image_size) and self.image_size >= 32):
            found.append(("image_size", f"must be at least 32 or none (native size), got {self.image_size!r}"))
        if not (is_number(self.lr) and self.lr > 0):
            found.append(("lr", f"must be positive, got {self.lr!r}"))
        if self.lr_schedule not in LR_SCHEDULES:
            found.append(("lr_schedule", choice_problem(self.lr_schedule, LR_SCHEDULES, " (plateau: StarDist's)")))
        if not (is_number(self.batchnorm_momentum) and 0 < self.batchnorm_momentum < 1):
            found.append(("batchnorm_momentum", f"must be between 0 and 1, got {self.batchnorm_momentum!r}"))
        if not (is_number(self.plateau_factor) and 0 < self.plateau_factor < 1):
            found.append(("plateau_factor", f"must be between 0 and 1, got {self.plateau_factor!r}"))
        if not is_whole(self.seed):
            found.append(("seed", f"must be a whole number, got {self.seed!r}"))
        if self.max_minutes is not None and not (is_number(self.max_minutes) and self.max_minutes > 0):
            found.append(("max_minutes", f"must be positive or none, got {self.max_minutes!r}"))
        for name in ("unet_batch_norm", "augment", "optimize_thresholds", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                found.append((name, f"must be true or false, got {getattr(self, name)!r}"))
        if not (self.weights is None or isinstance(self.weights, (str, os.PathLike))):
            found.append(("weights", f"must be none, {', '.join(RELEASED)} or a path, got {self.weights!r}"))
        elif weights_source(self.weights) in RELEASED:
            shape = {"n_rays": self.n_rays, "grid": grid, "unet_n_depth": self.unet_n_depth, "unet_n_filter_base": self.unet_n_filter_base,
                     "unet_batch_norm": self.unet_batch_norm}
            differ = [f"{key} {RELEASED_SHAPE[key]}" for key in RELEASED_SHAPE if shape[key] != RELEASED_SHAPE[key]]
            if differ:
                found.append(("weights", f"{weights_source(self.weights)} was trained with {', '.join(differ)}; "
                                         "use those or weights none"))
        return found

    def checked(self) -> "StardistSettings":
        """A copy with the grid as (y, x) and the weights normalised; ``PeerError`` naming every bad value."""
        found = self.problems()
        if found:
            raise PeerError(problem_text(found, "stardist."))
        return replace(self, grid=_grid_pair(self.grid), weights=weights_source(self.weights), lr=float(self.lr),
                       plateau_factor=float(self.plateau_factor),
                       max_minutes=None if self.max_minutes is None else float(self.max_minutes))

    def to_record(self) -> dict[str, Any]:
        """What run.json holds (JSON types: the grid as a list)."""
        record = asdict(self)
        record["grid"] = list(record["grid"]) if isinstance(record["grid"], (list, tuple)) else record["grid"]
        return {**record, "optimizer": "Adam", "input": f"grey (mean of RGB), csbdeep normalize{PERCENTILES} per image"}


STARDIST_RESUME_MUST_MATCH = tuple(name for name in field_names(StardistSettings)
                                   if name not in ("epochs", "max_minutes", "deterministic", "optimize_thresholds", "threshold_images"))

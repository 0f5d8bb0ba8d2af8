"""The semantic training recipe, declared once (imports no framework).

``TrainRecipe`` is what the run config's ``semantic`` section shares with every model's
training run; ``TrainSettings`` adds the model and its options: one training run, recorded
in run.json. ``semseg-train`` makes its flags from ``TrainSettings``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from data.settings import DETERMINISTIC_HELP, Problem, choice_problem, problem_text, setting

from .errors import SemsegError
from .registry import MODELS, check_image_size, get_entry

LR_SCHEDULES = ("constant", "cosine")
EVAL_WEIGHTS = ("best", "last")


def _positive_whole(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and float(value).is_integer() and value >= 1


@dataclass
class TrainRecipe:
    """How each semantic model is trained (the paper's: Adam, binary cross-entropy, 100 epochs, batch 8)."""

    image_size: int = setting(256, "training size in pixels, a multiple of 32 (the paper does not state it; 256 fits its T4 times)")
    epochs: int = setting(100, "training epochs")
    batch_size: int = setting(8, "images per optimiser step")
    encoder_weights: str | None = setting("imagenet", "imagenet, none (random initialisation) or the path of a Keras .h5 file")
    augment: bool = setting(True, "random flips, 90-degree rotations and zoom")
    mixed_precision: bool = setting(False, "float16 compute (GPU), float32 output")
    seed: int = setting(0, "random seed of weights, shuffling and augmentation")
    steps_per_epoch: int | None = setting(None, "optimiser steps per epoch, the training images repeated (none: one pass)")
    lr_schedule: str = setting("constant", "constant (the paper's plain Adam) or cosine (decay to 0)", choices=LR_SCHEDULES)
    batchnorm_momentum: float | None = setting(None, "momentum of every batch-norm layer's moving statistics (none: Keras's 0.99)")
    eval_weights: str = setting("best", "weights that write the probability maps: best (lowest validation loss) or last",
                                choices=EVAL_WEIGHTS)
    deterministic: bool = setting(True, DETERMINISTIC_HELP, stamped_at_default=False)
    max_minutes: float | None = setting(None, "stop after the epoch that passes this wall time of the whole run, resumes included",
                                        stamped_at_default=False)

    def problems(self) -> list[Problem]:
        """``(field, problem)`` for every bad value of the recipe."""
        found: list[Problem] = []
        try:
            check_image_size(self.image_size)
        except SemsegError:
            found.append(("image_size", "must be a multiple of 32 and at least 32 (the encoders downsample 5 times), "
                                        f"got {self.image_size}"))
        for name in ("epochs", "batch_size"):
            if not _positive_whole(getattr(self, name)):
                found.append((name, f"must be at least 1, got {getattr(self, name)}"))
        if self.steps_per_epoch is not None and not _positive_whole(self.steps_per_epoch):
            found.append(("steps_per_epoch", "must be at least 1 or none (one pass over the training images), "
                                             f"got {self.steps_per_epoch}"))
        if str(self.lr_schedule or "constant").lower() not in LR_SCHEDULES:
            found.append(("lr_schedule", choice_problem(self.lr_schedule, LR_SCHEDULES, " (constant: the paper's plain Adam)")))
        momentum = self.batchnorm_momentum
        if momentum is not None and not (isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0):
            found.append(("batchnorm_momentum", f"must be in [0, 1) or none (Keras's 0.99), got {momentum}"))
        if self.eval_weights not in EVAL_WEIGHTS:
            found.append(("eval_weights", "must be best (lowest validation loss, the default) or last (the final epoch), "
                                          f"got '{self.eval_weights}'"))
        if self.max_minutes is not None and not (isinstance(self.max_minutes, (int, float)) and not isinstance(self.max_minutes, bool)
                                                 and self.max_minutes > 0):
            found.append(("max_minutes", f"must be positive (or none), got {self.max_minutes}"))
        weights = self.encoder_weights
        if weights is not None and not (isinstance(weights, str) and (weights.lower() in ("imagenet", "none") or weights.endswith(".h5"))):
            found.append(("encoder_weights", "must be 'imagenet', none (random initialisation) or the path of a Keras .h5 "
                                             f"weights file, got '{weights}'"))
        return found


@dataclass
class TrainSettings(TrainRecipe):
    """The recipe of one semantic training run (recorded in run.json's ``settings``)."""

    model: str = setting(help=f"one of: {', '.join(MODELS)}", kw_only=True)
    model_options: dict = setting(help="the model builder's options, e.g. {\"aspp_filters\": 128}", factory=dict)

    def problems(self) -> list[Problem]:
        found = super().problems()
        try:
            get_entry(self.model)
        except SemsegError as error:
            found.insert(0, ("model", error.problem))
        if not isinstance(self.model_options or {}, dict):
            found.append(("model_options", "must be a mapping of option: value"))
        return found

    def checked(self) -> "TrainSettings":
        """A copy with checked values; ``SemsegError`` naming every bad one."""
        found = self.problems()
        if found:
            raise SemsegError(problem_text(found))
        weights = self.encoder_weights
        return replace(self, image_size=int(self.image_size), epochs=int(self.epochs), batch_size=int(self.batch_size),
                       steps_per_epoch=None if self.steps_per_epoch is None else int(self.steps_per_epoch),
                       lr_schedule=str(self.lr_schedule or "constant").lower(), seed=int(self.seed),
                       augment=bool(self.augment), mixed_precision=bool(self.mixed_precision),
                       encoder_weights=None if weights is None or str(weights).lower() == "none" else weights,
                       model_options=dict(self.model_options or {}))

    def to_record(self) -> dict:
        from .pipeline import Augmentation

        entry = get_entry(self.model)
        return {
            **asdict(self),
            "encoder_weights": "none" if self.encoder_weights is None else str(self.encoder_weights),
            "target": entry.target,
            "augmentation": Augmentation().to_dict() if self.augment else None,
            "loss": "model's own" if entry.compiles_itself else "binary_crossentropy",
            "optimizer": "Adam (tf.keras.optimizers.legacy.Adam, Keras defaults: learning rate 0.001, betas 0.9/0.999, epsilon 1e-7)"
                         + ("; learning rate 0.001 decayed to 0 by a cosine over all training steps" if self.lr_schedule == "cosine" else ""),
        }

    def train_steps(self, n_train: int) -> int:
        """Optimiser steps per epoch: ``steps_per_epoch`` (the training images repeated) or one pass over ``n_train``."""
        return self.steps_per_epoch or math.ceil(n_train / self.batch_size)

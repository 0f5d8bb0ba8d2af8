"""The instance study's training settings, declared once (imports no framework).

``MaskRCNNSettings`` (``instseg-train``, the run config's ``instance`` section) and
``FinetuneSettings`` (``instseg-sam-train``, ``instance.sam_finetune``): each field's default
(the papers' where they state one), help and check live here; the command lines, the
config, the step stamps and run.json all read them from these classes.

A SAM checkpoint setting is a file (or a folder holding the variant's released file),
``default`` (the variant's released file in ``$MSCSEG_SAM_DIR``) or none (random weights).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from data.settings import DETERMINISTIC_HELP, Problem, choice_problem, field_names, is_number, is_whole, problem_text, setting

from .errors import InstsegError
from .names import TRAINABLE_PARTS
from .sam import SAM_VARIANTS
from .weights import SAM_CHECKPOINT_FILES

LR_SCHEDULES = ("plateau", "cosine")
AUGMENTATION = {"hflip": 0.5, "vflip": 0.3, "rot90": 0.3}
DEFAULT_MIN_SIZE = 800
DEFAULT_MAX_SIZE = 1333
V2_HEAD_CHANNELS = 256
ANCHOR_LEVELS = 5
MASKRCNN_OPTIONS = (
    "min_size", "max_size", "image_mean", "image_std", "size_divisible", "fixed_size",
    "rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train", "rpn_post_nms_top_n_test",
    "rpn_nms_thresh", "rpn_fg_iou_thresh", "rpn_bg_iou_thresh", "rpn_batch_size_per_image", "rpn_positive_fraction",
    "rpn_score_thresh", "box_score_thresh", "box_nms_thresh", "box_detections_per_img", "box_fg_iou_thresh",
    "box_bg_iou_thresh", "box_batch_size_per_image", "box_positive_fraction", "bbox_reg_weights",
)
"""torchvision ``MaskRCNN`` keyword arguments a config can give (the ones that take a number or list)."""
OWN_OPTIONS = ("anchor_sizes", "head_channels")
FOCAL_WEIGHT = 20.0
DICE_WEIGHT = 1.0
DEFAULT_CHECKPOINT = "default"


# ---------------------------------------------------------------- Mask R-CNN

def weights_source(weights: str | os.PathLike | None) -> str:
    """'coco', 'none' or the path given, as recorded in run.json."""
    if weights is None:
        return "none"
    text = str(weights)
    if text.lower() in ("coco", "none"):
        return text.lower()
    return str(Path(text).expanduser())


def coco_heads_message(head_channels: int) -> str:
    return f"head_channels {head_channels} needs weights 'none' or a run's own weights: the COCO heads have {V2_HEAD_CHANNELS} channels"


def model_option_problems(options: Any, weights: str | os.PathLike | None) -> list[Problem]:
    """``(option, problem)`` for every ``model_options`` entry ``build_maskrcnn`` would refuse with these ``weights``."""
    if not isinstance(options, dict):
        return [("", "must be a mapping of option: value")]
    found: list[Problem] = []
    for name in options:
        if name not in MASKRCNN_OPTIONS + OWN_OPTIONS:
            found.append((str(name), f"unknown Mask R-CNN option; valid: {', '.join(OWN_OPTIONS + MASKRCNN_OPTIONS)}"))
    channels = options.get("head_channels")
    if channels is not None and not (is_whole(channels) and channels >= 1):
        found.append(("head_channels", f"must be a positive whole number of channels, got {channels!r}"))
    elif channels not in (None, V2_HEAD_CHANNELS) and weights_source(weights) == "coco":
        found.append(("head_channels", coco_heads_message(channels)))
    sizes = options.get("anchor_sizes")
    if sizes is not None and not (isinstance(sizes, (list, tuple)) and len(sizes) == ANCHOR_LEVELS
                                  and all(is_number(size) and size > 0 for size in sizes)):
        found.append(("anchor_sizes", f"must be {ANCHOR_LEVELS} positive sizes in pixels (one per FPN level), got {sizes!r}"))
    return found


def head_channels(value: Any) -> int | None:
    """The ``head_channels`` model option: None for torchvision's 256, else the (checked) narrower width."""
    found = [problem for problem in model_option_problems({"head_channels": value}, "none") if problem[0] == "head_channels"]
    if found:
        raise InstsegError(problem_text(found))
    return None if value in (None, V2_HEAD_CHANNELS) else int(value)


@dataclass
class MaskRCNNSettings:
    """Every setting of a Mask R-CNN training run (the paper's defaults); stored in run.json.

    image_size: None keeps the native size (the model then resizes internally with
    min_size/max_size, default torchvision's 800/1333); N resizes every image to N x N once
    and sets min_size = max_size = N. warmup_iters: None = the first epoch's iterations (at
    most 1000), 0 = none. max_minutes: stop after the epoch that passes this wall time of the whole
    run, resumes included (``data.lifecycle``).
    model_options: extra torchvision ``MaskRCNN`` arguments (see ``build_maskrcnn``).
    """

    image_size: int | None = setting(None, "resize every image to N x N (none: native size, the model's min/max size)")
    epochs: int = setting(50, "training epochs")
    batch_size: int = setting(2, "images per optimiser step")
    lr: float = setting(3e-3, "AdamW learning rate")
    weight_decay: float = setting(5e-4, "AdamW weight decay")
    weights: str | None = setting("coco", "coco (torchvision COCO_V1), none (random initialisation) or a .pth path")
    detections_per_image: int = setting(300, "most detections kept per image (COCO's 100 cuts dense images)")
    seed: int = setting(0, "random seed")
    min_size: int | None = setting(None, "the model's internal resize, shorter side (none: 800, or image_size)", stamped_at_default=False)
    max_size: int | None = setting(None, "the model's internal resize, longer side (none: 1333, or image_size)", stamped_at_default=False)
    plateau_factor: float = setting(0.1, "ReduceLROnPlateau's factor", stamped_at_default=False)
    plateau_patience: int = setting(5, "ReduceLROnPlateau's patience in epochs", stamped_at_default=False)
    warmup_iters: int | None = setting(None, "linear warm-up iterations (none: the first epoch's, at most 1000; 0: none)", stamped_at_default=False)
    augmentation: dict[str, float] | None = setting(None, "probabilities of hflip, vflip, rot90 (none: the paper's 0.5, 0.3, 0.3)", stamped_at_default=False)
    num_workers: int = setting(0, "data loader worker processes", stamped_at_default=False)
    max_minutes: float | None = setting(None, "stop after the epoch that passes this wall time of the whole run, resumes included",
                                        stamped_at_default=False)
    model_options: dict[str, Any] = setting(help="more torchvision MaskRCNN arguments, anchor_sizes and head_channels",
                                            factory=dict)
    lr_schedule: str = setting("plateau", "plateau (ReduceLROnPlateau on the validation loss, the paper's) or cosine",
                               choices=LR_SCHEDULES)
    deterministic: bool = setting(True, DETERMINISTIC_HELP, stamped_at_default=False)

    def problems(self) -> list[Problem]:
        """``(field, problem)`` for every bad value (``model_options.<option>`` for a bad model option)."""
        found: list[Problem] = []
        for name in ("epochs", "batch_size", "detections_per_image"):
            if not (is_whole(getattr(self, name)) and getattr(self, name) >= 1):
                found.append((name, f"must be at least 1, got {getattr(self, name)}"))
        if not (is_number(self.lr) and self.lr > 0):
            found.append(("lr", f"must be positive, got {self.lr}"))
        if not (is_number(self.weight_decay) and self.weight_decay >= 0):
            found.append(("weight_decay", f"must be zero or positive, got {self.weight_decay}"))
        if self.lr_schedule not in LR_SCHEDULES:
            found.append(("lr_schedule", choice_problem(self.lr_schedule, LR_SCHEDULES, " (plateau: the paper's)")))
        if self.image_size is not None and not (is_whole(self.image_size) and self.image_size >= 32):
            found.append(("image_size", f"must be at least 32 or none (native size), got {self.image_size}"))
        for name in ("min_size", "max_size", "warmup_iters", "max_minutes"):
            value = getattr(self, name)
            if value is not None and not (is_number(value) and (value >= 0 if name == "warmup_iters" else value > 0)):
                found.append((name, f"must be {'zero or more' if name == 'warmup_iters' else 'positive'} or none, got {value}"))
        if not (is_number(self.plateau_factor) and 0 < self.plateau_factor < 1):
            found.append(("plateau_factor", f"must be between 0 and 1, got {self.plateau_factor}"))
        for name in ("plateau_patience", "num_workers"):
            if not (is_whole(getattr(self, name)) and getattr(self, name) >= 0):
                found.append((name, f"must be zero or more, got {getattr(self, name)}"))
        for name, chance in (self.augmentation or {}).items():
            if name not in AUGMENTATION or not (is_number(chance) and 0 <= chance <= 1):
                found.append((f"augmentation.{name}", f"must be one of {', '.join(AUGMENTATION)} with a chance in [0, 1], got {chance!r}"))
        found += [(f"model_options.{key}".rstrip("."), text) for key, text in model_option_problems(self.model_options, self.weights)]
        return found

    def checked(self) -> "MaskRCNNSettings":
        """A copy with defaults filled in; ``InstsegError`` naming every bad value."""
        found = self.problems()
        if found:
            raise InstsegError(problem_text(found))
        size = int(self.image_size) if self.image_size else None
        return replace(
            self, image_size=size, epochs=int(self.epochs), batch_size=int(self.batch_size), lr=float(self.lr),
            weight_decay=float(self.weight_decay), weights=weights_source(self.weights),
            min_size=size or int(self.min_size or DEFAULT_MIN_SIZE), max_size=size or int(self.max_size or DEFAULT_MAX_SIZE),
            augmentation=dict(AUGMENTATION if self.augmentation is None else self.augmentation),
            model_options=dict(self.model_options or {}),
        )

    def to_record(self) -> dict[str, Any]:
        scheduler = "ReduceLROnPlateau(val_loss)" if self.lr_schedule == "plateau" else "cosine decay to 0 per iteration"
        return {**asdict(self), "optimizer": "AdamW", "scheduler": scheduler}


MASKRCNN_RESUME_MUST_MATCH = tuple(name for name in field_names(MaskRCNNSettings)
                                   if name not in ("epochs", "num_workers", "max_minutes", "deterministic"))


# ---------------------------------------------------------------- SAM checkpoints and fine-tuning

def normalize_checkpoint(value: str | os.PathLike | None) -> str | None:
    """A SAM checkpoint setting as stored: None (random weights) for none/null/empty, 'default', or the path (~, $VARS expanded)."""
    if value is None or str(value).strip().lower() in ("none", "null", ""):
        return None
    text = str(value).strip()
    return DEFAULT_CHECKPOINT if text.lower() == DEFAULT_CHECKPOINT else os.path.expandvars(os.path.expanduser(text))


def build_sam_checkpoint(value: str | os.PathLike | None) -> str | None:
    """A checkpoint setting as ``torch_instseg.sam.build_sam`` takes it: none -> 'none' (random), default -> None (released file)."""
    value = normalize_checkpoint(value)
    if value is None:
        return "none"
    return None if value == DEFAULT_CHECKPOINT else value


def untrained_start(variant: str, checkpoint: str | os.PathLike | None) -> bool:
    """True when SAM ``variant`` starts from random weights with this checkpoint setting."""
    value = normalize_checkpoint(checkpoint)
    return value is None or (value == DEFAULT_CHECKPOINT and variant not in SAM_CHECKPOINT_FILES)


@dataclass
class FinetuneSettings:
    """Settings of one SAM fine-tuning run (every one is written into run.json)."""

    variant: str = setting("vit_h", f"SAM variant: {', '.join(SAM_VARIANTS)} (vit_tiny: small random encoder for demos)")
    checkpoint: str | None = setting(DEFAULT_CHECKPOINT, "weights to start from: a file or folder, default (the variant's "
                                                         "released file in $MSCSEG_SAM_DIR) or none (random weights)")
    trainable: str = setting("decoder+prompt", "what trains: decoder, decoder+prompt (encoder frozen, embeddings cached) or all",
                             choices=TRAINABLE_PARTS)
    epochs: int = setting(50, "training epochs")
    lr: float = setting(1e-4, "AdamW learning rate (constant)")
    weight_decay: float = setting(1e-4, "AdamW weight decay")
    prompts_per_image: int = setting(25, "objects prompted per image and step (micro-sam's 25)")
    iterations: int = setting(7, "correction rounds after the first prompt (SAM paper, micro-sam: 7)")
    positive_points: int = setting(1, "positive points of a point prompt")
    negative_points: int = setting(1, "negative points of a point prompt")
    point_probability: float = setting(0.5, "chance that the first round adds points to the box")
    focal_weight: float | None = setting(None, "weight of the focal loss (none: 20, the SAM paper's, from a checkpoint; "
                                               "0, Dice alone, from random weights)")
    dice_weight: float = setting(DICE_WEIGHT, "weight of the Dice loss")
    seed: int = setting(0, "random seed")
    max_minutes: float | None = setting(None, "stop after the epoch that passes this wall time of the whole run, resumes included")
    mask_prompt_probability: float = setting(0.0, "chance that the first round adds a detector-like mask prompt (trains box_mask)")
    deterministic: bool = setting(True, DETERMINISTIC_HELP, stamped_at_default=False)

    def problems(self) -> list[Problem]:
        """``(field, problem)`` for every bad value."""
        found: list[Problem] = []
        if self.variant not in SAM_VARIANTS:
            found.append(("variant", choice_problem(self.variant, tuple(SAM_VARIANTS), " (vit_tiny: small random encoder for demos)")))
        if self.trainable not in TRAINABLE_PARTS:
            found.append(("trainable", choice_problem(self.trainable, TRAINABLE_PARTS)))
        for name in ("epochs", "prompts_per_image"):
            if not (is_whole(getattr(self, name)) and getattr(self, name) >= 1):
                found.append((name, f"must be at least 1, got {getattr(self, name)}"))
        for name in ("iterations", "positive_points", "negative_points"):
            if not (is_whole(getattr(self, name)) and getattr(self, name) >= 0):
                found.append((name, f"must be zero or more, got {getattr(self, name)}"))
        if not (is_number(self.lr) and self.lr > 0):
            found.append(("lr", f"must be positive, got {self.lr}"))
        for name in ("weight_decay", "dice_weight") + (("focal_weight",) if self.focal_weight is not None else ()):
            if not (is_number(getattr(self, name)) and getattr(self, name) >= 0):
                found.append((name, f"must be zero or positive, got {getattr(self, name)}"))
        focal = self.focal_weight if self.focal_weight is not None else (
            0.0 if untrained_start(self.variant, self.checkpoint) else FOCAL_WEIGHT)
        if focal == 0 and self.dice_weight == 0:
            found.append(("dice_weight", "focal_weight and dice_weight are both 0: the masks would not be trained"))
        for name in ("point_probability", "mask_prompt_probability"):
            if not (is_number(getattr(self, name)) and 0.0 <= getattr(self, name) <= 1.0):
                found.append((name, f"must be between 0 and 1, got {getattr(self, name)}"))
        if self.max_minutes is not None and not (is_number(self.max_minutes) and self.max_minutes > 0):
            found.append(("max_minutes", f"must be positive (or none), got {self.max_minutes}"))
        return found

    def checked(self) -> "FinetuneSettings":
        """A copy with the checkpoint normalised (random weights: None) and ``focal_weight`` resolved; ``InstsegError`` otherwise."""
        found = self.problems()
        if found:
            raise InstsegError(problem_text(found))
        untrained = untrained_start(self.variant, self.checkpoint)
        focal = self.focal_weight if self.focal_weight is not None else (0.0 if untrained else FOCAL_WEIGHT)
        return replace(self, checkpoint=None if untrained else normalize_checkpoint(self.checkpoint), focal_weight=focal)

    def check(self) -> None:
        """``checked()`` in place (the trainer's settings object keeps its resolved values)."""
        resolved = self.checked()
        self.checkpoint, self.focal_weight = resolved.checkpoint, resolved.focal_weight

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FINETUNE_RESUME_MUST_MATCH = tuple(name for name in field_names(FinetuneSettings)
                                   if name not in ("epochs", "max_minutes", "deterministic"))


def starts_untrained(checkpoint: str | None) -> bool:
    """True when a checked ``FinetuneSettings.checkpoint`` means random weights (None, or the text 'none')."""
    return normalize_checkpoint(checkpoint) is None

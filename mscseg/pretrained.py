"""Every pretrained file a run needs, found (or downloaded) and header-checked before any step runs.

``missing_pretrained(settings, steps)`` lists every file that is neither in its cache nor
downloadable now, so one message names them all; ``check_pretrained`` raises that
message, or the first corrupt file, as a ``RunError``. Online, the ImageNet and COCO
files are downloaded into the Keras and torch hub caches (with progress bars); SAM
checkpoints are never downloaded (2.4 GB for ViT-H): they are placed by hand.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection

from data.errors import MscsegError
from torch_instseg.settings import build_sam_checkpoint, untrained_start

from .config import Settings
from .errors import RunError


@dataclass(frozen=True)
class Pretrained:
    """One pretrained file: what it is, where it belongs, where it comes from, how to run without it."""

    what: str
    path: Path
    source: str
    without: str
    fetch: Callable[[], Path | None]
    check: Callable[[Path], Path]


def needed(settings: Settings, steps: Collection[str] | None = None) -> list[Pretrained]:
    """The pretrained files of the enabled studies (of the steps named in ``steps`` when given)."""
    from keras_semseg import weights as keras_weights
    from keras_semseg.registry import get_entry
    from torch_instseg import weights as torch_weights

    runs = (lambda step: True) if steps is None else (lambda step: step in steps)
    semantic, instance = settings.semantic, settings.instance
    files: list[Pretrained] = []
    if semantic.enabled and semantic.encoder_weights == "imagenet":
        training = [model for model in semantic.models if runs(f"semantic_train_{model}")]
        for encoder in dict.fromkeys(get_entry(model).encoder for model in training):
            files.append(Pretrained(
                f"ImageNet weights of the {encoder} encoder", keras_weights.cached_weights(encoder),
                keras_weights.application_file(encoder)[1], "semantic.encoder_weights: none",
                lambda encoder=encoder: keras_weights.fetch_weights(encoder), keras_weights.check_weights_file,
            ))
    if instance.enabled and instance.weights == "coco" and runs("instance_train"):
        files.append(Pretrained(
            "COCO weights of Mask R-CNN", torch_weights.coco_weights_path(), torch_weights.COCO_WEIGHTS_URL,
            "instance.weights: none", torch_weights.fetch_coco_weights, torch_weights.check_checkpoint_file,
        ))
    sam = instance.sam
    if instance.enabled and not untrained_start(sam.variant, sam.checkpoint) and runs("instance_sam"):
        path = torch_weights.sam_checkpoint_path(sam.variant, build_sam_checkpoint(sam.checkpoint))
        name = torch_weights.SAM_CHECKPOINT_FILES.get(sam.variant, path.name)
        files.append(Pretrained(
            f"SAM {sam.variant} checkpoint", path, torch_weights.SAM_RELEASE_URL + name, "instance.sam.checkpoint: none",
            lambda path=path: path if path.is_file() else None, torch_weights.check_checkpoint_file,
        ))
    finetune = instance.sam_finetune
    if (instance.enabled and finetune.enabled and not untrained_start(finetune.variant, finetune.checkpoint)
            and runs("instance_sam_finetune")):
        path = torch_weights.sam_checkpoint_path(finetune.variant, build_sam_checkpoint(finetune.checkpoint))
        name = torch_weights.SAM_CHECKPOINT_FILES.get(finetune.variant, path.name)
        files.append(Pretrained(
            f"SAM {finetune.variant} checkpoint to fine-tune", path, torch_weights.SAM_RELEASE_URL + name,
            "instance.sam_finetune.checkpoint: none",
            lambda path=path: path if path.is_file() else None, torch_weights.check_checkpoint_file,
        ))
    unique: dict[Path, Pretrained] = {}
    for item in files:
        unique.setdefault(item.path, item)
    return list(unique.values())


def missing_pretrained(settings: Settings, steps: Collection[str] | None = None) -> list[Pretrained]:
    """The needed files that are not there and cannot be downloaded now (all of them, not the first)."""
    return [item for item in needed(settings, steps) if item.fetch() is None]


def missing_message(missing: list[Pretrained]) -> str:
    """One line naming every missing file, where to put it, where it comes from, and how to run without it."""
    listed = "; ".join(f"{item.what}: put {item.path.name} (from {item.source}) in {item.path.parent}/" for item in missing)
    without = ", ".join(f"'{key}'" for key in dict.fromkeys(item.without for item in missing))
    return f"{len(missing)} pretrained file(s) missing and not downloadable now (offline?): {listed}; or run without them: {without} in the config"


def check_pretrained(settings: Settings, steps: Collection[str] | None = None) -> None:
    """``RunError`` listing every missing pretrained file, or naming the first corrupt one."""
    files = needed(settings, steps)
    missing = [item for item in files if item.fetch() is None]
    if missing:
        raise RunError(missing_message(missing))
    for item in files:
        try:
            item.check(item.path)
        except MscsegError as error:
            raise RunError(f"{error.problem} (or set '{item.without}' in the config)", error.path or item.path) from None

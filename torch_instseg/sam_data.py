"""SAM fine-tuning data: images and instances on SAM's grid, the trainable parts, cached image embeddings.

torch and segment-anything are imported inside functions only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data.errors import DatasetError
from data.outputs import replace_atomically

from .errors import InstsegError
from .names import TRAINABLE_PARTS
from .sam_prompts import LOWRES_STRIDE
from .settings import FinetuneSettings


@dataclass
class TrainingImage:
    """One image ready for SAM: instances on the low-res grid and boxes in the input frame.

    boxes: N x 4 xyxy in SAM input pixels; targets: N x g x g bool (g = input side / 4);
    pixels: the resized uint8 image 3 x h x w (kept only when the encoder is trained);
    source: the file the image came from.
    """

    name: str
    source: str
    input_size: tuple[int, int]
    boxes: np.ndarray
    targets: np.ndarray
    pixels: Any = None


def instance_masks(labels: np.ndarray) -> np.ndarray:
    """N x H x W bool masks of an H x W label image, instances in increasing label order."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    return labels[None] == ids[:, None, None]


def prepare_image(sample, image_size: int, keep_pixels: bool = False) -> TrainingImage:
    """Resize a sample to SAM's input frame (longest side ``image_size``) and its instances to the low-res grid."""
    import torch
    import torch.nn.functional as F
    from segment_anything.utils.transforms import ResizeLongestSide

    from .maskrcnn_data import masks_to_boxes

    height, width = sample.labels.shape
    new_h, new_w = ResizeLongestSide.get_preprocess_shape(height, width, image_size)
    grid = image_size // LOWRES_STRIDE
    masks = instance_masks(sample.labels)
    scale = image_size / max(height, width)
    boxes = masks_to_boxes(masks).astype(np.float32) * scale if len(masks) else np.zeros((0, 4), np.float32)
    targets = np.zeros((len(masks), grid, grid), bool)
    if len(masks):
        cells = (max(1, round(new_h / LOWRES_STRIDE)), max(1, round(new_w / LOWRES_STRIDE)))
        averaged = F.interpolate(torch.from_numpy(masks[:, None].astype(np.float32)), size=cells, mode="area")[:, 0]
        targets[:, :cells[0], :cells[1]] = averaged.numpy() >= 0.5
    pixels = None
    if keep_pixels:
        resized = ResizeLongestSide(image_size).apply_image(np.round(np.clip(sample.image, 0, 1) * 255).astype(np.uint8))
        pixels = torch.as_tensor(resized).permute(2, 0, 1).contiguous()
    keep = targets.any(axis=(1, 2))
    return TrainingImage(sample.name, sample.source, (new_h, new_w), boxes[keep], targets[keep], pixels)


def check_training_data(dataset, names: Sequence[str], image_size: int, role: str) -> None:
    """Refuse an image smaller than SAM's mask prompt grid or a split part without instances."""
    prompt_size = image_size // LOWRES_STRIDE
    n_instances = 0
    for sample in dataset.subset(list(names)):
        height, width = sample.labels.shape
        if min(height, width) < prompt_size:
            raise DatasetError(f"image is {width}x{height}, smaller than SAM's mask prompt size {prompt_size}x{prompt_size} "
                               f"for input {image_size}; use larger images or a smaller SAM input", sample.source)
        n_instances += int((np.unique(sample.labels) > 0).sum())
    if n_instances == 0:
        raise DatasetError(f"the {role} images ({len(names)}) hold no instances; SAM fine-tuning needs instance masks", dataset.root)


# ---------------------------------------------------------------- model, parts, embeddings

def set_trainable(sam, trainable: str) -> list:
    """Freeze SAM except the parts named by ``trainable``; return the parameters to optimise."""
    if trainable not in TRAINABLE_PARTS:
        raise InstsegError(f"unknown trainable part '{trainable}'; valid: {', '.join(TRAINABLE_PARTS)}")
    parts = {"decoder": [sam.mask_decoder], "decoder+prompt": [sam.mask_decoder, sam.prompt_encoder], "all": [sam]}[trainable]
    for parameter in sam.parameters():
        parameter.requires_grad_(False)
    chosen = []
    for module in parts:
        for parameter in module.parameters():
            parameter.requires_grad_(True)
            chosen.append(parameter)
    return list({id(p): p for p in chosen}.values())


def compute_embedding(sam, pixels):
    """SAM image embedding (1 x 256 x h/16 x w/16) of a 3 x h x w uint8 tensor in the input frame."""
    return sam.image_encoder(sam.preprocess(pixels[None].to(sam.device).float()))


def embed_all(sam, dataset, names: Sequence[str], quiet: bool = True) -> dict[str, Any]:
    """{name: 1 x 256 x h x w embedding} of each image, computed once without gradients."""
    import torch
    from tqdm.auto import tqdm

    from .sam import embed_image

    embeddings = {}
    was_training = sam.training
    sam.eval()
    with torch.no_grad():
        for sample in tqdm(dataset.subset(list(names)), total=len(names), desc="embed", disable=quiet):
            embeddings[sample.name] = embed_image(sam, sample.image).features.cpu()
    sam.train(was_training)
    return embeddings


def embedding_key(settings: FinetuneSettings, image_size: int, names: Sequence[str]) -> dict[str, Any]:
    """What a cached embedding depends on (the frozen encoder's source and the images)."""
    return {"variant": settings.variant, "checkpoint": settings.checkpoint, "seed": settings.seed,
            "image_size": image_size, "names": sorted(names)}


def load_or_embed(sam, dataset, names: Sequence[str], cache_path: Path | None, key: dict, quiet: bool = True,
                  write: bool = True) -> dict[str, Any]:
    """Embeddings from ``cache_path`` when its key matches, else computed (and saved there when a path is given and ``write``)."""
    import torch

    if cache_path is not None and cache_path.is_file():
        try:
            cached = torch.load(str(cache_path), map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a broken cache is recomputed
            cached = None
        if isinstance(cached, dict) and cached.get("key") == key:
            return cached["embeddings"]
    embeddings = embed_all(sam, dataset, names, quiet)
    if cache_path is not None and write:
        _atomic_torch_save({"key": key, "embeddings": embeddings}, cache_path)
    return embeddings


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    replace_atomically(path, lambda partial: torch.save(obj, str(partial)))

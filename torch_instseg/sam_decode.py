"""SAM on one image: its image encoder run once (``embed_image``) and its mask decoder on box, point and
mask prompts (``decode_prompts``, ``sam_predict``); used by ``torch_instseg.sam`` and SAM fine-tuning."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InstsegError
from .names import PROMPT_MODES

MASK_PROMPT_EPS = 1e-3


def _import_sam():
    try:
        import torch
        import segment_anything  # noqa: F401
    except ImportError as error:
        raise InstsegError(f"SAM needs torch and segment-anything ({error}); install them with: pip install -e .[torch]") from None
    return torch


@dataclass
class ImageEmbedding:
    """SAM's embedding of one image: features 1 x 256 x h x w, the resized input size and the original size (H, W)."""

    features: Any
    input_size: tuple[int, int]
    original_size: tuple[int, int]


def embed_image(sam, image: np.ndarray) -> ImageEmbedding:
    """Run SAM's image encoder once on an H x W x 3 float32 image in [0, 1]."""
    torch = _import_sam()
    from segment_anything.utils.transforms import ResizeLongestSide

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InstsegError(f"expected an H x W x 3 image, got shape {image.shape}")
    pixels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    resized = transform.apply_image(pixels)
    device = sam.device
    tensor = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()[None]
    with torch.no_grad():
        features = sam.image_encoder(sam.preprocess(tensor))
    return ImageEmbedding(features, tuple(tensor.shape[-2:]), tuple(image.shape[:2]))


def cached_embedding(sam, features, original_size: tuple[int, int]) -> ImageEmbedding:
    """An ``ImageEmbedding`` from features computed earlier by this model's encoder for an image of ``original_size``."""
    from segment_anything.utils.transforms import ResizeLongestSide

    input_size = ResizeLongestSide.get_preprocess_shape(original_size[0], original_size[1], sam.image_encoder.img_size)
    return ImageEmbedding(features.to(sam.device), tuple(input_size), tuple(original_size))


def interior_points(masks: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """N x 2 (x, y) pixel of each N x H x W mask farthest from its edge; the box centre for an empty mask."""
    from scipy import ndimage

    points = np.zeros((len(boxes), 2), np.float32)
    for k, box in enumerate(boxes):
        mask = np.asarray(masks[k], bool)
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        if rows.size == 0:
            points[k] = ((box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0)
            continue
        crop = np.pad(mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], 1)
        distance = ndimage.distance_transform_edt(crop)
        y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
        points[k] = (cols[0] + x - 1, rows[0] + y - 1)
    return points


def probs_to_logits(probs: np.ndarray, eps: float = MASK_PROMPT_EPS) -> np.ndarray:
    """log(p / (1 - p)) of probabilities clipped to [eps, 1 - eps], float32 (SAM's mask-prompt logits)."""
    clipped = np.clip(np.asarray(probs, np.float32), eps, 1.0 - eps)
    return np.log(clipped / (1.0 - clipped)).astype(np.float32)


def mask_prompts(probs: np.ndarray, original_size: tuple[int, int], prompt_size: int) -> np.ndarray:
    """N x 1 x S x S logits (SAM's mask_input) from N x h x w mask probabilities of the image (any h x w of its aspect)."""
    import torch
    import torch.nn.functional as F
    from segment_anything.utils.transforms import ResizeLongestSide

    probs = np.asarray(probs, np.float32)
    target = ResizeLongestSide.get_preprocess_shape(original_size[0], original_size[1], prompt_size)
    resized = F.interpolate(torch.from_numpy(probs)[:, None], size=target, mode="bilinear", align_corners=False).numpy()
    padded = np.zeros((len(probs), 1, prompt_size, prompt_size), np.float32)
    padded[:, :, : target[0], : target[1]] = resized
    return probs_to_logits(padded)


def decode_prompts(
    sam,
    embedding: ImageEmbedding,
    boxes: np.ndarray,
    mode: str = "box",
    maskrcnn_masks: np.ndarray | None = None,
    maskrcnn_mask_probs: np.ndarray | None = None,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """SAM masks for N boxes (xyxy pixels) of an embedded image, ``batch_size`` prompts per decoder call.

    Boxes are clipped to the image; a box empty after clipping (or not finite) is skipped:
    its mask is all False and its IoU NaN. Returns (N x H x W bool, N float32 predicted IoU
    of the kept mask, the best of SAM's three).
    """
    torch = _import_sam()
    from segment_anything.utils.transforms import ResizeLongestSide

    if mode not in PROMPT_MODES:
        raise InstsegError(f"unknown prompt mode '{mode}'; valid modes: {', '.join(PROMPT_MODES)}")
    if batch_size < 1:
        raise InstsegError(f"batch size must be at least 1, got {batch_size}")
    height, width = embedding.original_size
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    count = len(boxes)
    if mode == "box_point" and maskrcnn_masks is None:
        raise InstsegError("prompt mode 'box_point' needs the Mask R-CNN masks")
    if mode == "box_mask" and maskrcnn_mask_probs is None and maskrcnn_masks is None:
        raise InstsegError("prompt mode 'box_mask' needs the Mask R-CNN mask probabilities (or masks)")
    for name, array in (("masks", maskrcnn_masks), ("mask probabilities", maskrcnn_mask_probs)):
        if array is not None and len(array) != count:
            raise InstsegError(f"{count} boxes but {len(array)} Mask R-CNN {name}")
    clipped = boxes.copy()
    clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, width)
    clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, height)
    valid = np.isfinite(boxes).all(axis=1) & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    masks = np.zeros((count, height, width), bool)
    ious = np.full(count, np.nan, np.float32)
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    prompt_size = int(sam.prompt_encoder.mask_input_size[0])
    device = sam.device
    indices = np.flatnonzero(valid)
    image_pe = sam.prompt_encoder.get_dense_pe()
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        box_tensor = transform.apply_boxes_torch(torch.as_tensor(clipped[chunk], dtype=torch.float32), embedding.original_size).to(device)
        points = None
        mask_input = None
        if mode == "box_point":
            coords = interior_points(maskrcnn_masks[chunk], clipped[chunk])
            coords_tensor = transform.apply_coords_torch(torch.as_tensor(coords[:, None, :]), embedding.original_size).to(device)
            points = (coords_tensor, torch.ones((len(chunk), 1), dtype=torch.int64, device=device))
        elif mode == "box_mask":
            source = maskrcnn_mask_probs[chunk] if maskrcnn_mask_probs is not None else np.asarray(maskrcnn_masks[chunk], np.float32)
            mask_input = torch.as_tensor(mask_prompts(source, embedding.original_size, prompt_size), device=device)
        with torch.no_grad():
            sparse, dense = sam.prompt_encoder(points=points, boxes=box_tensor, masks=mask_input)
            low_res, iou = sam.mask_decoder(
                image_embeddings=embedding.features, image_pe=image_pe, sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense, multimask_output=True,
            )
            best = iou.argmax(dim=1)
            rows = torch.arange(len(chunk), device=device)
            best_low_res = low_res[rows, best][:, None]
            for sub in range(0, len(chunk), 16):
                upscaled = sam.postprocess_masks(best_low_res[sub:sub + 16], embedding.input_size, embedding.original_size)
                masks[chunk[sub:sub + 16]] = (upscaled[:, 0] > sam.mask_threshold).cpu().numpy()
            ious[chunk] = iou[rows, best].float().cpu().numpy()
    return masks, ious


def sam_predict(
    sam,
    image: np.ndarray,
    boxes: np.ndarray,
    mode: str = "box",
    maskrcnn_masks: np.ndarray | None = None,
    maskrcnn_mask_probs: np.ndarray | None = None,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """SAM masks for the N x 4 xyxy boxes of one H x W x 3 float32 image.

    maskrcnn_masks: N x H x W bool (needed by ``box_point``); maskrcnn_mask_probs: N x h x w
    float32 in [0, 1] with the image's aspect ratio, any resolution (``box_mask``; the masks
    are used when absent). Returns (N x H x W bool masks, N predicted IoUs; NaN for skipped boxes).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        image = np.asarray(image)
        return np.zeros((0,) + image.shape[:2], bool), np.zeros(0, np.float32)
    embedding = embed_image(sam, image)
    return decode_prompts(sam, embedding, boxes, mode, maskrcnn_masks, maskrcnn_mask_probs, batch_size)

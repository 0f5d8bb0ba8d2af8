"""SAM prompted by Mask R-CNN: variants registry, prompt modes, batched decoder.

The paper's setting: SAM ViT-H without fine-tuning, one box prompt per Mask R-CNN box,
``multimask_output=True``, the mask with the highest predicted IoU kept. Its suggested
next steps are prompt modes compared in the same run:

- ``box``: the box alone (the paper);
- ``box_point``: the box and one foreground point inside the Mask R-CNN mask, the pixel
  farthest from the mask's edge (maximum of the distance transform; the box centre when
  the mask is empty);
- ``box_mask``: the box and the Mask R-CNN mask as SAM's low-res mask prompt: the mask
  probabilities resized so the longest side is the prompt size (256 for the released
  models), padded at the bottom/right like SAM's input, as logits log(p / (1 - p)) with
  p clipped to [1e-3, 1 - 1e-3] (micro-sam's convention for binary masks).

Each image is embedded once; the boxes go through the prompt encoder and mask decoder in
batches. SAM masks have no confidence of their own: the score that ranks them for AP is
a setting (``maskrcnn``: the Mask R-CNN box score, the paper's implied choice; ``sam_iou``:
SAM's predicted IoU), written into every result and into ``<method>.meta.json``.
torch and segment-anything are imported inside functions only.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from data.cli import add_dataset_arguments, make_parser, open_dataset, run_cli
from data.outputs import check_can_write

from .errors import InstsegError
from .names import GT_PROMPT_MODES, PROMPT_MODES, PROMPT_SOURCES, SCORE_SOURCES, sam_method
from .weights import SAM_CHECKPOINT_FILES, resolve_sam_checkpoint

MASK_PROMPT_EPS = 1e-3
UNTRAINED_WARNING = "SAM has RANDOM weights (--sam-checkpoint none): its masks are untrained and mean nothing"
RANDOM_ENCODER_WARNING = "SAM was fine-tuned from RANDOM weights with its image encoder frozen: the decoder learned on random features"


@dataclass(frozen=True)
class SamVariant:
    """Image encoder shape of one SAM variant (prompt encoder and mask decoder are shared)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    window_size: int = 14
    checkpoint_file: str | None = None


SAM_VARIANTS: dict[str, SamVariant] = {
    "vit_h": SamVariant(1280, 32, 16, (7, 15, 23, 31), checkpoint_file=SAM_CHECKPOINT_FILES["vit_h"]),
    "vit_l": SamVariant(1024, 24, 16, (5, 11, 17, 23), checkpoint_file=SAM_CHECKPOINT_FILES["vit_l"]),
    "vit_b": SamVariant(768, 12, 12, (2, 5, 8, 11), checkpoint_file=SAM_CHECKPOINT_FILES["vit_b"]),
    # a small encoder for tests and demos on CPU; no released checkpoint (random weights only)
    "vit_tiny": SamVariant(64, 2, 2, (1,), image_size=256, window_size=8),
}


def _import_sam():
    try:
        import torch
        import segment_anything  # noqa: F401
    except ImportError as error:
        raise InstsegError(f"SAM needs torch and segment-anything ({error}); install them with: pip install -e .[torch]") from None
    return torch


def _variant(name: str) -> SamVariant:
    if name not in SAM_VARIANTS:
        raise InstsegError(f"unknown SAM variant '{name}'; valid variants: {', '.join(SAM_VARIANTS)}")
    return SAM_VARIANTS[name]


def _build_network(spec: SamVariant):
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    prompt_dim, patch = 256, 16
    embedding_size = spec.image_size // patch
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=spec.depth, embed_dim=spec.embed_dim, img_size=spec.image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=spec.num_heads, patch_size=patch, qkv_bias=True,
            use_rel_pos=True, global_attn_indexes=list(spec.global_attn_indexes), window_size=spec.window_size, out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim, image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(spec.image_size, spec.image_size), mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=2048, num_heads=8),
            transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def _variant_of_state(state: dict) -> str:
    """The registered variant whose encoder shape a checkpoint has, or a description of it."""
    weight = state.get("image_encoder.patch_embed.proj.weight")
    if weight is None:
        return "not a SAM checkpoint"
    embed_dim = int(weight.shape[0])
    depth = len({key.split(".")[2] for key in state if key.startswith("image_encoder.blocks.")})
    position = state.get("image_encoder.pos_embed")
    image_size = int(position.shape[1]) * 16 if position is not None else None
    for name, spec in SAM_VARIANTS.items():
        if (spec.embed_dim, spec.depth) == (embed_dim, depth) and image_size in (None, spec.image_size):
            return name
    return f"an encoder of width {embed_dim} and depth {depth}"


def build_sam(variant: str = "vit_h", checkpoint: str | Path | None = None, device: str | None = None):
    """A SAM model in eval mode on ``device``.

    checkpoint: None = the variant's released file in the default folder (``weights.sam_checkpoint_dir()``);
    a path (file or folder); or "none" for random weights (the model is marked untrained:
    ``sam.mscseg_info["untrained"]``). A checkpoint of another variant raises ``InstsegError``.
    """
    torch = _import_sam()
    from .maskrcnn import resolve_device

    spec = _variant(variant)
    if spec.checkpoint_file is None and checkpoint is None:
        checkpoint = "none"
    path = resolve_sam_checkpoint(variant, checkpoint)
    state = None
    if path is not None:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - unreadable file is bad input
            raise InstsegError(f"{path}: cannot read SAM checkpoint ({type(error).__name__}: {error})") from None
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        if not isinstance(state, dict):
            raise InstsegError(f"{path}: not a SAM state dict")
        found = _variant_of_state(state)
        if found in SAM_VARIANTS and found != variant:
            raise InstsegError(f"{path}: checkpoint is SAM {found}, not {variant}; pass --variant {found}")
        if found not in SAM_VARIANTS:
            raise InstsegError(f"{path}: checkpoint does not fit SAM {variant} ({found})")
    sam = _build_network(spec)
    if state is not None:
        try:
            sam.load_state_dict(state)
        except RuntimeError as error:
            raise InstsegError(f"{path}: checkpoint does not fit SAM {variant} ({str(error).splitlines()[0]})") from None
    sam.eval()
    sam.mscseg_info = {"variant": variant, "checkpoint": str(path) if path is not None else "none", "untrained": path is None,
                       **finetune_provenance(path)}
    return sam.to(resolve_device(device))


def finetune_provenance(checkpoint: Path | None) -> dict[str, Any]:
    """For a checkpoint written by ``instseg-sam-train`` (its run.json beside it): fine_tuned, the start, random_encoder."""
    if checkpoint is None or not (checkpoint.parent / "run.json").is_file():
        return {}
    try:
        record = json.loads((checkpoint.parent / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or record.get("trainer") != "sam_finetune":
        return {}
    start = (record.get("settings") or {}).get("checkpoint")
    random_encoder = str(start).strip().lower() == "none" and (record.get("settings") or {}).get("trainable") != "all"
    return {"fine_tuned": True, "start": start, "random_encoder": random_encoder}


# ---------------------------------------------------------------- prompts

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


# ---------------------------------------------------------------- run over a dataset

def _xywh_to_xyxy(bbox: Sequence[float]) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def _gt_as_detections(gt_obj: Mapping[str, Any]) -> list[dict]:
    """The ground-truth annotations (not crowd) as detections: their boxes and masks prompt SAM."""
    from . import coco

    truth = coco.index_ground_truth(gt_obj)
    detections = []
    for instance in truth.instances:
        if instance.iscrowd:
            continue
        image = truth.images[instance.image_id]
        rle = {"size": [image.height, image.width], "counts": coco.counts_to_string(instance.counts)}
        detections.append({"image_id": instance.image_id, "segmentation": rle, "bbox": coco.counts_to_bbox(instance.counts, image.height),
                           "score": 1.0})
    return detections


def _read_probs_sidecar(maskrcnn_json: Path) -> Any:
    from .maskrcnn import probs_sidecar_path

    path = probs_sidecar_path(maskrcnn_json)
    if not path.is_file():
        return None
    try:
        return np.load(path)
    except Exception:  # noqa: BLE001 - a broken sidecar only loses the probabilities
        return None


def run_sam(
    dataset,
    names: Sequence[str],
    maskrcnn_json: str | Path,
    gt: dict | str | Path,
    out_dir: str | Path,
    *,
    variant: str = "vit_h",
    checkpoint: str | Path | None = None,
    modes: Sequence[str] = PROMPT_MODES,
    score: str = "maskrcnn",
    device: str | None = None,
    overwrite: bool = False,
    batch_size: int = 64,
    quiet: bool = True,
    sam=None,
    prompts: str = "maskrcnn",
    method_prefix: str = "sam",
    embeddings: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Prompt SAM with every Mask R-CNN detection of ``names``; write ``sam_<mode>.json`` (+ ``.meta.json``) per mode.

    The image is embedded once and shared by all modes. Images without detections get no
    results. Returns {mode: results path}. ``sam`` reuses a model already built.
    prompts: ``maskrcnn`` (the detections in ``maskrcnn_json``) or ``gt`` (the ground-truth
    boxes, and the ground-truth masks for ``box_point``'s point; modes ``box`` and
    ``box_point``; masks ranked by SAM's predicted IoU): ``<prefix>_gt_<mode>.json``.
    method_prefix: ``sam`` (zero-shot) or ``sam_ft`` (fine-tuned). embeddings: {image name:
    1 x 256 x h x w features} already computed by this model's encoder (reused, not recomputed).
    """
    from . import coco

    modes = list(dict.fromkeys(modes))
    if prompts not in PROMPT_SOURCES:
        raise InstsegError(f"unknown prompt source '{prompts}'; valid: {', '.join(PROMPT_SOURCES)}")
    valid_modes = PROMPT_MODES if prompts == "maskrcnn" else GT_PROMPT_MODES
    for mode in modes:
        if mode not in valid_modes:
            raise InstsegError(f"unknown prompt mode '{mode}' for {prompts} prompts; valid modes: {', '.join(valid_modes)}")
    if not modes:
        raise InstsegError("no prompt mode asked for")
    if score not in SCORE_SOURCES:
        raise InstsegError(f"unknown score source '{score}'; valid: {', '.join(SCORE_SOURCES)}")
    if prompts == "gt":
        score = "sam_iou"
    elif maskrcnn_json is None:
        raise InstsegError("Mask R-CNN prompts need the Mask R-CNN results (--maskrcnn)")
    out_dir = Path(out_dir)
    maskrcnn_json = Path(maskrcnn_json) if prompts == "maskrcnn" else None
    paths = {mode: out_dir / f"{sam_method(mode, method_prefix, prompts)}.json" for mode in modes}
    for path in paths.values():
        check_can_write(path, overwrite)
        check_can_write(coco.results_meta_path(path), overwrite)
    gt_obj = gt if isinstance(gt, dict) else coco.load_coco(gt)
    ids = coco.image_id_by_name(gt_obj)
    missing = [name for name in names if name not in ids]
    if missing:
        raise InstsegError(f"{len(missing)} image(s) of the split not in the ground truth: {', '.join(missing[:10])}",
                           None if isinstance(gt, dict) else gt)
    detections = coco.load_results(maskrcnn_json, gt_obj) if maskrcnn_json is not None else _gt_as_detections(gt_obj)
    by_image: dict[int, list[dict]] = {}
    for detection in detections:
        by_image.setdefault(int(detection["image_id"]), []).append(detection)
    samples = dataset.subset(list(names))
    sidecar = _read_probs_sidecar(maskrcnn_json) if "box_mask" in modes else None
    if sam is None:
        sam = build_sam(variant, checkpoint, device)
    info = dict(getattr(sam, "mscseg_info", {"variant": variant, "checkpoint": str(checkpoint), "untrained": False}))
    if info.get("untrained"):
        print(f"warning: {UNTRAINED_WARNING}", file=sys.stderr)
    if info.get("random_encoder"):
        print(f"warning: {RANDOM_ENCODER_WARNING}", file=sys.stderr)

    from tqdm.auto import tqdm

    started = time.time()
    results: dict[str, list[dict]] = {mode: [] for mode in modes}
    skipped: list[dict] = []
    mask_prompt_sources: set[str] = set()
    no_detections: list[str] = []
    empty_masks = dict.fromkeys(modes, 0)
    n_prompts = 0
    for sample in tqdm(samples, total=len(names), desc="sam", disable=quiet):
        image_id = ids[sample.name]
        image_detections = by_image.get(image_id, [])
        if not image_detections:
            no_detections.append(sample.name)
            continue
        boxes = np.array([_xywh_to_xyxy(d.get("bbox") or coco.rle_to_bbox(d["segmentation"])) for d in image_detections], np.float64)
        maskrcnn_scores = np.array([float(d["score"]) for d in image_detections])
        maskrcnn_masks = np.stack([coco.decode_rle(d["segmentation"]) for d in image_detections])
        probs = None
        if sidecar is not None and f"probs_{image_id}" in sidecar.files:
            stored_scores = sidecar[f"scores_{image_id}"]
            if len(stored_scores) == len(maskrcnn_scores) and np.allclose(stored_scores, maskrcnn_scores, atol=1e-6):
                probs = sidecar[f"probs_{image_id}"].astype(np.float32) / 255.0
        if embeddings is not None and sample.name in embeddings:
            embedding = cached_embedding(sam, embeddings[sample.name], sample.image.shape[:2])
        else:
            embedding = embed_image(sam, sample.image)
        n_prompts += len(boxes)
        for mode in modes:
            if mode == "box_mask":
                mask_prompt_sources.add("maskrcnn_probs" if probs is not None else "maskrcnn_binary_masks")
            masks, ious = decode_prompts(sam, embedding, boxes, mode, maskrcnn_masks, probs if mode == "box_mask" else None, batch_size)
            kept = np.isfinite(ious)
            empty_masks[mode] += int((~masks[kept].any(axis=(1, 2))).sum())
            if mode == modes[0]:
                for index in np.flatnonzero(~kept):
                    skipped.append({"image": sample.name, "detection": int(index), "box_xyxy": boxes[index].tolist(), "reason": "empty after clipping to the image"})
            ranking = maskrcnn_scores if score == "maskrcnn" else ious.astype(np.float64)
            extra = {"sam_iou": ious[kept].astype(np.float64)}
            if prompts == "maskrcnn":
                extra["maskrcnn_score"] = maskrcnn_scores[kept]
            image_results = coco.instances_to_results(image_id, masks[kept], ranking[kept], None, extra)
            for result in image_results:
                result["score_source"] = score
                if info.get("untrained"):
                    result["sam_untrained"] = True
            results[mode].extend(image_results)
    elapsed = time.time() - started
    from .maskrcnn import _versions

    for mode in modes:
        meta = {
            "method": paths[mode].stem, "prompt_mode": mode, "prompts": prompts, "score_source": score,
            "score_source_meaning": "Mask R-CNN box score" if score == "maskrcnn" else "SAM predicted IoU of the kept mask",
            "variant": info.get("variant", variant), "checkpoint": info.get("checkpoint"), "untrained": bool(info.get("untrained")),
            "fine_tuned": bool(info.get("fine_tuned")),
            "multimask_output": True, "kept_mask": "highest predicted IoU of the 3", "batch_size": batch_size,
            "maskrcnn_results": str(maskrcnn_json) if maskrcnn_json is not None else None, "n_images": len(names), "n_prompts": n_prompts,
            "n_results": len(results[mode]), "n_empty_masks": empty_masks[mode],
            "images_without_detections": no_detections, "skipped_boxes": skipped,
            "time_s_all_modes": round(elapsed, 3), "versions": _versions(),
        }
        if info.get("untrained"):
            meta["warning"] = UNTRAINED_WARNING
        elif info.get("random_encoder"):
            meta["warning"] = RANDOM_ENCODER_WARNING
        meta["random_encoder"] = bool(info.get("untrained") or info.get("random_encoder"))
        if mode == "box_mask":
            meta["mask_prompt"] = sorted(mask_prompt_sources) or ["maskrcnn_probs"]
        coco.write_results(paths[mode], results[mode], meta)
    return paths


# ---------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("instseg-sam", description="Prompt SAM with the Mask R-CNN detections (box, box+point, box+mask).")
    add_dataset_arguments(parser)
    parser.add_argument("--split", required=True, help="split JSON; its validation images are used")
    parser.add_argument("--prompts", default="maskrcnn", choices=PROMPT_SOURCES,
                        help="maskrcnn: the Mask R-CNN detections (the paper); gt: the ground-truth boxes, to judge SAM's masks "
                             "apart from the detector's misses (writes sam_gt_<mode>.json)")
    parser.add_argument("--maskrcnn", default=None, help="Mask R-CNN COCO results (maskrcnn.json); needed for --prompts maskrcnn")
    parser.add_argument("--gt", default=None, help="ground-truth COCO JSON (default: gt.json beside --maskrcnn)")
    parser.add_argument("--out", default=None, help="output folder (default: the folder of --maskrcnn, else of --gt)")
    parser.add_argument("--variant", default="vit_h", choices=sorted(SAM_VARIANTS))
    parser.add_argument("--sam-checkpoint", "--checkpoint", dest="sam_checkpoint", default=None,
                        help="checkpoint file or folder (a released one or one from instseg-sam-train); 'none' = random weights (untrained)")
    parser.add_argument("--method-prefix", default="sam", choices=("sam", "sam_ft"),
                        help="output name prefix: sam (zero-shot) or sam_ft (a fine-tuned checkpoint)")
    parser.add_argument("--modes", default=None, help=f"comma-separated prompt modes ({', '.join(PROMPT_MODES)}; "
                                                      f"gt prompts: {', '.join(GT_PROMPT_MODES)}); default: all of them")
    parser.add_argument("--score", default="maskrcnn", choices=SCORE_SOURCES, help="score that ranks SAM masks")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per decoder call")
    parser.add_argument("--device", default=None)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    return parser


def _main(argv: Sequence[str] | None = None) -> int:
    from data.split import read_split

    args = build_parser().parse_args(argv)
    dataset = open_dataset(args)
    split = read_split(args.split, dataset.names)
    if args.prompts == "maskrcnn" and not args.maskrcnn:
        raise InstsegError("--prompts maskrcnn needs --maskrcnn (the Mask R-CNN results); or use --prompts gt with --gt")
    maskrcnn_json = Path(args.maskrcnn) if args.maskrcnn else None
    if args.gt:
        gt_path = Path(args.gt)
    elif maskrcnn_json is not None:
        gt_path = maskrcnn_json.with_name("gt.json")
    else:
        raise InstsegError("--prompts gt needs --gt (the ground-truth COCO JSON)")
    if not gt_path.is_file():
        raise InstsegError("ground truth not found; pass --gt", gt_path)
    default_modes = PROMPT_MODES if args.prompts == "maskrcnn" else GT_PROMPT_MODES
    modes = [m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else list(default_modes)
    out_dir = Path(args.out) if args.out else (maskrcnn_json.parent if maskrcnn_json is not None else gt_path.parent)
    paths = run_sam(
        dataset, split["val"], maskrcnn_json if args.prompts == "maskrcnn" else None, gt_path, out_dir,
        variant=args.variant, checkpoint=args.sam_checkpoint, modes=modes,
        score=args.score, device=args.device, overwrite=args.overwrite, batch_size=args.batch_size, quiet=args.quiet,
        prompts=args.prompts, method_prefix=args.method_prefix,
    )
    if not args.quiet:
        for mode, path in paths.items():
            print(f"{mode}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

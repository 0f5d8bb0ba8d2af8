"""Mask R-CNN inference: a trained run folder's model, instances of images at their own size, COCO results.

torch is imported inside functions only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data.errors import MscsegError
from data.outputs import check_can_write
from data.run_record import RUN_JSON, read_record

from .errors import InstsegError
from .maskrcnn_model import build_maskrcnn, import_torch, read_state_dict, resolve_device
from .settings import DEFAULT_MAX_SIZE, DEFAULT_MIN_SIZE


def load_model(run_dir: str | Path, which: str = "best", device: str | None = None):
    """The trained model of a run folder (``best.pt`` or ``last.pt``), in eval mode on ``device``.

    The run's image size is kept on the model as ``model.mscseg_image_size`` (None = native).
    """
    torch, _ = import_torch()
    run_dir = Path(run_dir)
    if which not in ("best", "last"):
        raise InstsegError(f"which must be 'best' or 'last', got '{which}'")
    if not (run_dir / RUN_JSON).is_file():
        raise InstsegError("not a Mask R-CNN run folder (run.json missing); train one with instseg-train", run_dir / RUN_JSON)
    try:
        settings = read_record(run_dir).settings
    except MscsegError as error:
        raise InstsegError(error.problem, error.path) from None
    weights_file = run_dir / f"{which}.pt"
    if not weights_file.is_file():
        raise InstsegError(f"{weights_file}: weights file missing from the run folder")
    model = build_maskrcnn(
        "none", detections_per_image=settings.get("detections_per_image", 300),
        min_size=settings.get("min_size", DEFAULT_MIN_SIZE), max_size=settings.get("max_size", DEFAULT_MAX_SIZE),
        **settings.get("model_options", {}),
    )
    model.load_state_dict(read_state_dict(weights_file))
    model.mscseg_image_size = settings.get("image_size")
    model.eval()
    return model.to(resolve_device(device))


def predict_instances(
    model, images: Sequence[np.ndarray], score_threshold: float = 0.05, device: str | None = None, image_size: int | None = None
) -> list[dict[str, np.ndarray]]:
    """Instances of each H x W x 3 float32 image, at that image's size.

    Returns per image: masks N x H x W bool (mask probability > 0.5), mask_probs N x H x W
    float32, boxes N x 4 float32 xyxy (pixels), scores N float32 (descending). image_size
    (default: the run's, ``model.mscseg_image_size``) resizes each image to that square
    first, as in training, and the outputs back.
    """
    torch, _ = import_torch()
    import torch.nn.functional as F

    torch_device = resolve_device(device) if device is not None else next(model.parameters()).device
    model.to(torch_device).eval()
    size = image_size if image_size is not None else getattr(model, "mscseg_image_size", None)
    outputs = []
    for image in images:
        image = np.asarray(image, np.float32)
        if image.ndim != 3 or image.shape[2] != 3:
            raise InstsegError(f"expected an H x W x 3 image, got shape {image.shape}")
        height, width = image.shape[:2]
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(torch_device)
        if size:
            tensor = F.interpolate(tensor[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        with torch.no_grad():
            result = model([tensor])[0]
        keep = result["scores"] >= score_threshold
        scores = result["scores"][keep]
        boxes = result["boxes"][keep]
        probs = result["masks"][keep][:, 0]
        if size and len(scores):
            probs = F.interpolate(probs[None], size=(height, width), mode="bilinear", align_corners=False)[0]
            boxes = boxes * torch.tensor([width / size, height / size, width / size, height / size], device=boxes.device)
        if size and not len(scores):
            probs = torch.zeros((0, height, width))
        probs = probs.float().cpu().numpy()
        outputs.append({
            "masks": probs > 0.5, "mask_probs": probs.astype(np.float32, copy=False),
            "boxes": boxes.float().cpu().numpy().reshape(-1, 4), "scores": scores.float().cpu().numpy(),
        })
    return outputs


def lowres_probs(mask_probs: np.ndarray, longest_side: int = 256) -> np.ndarray:
    """N x h x w uint8 (probability x 255) with the longest side ``longest_side`` (SAM's low-res mask frame)."""
    import torch
    import torch.nn.functional as F

    count, height, width = mask_probs.shape
    scale = longest_side / max(height, width)
    size = (max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5)))
    if count == 0:
        return np.zeros((0,) + size, np.uint8)
    resized = F.interpolate(torch.from_numpy(np.asarray(mask_probs, np.float32))[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return np.clip(np.round(resized.numpy() * 255.0), 0, 255).astype(np.uint8)


def probs_sidecar_path(results_json: str | Path) -> Path:
    """``maskrcnn.json`` -> ``maskrcnn.probs.npz`` (low-res mask probabilities used by SAM's mask prompt)."""
    results_json = Path(results_json)
    return results_json.with_name(results_json.stem + ".probs.npz")


@dataclass
class CocoPredictOptions:
    """The settings of one ``predict_to_coco`` call: which weights, the score cut, the device and run control."""

    which: str = "best"
    score_threshold: float = 0.05
    device: str | None = None
    overwrite: bool = False
    save_probs: bool = True
    quiet: bool = True


def predict_to_coco(run_dir: str | Path, dataset, names: Sequence[str], gt: dict | str | Path, out_json: str | Path,
                    options: CocoPredictOptions | None = None, **fields: Any) -> Path:
    """Predict ``names`` with a trained run and write COCO results (RLE masks, scores, xywh boxes) to ``out_json``.

    Image ids come from ``gt`` (a COCO dict or its path) by file stem. With ``save_probs``,
    ``<stem>.probs.npz`` beside it keeps each image's mask probabilities at SAM's low-res
    frame (``probs_<image_id>``: N x h x w uint8, ``scores_<image_id>``: N), in result order.
    ``options``: the settings (``CocoPredictOptions``); ``fields``: its fields by name (``device="cpu"``),
    replacing those of ``options``.
    """
    from dataclasses import replace

    from . import coco

    options = replace(options or CocoPredictOptions(), **fields)
    which, score_threshold, device = options.which, options.score_threshold, options.device
    overwrite, save_probs, quiet = options.overwrite, options.save_probs, options.quiet
    out_json = Path(out_json)
    check_can_write(out_json, overwrite)
    if save_probs:
        check_can_write(probs_sidecar_path(out_json), overwrite)
    if not isinstance(gt, dict):
        gt = coco.load_coco(gt)
    ids = coco.image_id_by_name(gt)
    missing = [name for name in names if name not in ids]
    if missing:
        raise InstsegError(f"{len(missing)} image(s) of the split not in the ground truth: {', '.join(missing[:10])}",
                           None if isinstance(gt, dict) else gt)
    samples = dataset.subset(list(names))
    model = load_model(run_dir, which=which, device=device)
    from tqdm.auto import tqdm

    results: list[dict] = []
    sidecar: dict[str, np.ndarray] = {}
    for sample in tqdm(samples, total=len(names), desc="mask r-cnn", disable=quiet):
        prediction = predict_instances(model, [sample.image], score_threshold=score_threshold)[0]
        image_id = ids[sample.name]
        results.extend(coco.instances_to_results(image_id, prediction["masks"], prediction["scores"], prediction["boxes"]))
        if save_probs:
            sidecar[f"probs_{image_id}"] = lowres_probs(prediction["mask_probs"])
            sidecar[f"scores_{image_id}"] = prediction["scores"]
    coco.write_coco(out_json, results)
    if save_probs:
        partial = probs_sidecar_path(out_json).with_name(probs_sidecar_path(out_json).name + ".partial.npz")
        np.savez_compressed(partial, **sidecar)
        os.replace(partial, probs_sidecar_path(out_json))
    return out_json

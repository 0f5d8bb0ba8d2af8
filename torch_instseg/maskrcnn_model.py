"""Mask R-CNN (torchvision ``maskrcnn_resnet50_fpn_v2``) for cells: the network, its heads, anchors and weights.

torch is imported inside functions only.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from data.settings import problem_text

from .errors import InstsegError
from .settings import DEFAULT_MAX_SIZE, DEFAULT_MIN_SIZE, head_channels, model_option_problems, weights_source
from .weights import COCO_WEIGHTS_FILE, ensure_coco_weights

MODEL_NAME = "maskrcnn_resnet50_fpn_v2"


def import_torch():
    """(torch, torchvision), or ``InstsegError`` with the install hint."""
    try:
        import torch
        import torchvision
    except ImportError as error:
        raise InstsegError(f"PyTorch is needed for the instance study ({error}); install it with: pip install -e .[torch]") from None
    return torch, torchvision


def resolve_device(device: str | None = None):
    torch, _ = import_torch()
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise InstsegError(f"unknown device '{device}' ({error})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InstsegError(f"device '{device}' asked for but no CUDA GPU is available; use --device cpu")
    return resolved


# ---------------------------------------------------------------- model

def _replace_predictors(model, num_classes: int) -> None:
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    box_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(box_features, num_classes)
    mask_features = model.roi_heads.mask_predictor.conv5_mask.in_channels
    model.roi_heads.mask_predictor = MaskRCNNPredictor(mask_features, 256, num_classes)


def _narrow_heads(model, channels: int, num_classes: int) -> None:
    """Replace the v2 box and mask heads (4 convs of 256 channels each) by the same heads with ``channels`` channels.

    The RoI heads then cost about (channels / 256)^2 of torchvision's: the choice for a CPU
    run from random weights. The box head keeps its 1024-wide fully connected layer.
    """
    from torch import nn
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    in_channels = model.backbone.out_channels
    pooled = model.roi_heads.box_roi_pool.output_size
    pooled = (pooled, pooled) if isinstance(pooled, int) else tuple(pooled)
    representation = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_head = FastRCNNConvFCHead((in_channels, *pooled), [channels] * 4, [representation], norm_layer=nn.BatchNorm2d)
    model.roi_heads.box_predictor = FastRCNNPredictor(representation, num_classes)
    model.roi_heads.mask_head = MaskRCNNHeads(in_channels, [channels] * 4, 1, norm_layer=nn.BatchNorm2d)
    model.roi_heads.mask_predictor = MaskRCNNPredictor(channels, channels, num_classes)


def read_state_dict(path: str | Path, what: str = "weights", model: str = "model") -> dict:
    """A state dict from a .pth/.pt file (a plain state dict or a checkpoint with a 'model' entry).

    ``what`` and ``model`` name the file and the network in the one-line errors.
    """
    torch, _ = import_torch()
    path = Path(path)
    if not path.is_file():
        raise InstsegError(f"{path}: {what} file not found")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - unreadable file is bad input
        raise InstsegError(f"{path}: cannot read {what} ({type(error).__name__}: {error})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not state:
        raise InstsegError(f"{path}: not a {model} state dict")
    return state


def build_maskrcnn(
    weights: str | os.PathLike | None = "coco",
    *,
    num_classes: int = 2,
    detections_per_image: int = 300,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    download: bool = True,
    **model_options: Any,
):
    """``maskrcnn_resnet50_fpn_v2`` with predictors for ``num_classes`` (background + cell).

    weights: "coco" (torchvision's COCO_V1 from its cache, downloaded once if online; offline
    raises ``InstsegError`` naming the file and folder), "none"/None (random init, no backbone
    weights either) or a path to a .pth (COCO-shaped or already ``num_classes``-shaped).
    min_size/max_size: the model's internal resize (torchvision's GeneralizedRCNNTransform).
    model_options: more keyword arguments of torchvision's ``MaskRCNN`` (for example
    ``box_batch_size_per_image`` or ``rpn_post_nms_top_n_train``, to make CPU runs cheaper),
    ``anchor_sizes``: 5 anchor sizes in pixels, one per FPN level (default 32-512), and
    ``head_channels``: channels of the box and mask heads' convolutions (default 256; fewer
    only from random weights, since the COCO heads have 256).
    """
    import_torch()
    refused = model_option_problems(model_options, weights)
    if refused:
        raise InstsegError(problem_text(refused))
    options = {"box_detections_per_img": int(detections_per_image), "min_size": int(min_size), "max_size": int(max_size),
               **model_options}
    anchors = _anchor_generator(options.pop("anchor_sizes", None))
    narrow = head_channels(options.pop("head_channels", None))
    model = _build_network(weights, num_classes, download, options, narrow)
    if anchors is not None:
        model.rpn.anchor_generator = anchors
    return model


def _build_network(weights: str | os.PathLike | None, num_classes: int, download: bool, options: dict[str, Any],
                   head_channels: int | None = None):
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_V2_Weights, maskrcnn_resnet50_fpn_v2

    source = weights_source(weights)
    if source == "coco":
        ensure_coco_weights(download)
        try:
            model = maskrcnn_resnet50_fpn_v2(weights=MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1, progress=False, **options)
        except (OSError, RuntimeError) as error:
            raise InstsegError(f"cannot load the COCO weights {COCO_WEIGHTS_FILE} ({error}); delete the file from torchvision's cache and retry, or use --weights none") from None
        _replace_predictors(model, num_classes)
        return model
    if source == "none":
        model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=num_classes, **options)
        if head_channels is not None:
            _narrow_heads(model, head_channels, num_classes)
        return model
    state = read_state_dict(source)
    classes_in_file = state.get("roi_heads.box_predictor.cls_score.weight")
    if classes_in_file is None:
        raise InstsegError(f"{source}: not a Mask R-CNN state dict (no roi_heads.box_predictor.cls_score.weight)")
    file_classes = int(classes_in_file.shape[0])
    model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=file_classes, **options)
    if head_channels is not None:
        _narrow_heads(model, head_channels, file_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0:2]
        raise InstsegError(f"{source}: weights do not fit {MODEL_NAME} ({' '.join(first_line)})") from None
    if file_classes != num_classes:
        _replace_predictors(model, num_classes)
    return model


def _anchor_generator(sizes: Any):
    """The RPN's anchors for ``sizes`` (one size in pixels per FPN level, 5 levels); None keeps torchvision's 32-512.

    The anchors keep torchvision's aspect ratios (0.5, 1, 2), so the RPN head's shape, and any
    checkpoint, stay the same; sizes matched to the cells (for example 16-256 for cells
    15-40 px across) replace torchvision's 32-512.
    """
    if sizes is None:
        return None
    refused = model_option_problems({"anchor_sizes": sizes}, "none")
    if refused:
        raise InstsegError(problem_text(refused))
    sizes = tuple(float(size) for size in sizes)
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    return AnchorGenerator(tuple((size,) for size in sizes), ((0.5, 1.0, 2.0),) * len(sizes))


def freeze_batchnorm(model) -> None:
    """Put every BatchNorm layer in eval mode (running statistics used and not updated)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()

"""SAM's training loss (SAM paper): focal and Dice on the masks, mean squared error of the predicted IoU.

torch tensors in, torch tensors out; torch is imported inside functions only.
"""
from __future__ import annotations

from typing import Any

from .settings import DICE_WEIGHT, FOCAL_WEIGHT

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


def focal_loss(logits, targets, alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA):
    """Sigmoid focal loss (Lin et al.) averaged over the pixels of each mask: ... x h x w -> ...."""
    import torch.nn.functional as F

    targets = targets.to(logits.dtype)
    probs = logits.sigmoid()
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_true = probs * targets + (1 - probs) * (1 - targets)
    alpha_true = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_true * cross_entropy * (1 - p_true) ** gamma).mean(dim=(-2, -1))


def dice_loss(logits, targets, smooth: float = 1.0):
    """1 - (2 |p t| + smooth) / (|p| + |t| + smooth) per mask, p = sigmoid(logits): ... x h x w -> ...."""
    targets = targets.to(logits.dtype)
    probs = logits.sigmoid()
    overlap = (probs * targets).sum(dim=(-2, -1))
    return 1 - (2 * overlap + smooth) / (probs.sum(dim=(-2, -1)) + targets.sum(dim=(-2, -1)) + smooth)


def mask_iou(logits, targets):
    """IoU of (logits > 0) with each target mask: ... x h x w -> ... (1 where both are empty)."""
    predicted = logits > 0
    targets = targets.bool()
    intersection = (predicted & targets).sum(dim=(-2, -1)).float()
    union = (predicted | targets).sum(dim=(-2, -1)).float()
    return (intersection / union.clamp(min=1)).where(union > 0, union.new_ones(()))


def sam_loss(low_res, predicted_iou, targets, focal_weight: float = FOCAL_WEIGHT,
             dice_weight: float = DICE_WEIGHT) -> tuple[Any, dict[str, Any], Any]:
    """SAM's loss for B prompts with K masks each (low_res B x K x h x w, predicted_iou B x K, targets B x h x w).

    Returns (loss, components {focal, dice, iou_mse, mask_iou} as detached scalars, index of
    the mask kept per prompt (B)). Only the mask with the smallest focal+Dice loss counts;
    the IoU head is fitted on every mask.
    """
    import torch

    expanded = targets[:, None].expand_as(low_res)
    focal = focal_loss(low_res, expanded)
    dice = dice_loss(low_res, expanded)
    per_mask = focal_weight * focal + dice_weight * dice
    best = per_mask.detach().argmin(dim=1)
    rows = torch.arange(len(best), device=low_res.device)
    true_iou = mask_iou(low_res.detach(), expanded)
    iou_mse = ((predicted_iou - true_iou) ** 2).mean()
    loss = per_mask[rows, best].mean() + iou_mse
    parts = {"focal": focal[rows, best].mean().detach(), "dice": dice[rows, best].mean().detach(),
             "iou_mse": iou_mse.detach(), "mask_iou": true_iou[rows, best].mean()}
    return loss, parts, best

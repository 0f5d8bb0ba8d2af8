"""Numpy checks of a trained model: instance recall at a mask IoU and semantic Dice."""
from __future__ import annotations

import numpy as np


def instance_recall(labels: np.ndarray, masks: np.ndarray, iou_threshold: float = 0.5,
                    mask_threshold: float = 0.5) -> tuple[int, int]:
    """(matched, total) instances of ``labels`` H x W: greedy one-to-one matching of the
    predicted ``masks`` K x H x W (best score first, probabilities cut at ``mask_threshold``)
    to instances with mask IoU >= ``iou_threshold``."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return 0, 0
    truth = labels.reshape(-1)[None, :] == ids[:, None]
    matched = np.zeros(len(ids), bool)
    for mask in masks:
        predicted = mask.reshape(-1) > mask_threshold
        intersection = (truth & predicted).sum(axis=1)
        union = (truth | predicted).sum(axis=1)
        overlap = np.where(union > 0, intersection / np.maximum(union, 1), 0.0)
        overlap[matched] = -1.0
        best = int(np.argmax(overlap))
        if overlap[best] >= iou_threshold:
            matched[best] = True
    return int(matched.sum()), len(ids)


def dice(probability: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """Dice of ``probability > threshold`` against the boolean ``truth`` (1.0 when both are empty)."""
    predicted = np.asarray(probability) > threshold
    truth = np.asarray(truth, bool)
    total = predicted.sum() + truth.sum()
    return 1.0 if total == 0 else float(2.0 * (predicted & truth).sum() / total)

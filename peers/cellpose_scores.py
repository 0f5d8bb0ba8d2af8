"""Cellpose's detection scores: per-mask means over label maps of the cell probability (the sigmoid of
Cellpose's logits), its quantiles and the masks' flow errors, from which a detection's score is made
(``detection_scores``, ``peers.cellpose.SCORE_SOURCE``) and the candidates compared against it
(``score_candidates``). numpy only; ``peers.cellpose`` re-exports every name here.
"""
from __future__ import annotations

import numpy as np


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, np.float64)))


def _mask_means(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    sums = np.bincount(labels.ravel(), weights=values.ravel(), minlength=n + 1)[1:]
    return np.divide(sums, counts, out=np.zeros(n), where=counts > 0)


def flow_errors(flows: np.ndarray, labels: np.ndarray, mask_flows: np.ndarray) -> np.ndarray:
    """Each mask's flow error (``cellpose.metrics.flow_error``): N, the mean over mask k's pixels of
    ``(mask_flows - flows / 5)**2``, summed over the two components.

    flows: 2 x H x W the network's flows (Y, X; Cellpose's 5x scale); mask_flows: 2 x H x W unit flows
    recomputed from ``labels`` (``dynamics.masks_to_flows``); labels: H x W int, 1..N.
    """
    labels = np.asarray(labels, np.int64)
    n = int(labels.max(initial=0))
    squared = ((np.asarray(mask_flows, np.float64) - np.asarray(flows, np.float64) / 5.0) ** 2).sum(axis=0)
    return _mask_means(squared, labels, n)


def mean_probability(cellprob: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """N: the mean sigmoid of the cell-probability logits (H x W) over each mask of ``labels`` (1..N)."""
    labels = np.asarray(labels, np.int64)
    return _mask_means(_sigmoid(cellprob), labels, int(labels.max(initial=0)))


def probability_quantile(cellprob: np.ndarray, labels: np.ndarray, q: float = 0.1) -> np.ndarray:
    """N: the ``q`` quantile of the sigmoid cell probability over each mask's pixels (0 for an empty label)."""
    labels = np.asarray(labels, np.int64)
    probs = _sigmoid(cellprob)
    return np.array([float(np.quantile(probs[labels == k], q)) if np.any(labels == k) else 0.0
                     for k in range(1, int(labels.max(initial=0)) + 1)])


def detection_scores(cellprob: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The score of each mask (``SCORE_SOURCE``): N float64, label k's at k - 1.

    cellprob: H x W logits (Cellpose's ``flows[2]``); labels: H x W int, 0 background, 1..N.
    """
    return mean_probability(cellprob, labels)


def score_candidates(cellprob: np.ndarray, flows: np.ndarray, labels: np.ndarray, mask_flows: np.ndarray) -> dict[str, np.ndarray]:
    """The scores compared on the default run's validation images (README): N each.

    mean_probability (kept: ``detection_scores``); probability_x_flow: that mean times (1 - the
    mask's flow error), clipped to [0, 1]; probability_q10: the 10th percentile of the sigmoid
    probability over the mask. flows: 2 x H x W network flows (``flows[1]``); mask_flows: 2 x H x W
    flows recomputed from ``labels`` (``mask_flows``).
    """
    mean = mean_probability(cellprob, labels)
    return {"mean_probability": mean,
            "probability_x_flow": mean * np.clip(1.0 - flow_errors(flows, labels, mask_flows), 0.0, 1.0),
            "probability_q10": probability_quantile(cellprob, labels, 0.1)}

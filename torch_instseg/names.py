"""The instance study's names, declared once: prompt modes, methods, score sources,
AP interpolations, and their display labels (no framework, no numpy).

``mscseg.config``, ``mscseg.report``, ``torch_instseg.plots`` and the console scripts
take their lists from here; SAM variants are ``torch_instseg.sam.SAM_VARIANTS``.
"""
from __future__ import annotations

PROMPT_LABELS: dict[str, str] = {"box": "box", "box_point": "box + point", "box_mask": "box + mask"}
PROMPT_MODES: tuple[str, ...] = tuple(PROMPT_LABELS)
SCORE_SOURCES: tuple[str, ...] = ("maskrcnn", "sam_iou")
INTERPOLATION_LABELS: dict[int, str] = {11: "11-point (the paper's)", 101: "101-point (COCOeval)"}
INTERPOLATIONS: tuple[int, ...] = tuple(INTERPOLATION_LABELS)
MASKRCNN_METHOD = "maskrcnn"


def sam_method(mode: str) -> str:
    """The method name of SAM prompted in ``mode`` (the results file is ``<method>.json``)."""
    return f"sam_{mode}"


METHOD_LABELS: dict[str, str] = {
    MASKRCNN_METHOD: "Mask R-CNN",
    **{sam_method(mode): f"SAM ({label})" for mode, label in PROMPT_LABELS.items()},
}

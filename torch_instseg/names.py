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
PROMPT_SOURCES: tuple[str, ...] = ("maskrcnn", "gt")
GT_PROMPT_MODES: tuple[str, ...] = ("box", "box_point")
TRAINABLE_PARTS: tuple[str, ...] = ("decoder", "decoder+prompt", "all")
SAM_PREFIX_LABELS: dict[str, str] = {"sam": "SAM", "sam_ft": "SAM fine-tuned"}
MASKRCNN_METHOD = "maskrcnn"


def sam_method(mode: str, prefix: str = "sam", prompts: str = "maskrcnn") -> str:
    """The method name of SAM (``prefix`` 'sam' zero-shot, 'sam_ft' fine-tuned) prompted in ``mode`` by the
    Mask R-CNN boxes or the ground-truth boxes (``prompts`` 'gt'); the results file is ``<method>.json``."""
    return f"{prefix}_{mode}" if prompts == "maskrcnn" else f"{prefix}_gt_{mode}"


METHOD_LABELS: dict[str, str] = {
    MASKRCNN_METHOD: "Mask R-CNN",
    **{sam_method(mode, prefix): f"{name} ({label})"
       for prefix, name in SAM_PREFIX_LABELS.items() for mode, label in PROMPT_LABELS.items()},
    **{sam_method(mode, prefix, "gt"): f"{name} (GT {label})"
       for prefix, name in SAM_PREFIX_LABELS.items() for mode, label in PROMPT_LABELS.items() if mode in GT_PROMPT_MODES},
}

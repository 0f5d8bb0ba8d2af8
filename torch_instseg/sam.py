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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from data.cli import add_dataset_arguments, make_parser, open_dataset, run_cli
from data.outputs import check_can_write

from .errors import InstsegError
from .names import GT_PROMPT_MODES, PROMPT_MODES, PROMPT_SOURCES, SCORE_SOURCES, sam_method
from .sam_decode import (  # noqa: F401  (re-exported: torch_instseg.sam is the public module)
    MASK_PROMPT_EPS, ImageEmbedding, _import_sam, cached_embedding, decode_prompts, embed_image, interior_points,
    mask_prompts, probs_to_logits, sam_predict,
)
from .weights import SAM_CHECKPOINT_FILES, resolve_sam_checkpoint

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
    # the same encoder on 512 px inputs: 128 x 128 masks (vit_tiny's are 64 x 64), for small images of small cells
    "vit_tiny_512": SamVariant(64, 2, 2, (1,), image_size=512, window_size=8),
}


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
    _import_sam()
    from .maskrcnn import resolve_device

    spec = _variant(variant)
    if spec.checkpoint_file is None and checkpoint is None:
        checkpoint = "none"
    path = resolve_sam_checkpoint(variant, checkpoint)
    state = None
    if path is not None:
        from .maskrcnn_model import read_state_dict

        state = read_state_dict(path, what="SAM checkpoint", model="SAM")
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


@dataclass
class SamRunOptions:
    """The settings of one ``run_sam`` call (its docstring): the model, prompt modes, score and run control.

    ``sam`` reuses a model already built. ``prompts``: ``maskrcnn`` (the detections) or ``gt`` (the
    ground-truth boxes, and the ground-truth masks for ``box_point``'s point; modes ``box`` and
    ``box_point``; masks ranked by SAM's predicted IoU): ``<prefix>_gt_<mode>.json``. ``method_prefix``:
    ``sam`` (zero-shot) or ``sam_ft`` (fine-tuned). ``embeddings``: {image name: 1 x 256 x h x w features}
    already computed by this model's encoder (reused, not recomputed).
    """

    variant: str = "vit_h"
    checkpoint: str | Path | None = None
    modes: Sequence[str] = PROMPT_MODES
    score: str = "maskrcnn"
    device: str | None = None
    overwrite: bool = False
    batch_size: int = 64
    quiet: bool = True
    sam: Any = None
    prompts: str = "maskrcnn"
    method_prefix: str = "sam"
    embeddings: Mapping[str, Any] | None = None


@dataclass
class _SamTally:
    """What prompting every image gave: results per mode and the counts and notes of the .meta.json files."""

    results: dict[str, list[dict]]
    empty_masks: dict[str, int]
    skipped: list[dict] = field(default_factory=list)
    mask_prompt_sources: set[str] = field(default_factory=set)
    no_detections: list[str] = field(default_factory=list)
    n_prompts: int = 0


def _checked_modes(options: SamRunOptions, maskrcnn_json: str | Path | None) -> tuple[list[str], str]:
    """(the prompt modes without repeats, the score source); ``InstsegError`` for an unknown or missing one."""
    modes, score, prompts = list(dict.fromkeys(options.modes)), options.score, options.prompts
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
    return modes, score


def _detections_by_image(gt: dict | str | Path, names: Sequence[str], maskrcnn_json: Path | None
                         ) -> tuple[dict[str, int], dict[int, list[dict]]]:
    """(image id by name, the prompts' detections by image id: Mask R-CNN results, or the ground truth as detections)."""
    from . import coco

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
    return ids, by_image


def _sam_model(options: SamRunOptions) -> tuple[Any, dict]:
    """(the SAM model: ``options.sam`` or one built, what it is: variant, checkpoint, untrained...); warns when untrained."""
    sam = options.sam if options.sam is not None else build_sam(options.variant, options.checkpoint, options.device)
    info = dict(getattr(sam, "mscseg_info", {"variant": options.variant, "checkpoint": str(options.checkpoint),
                                             "untrained": False}))
    if info.get("untrained"):
        print(f"warning: {UNTRAINED_WARNING}", file=sys.stderr)
    if info.get("random_encoder"):
        print(f"warning: {RANDOM_ENCODER_WARNING}", file=sys.stderr)
    return sam, info


def _prompt_image(sam, sample, image_id: int, image_detections: list[dict], prompting: dict, tally: _SamTally) -> None:
    """Prompt SAM with one image's detections in every mode, adding the results to ``tally``.

    ``prompting``: modes, score, prompts, info, options (``SamRunOptions``) and the probabilities sidecar.
    """
    from . import coco

    modes, score, options, sidecar = prompting["modes"], prompting["score"], prompting["options"], prompting["sidecar"]
    boxes = np.array([_xywh_to_xyxy(d.get("bbox") or coco.rle_to_bbox(d["segmentation"])) for d in image_detections], np.float64)
    maskrcnn_scores = np.array([float(d["score"]) for d in image_detections])
    maskrcnn_masks = np.stack([coco.decode_rle(d["segmentation"]) for d in image_detections])
    probs = None
    if sidecar is not None and f"probs_{image_id}" in sidecar.files:
        stored_scores = sidecar[f"scores_{image_id}"]
        if len(stored_scores) == len(maskrcnn_scores) and np.allclose(stored_scores, maskrcnn_scores, atol=1e-6):
            probs = sidecar[f"probs_{image_id}"].astype(np.float32) / 255.0
    if options.embeddings is not None and sample.name in options.embeddings:
        embedding = cached_embedding(sam, options.embeddings[sample.name], sample.image.shape[:2])
    else:
        embedding = embed_image(sam, sample.image)
    tally.n_prompts += len(boxes)
    for mode in modes:
        if mode == "box_mask":
            tally.mask_prompt_sources.add("maskrcnn_probs" if probs is not None else "maskrcnn_binary_masks")
        masks, ious = decode_prompts(sam, embedding, boxes, mode, maskrcnn_masks, probs if mode == "box_mask" else None,
                                     options.batch_size)
        kept = np.isfinite(ious)
        tally.empty_masks[mode] += int((~masks[kept].any(axis=(1, 2))).sum())
        if mode == modes[0]:
            for index in np.flatnonzero(~kept):
                tally.skipped.append({"image": sample.name, "detection": int(index), "box_xyxy": boxes[index].tolist(),
                                      "reason": "empty after clipping to the image"})
        ranking = maskrcnn_scores if score == "maskrcnn" else ious.astype(np.float64)
        extra = {"sam_iou": ious[kept].astype(np.float64)}
        if options.prompts == "maskrcnn":
            extra["maskrcnn_score"] = maskrcnn_scores[kept]
        image_results = coco.instances_to_results(image_id, masks[kept], ranking[kept], None, extra)
        for result in image_results:
            result["score_source"] = score
            if prompting["info"].get("untrained"):
                result["sam_untrained"] = True
        tally.results[mode].extend(image_results)


def _sam_meta(mode: str, path: Path, prompting: dict, tally: _SamTally, maskrcnn_json: Path | None,
              n_images: int, elapsed: float) -> dict:
    """The ``.meta.json`` of one prompt mode's results."""
    from .maskrcnn import _versions

    score, info, options = prompting["score"], prompting["info"], prompting["options"]
    meta = {
        "method": path.stem, "prompt_mode": mode, "prompts": options.prompts, "score_source": score,
        "score_source_meaning": "Mask R-CNN box score" if score == "maskrcnn" else "SAM predicted IoU of the kept mask",
        "variant": info.get("variant", options.variant), "checkpoint": info.get("checkpoint"),
        "untrained": bool(info.get("untrained")), "fine_tuned": bool(info.get("fine_tuned")),
        "multimask_output": True, "kept_mask": "highest predicted IoU of the 3", "batch_size": options.batch_size,
        "maskrcnn_results": str(maskrcnn_json) if maskrcnn_json is not None else None, "n_images": n_images,
        "n_prompts": tally.n_prompts, "n_results": len(tally.results[mode]), "n_empty_masks": tally.empty_masks[mode],
        "images_without_detections": tally.no_detections, "skipped_boxes": tally.skipped,
        "time_s_all_modes": round(elapsed, 3), "versions": _versions(),
    }
    if info.get("untrained"):
        meta["warning"] = UNTRAINED_WARNING
    elif info.get("random_encoder"):
        meta["warning"] = RANDOM_ENCODER_WARNING
    meta["random_encoder"] = bool(info.get("untrained") or info.get("random_encoder"))
    if mode == "box_mask":
        meta["mask_prompt"] = sorted(tally.mask_prompt_sources) or ["maskrcnn_probs"]
    return meta


def run_sam(dataset, names: Sequence[str], maskrcnn_json: str | Path | None, gt: dict | str | Path, out_dir: str | Path,
            options: SamRunOptions | None = None, **fields: Any) -> dict[str, Path]:
    """Prompt SAM with every Mask R-CNN detection of ``names``; write ``sam_<mode>.json`` (+ ``.meta.json``) per mode.

    The image is embedded once and shared by all modes. Images without detections get no
    results. Returns {mode: results path}. ``options``: the settings (``SamRunOptions``);
    ``fields``: ``SamRunOptions`` fields by name (``modes=["box"], sam=model``), replacing those of ``options``.
    """
    from dataclasses import replace

    from . import coco

    options = replace(options or SamRunOptions(), **fields)
    modes, score = _checked_modes(options, maskrcnn_json)
    out_dir = Path(out_dir)
    maskrcnn_json = Path(maskrcnn_json) if options.prompts == "maskrcnn" else None
    paths = {mode: out_dir / f"{sam_method(mode, options.method_prefix, options.prompts)}.json" for mode in modes}
    for path in paths.values():
        check_can_write(path, options.overwrite)
        check_can_write(coco.results_meta_path(path), options.overwrite)
    ids, by_image = _detections_by_image(gt, names, maskrcnn_json)
    samples = dataset.subset(list(names))
    sidecar = _read_probs_sidecar(maskrcnn_json) if "box_mask" in modes else None
    sam, info = _sam_model(options)
    prompting = {"modes": modes, "score": score, "options": options, "info": info, "sidecar": sidecar}

    from tqdm.auto import tqdm

    started = time.time()
    tally = _SamTally({mode: [] for mode in modes}, dict.fromkeys(modes, 0))
    for sample in tqdm(samples, total=len(names), desc="sam", disable=options.quiet):
        image_detections = by_image.get(ids[sample.name], [])
        if not image_detections:
            tally.no_detections.append(sample.name)
            continue
        _prompt_image(sam, sample, ids[sample.name], image_detections, prompting, tally)
    elapsed = time.time() - started
    for mode in modes:
        coco.write_results(paths[mode], tally.results[mode],
                           _sam_meta(mode, paths[mode], prompting, tally, maskrcnn_json, len(names), elapsed))
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

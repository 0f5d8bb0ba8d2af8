"""Fine-tune SAM on instance annotations: the trainer, the runner's step and ``instseg-sam-train``.

The pieces, one concern each (every name stays importable from here): ``sam_prompts``
(prompt sampling, numpy), ``sam_loss`` (focal, Dice, IoU), ``sam_data`` (images on SAM's
grid, trainable parts, cached embeddings); the run folder's life cycle is ``data.lifecycle``'s.

The recipe follows the SAM paper's interactive training and micro-sam's trainer, sized for
a CPU by default:

- Each step takes one training image and up to ``prompts_per_image`` of its instances.
  The first round prompts each instance with its box, jittered as a detector's box is
  (each coordinate moved by Gaussian noise of 10% of the box side, at most 20 pixels at
  SAM's 1024 input; the paper's noise), and, with probability ``point_probability``,
  ``positive_points`` points drawn inside the instance and ``negative_points`` drawn
  inside its box but outside it. The decoder answers with its three masks.
- ``iterations`` correction rounds follow: one point drawn uniformly from the error
  region of the previous mask (positive in the missed part, negative in the extra part,
  whichever is larger) is added to the prompts, and the previous mask's low-res logits
  are the mask prompt; the decoder answers with one mask.
- With probability ``mask_prompt_probability`` the first round also gets a mask prompt
  shaped like a detector's mask probabilities (the instance on the low-res grid, grown or
  shrunk by up to one cell and blurred), as the ``box_mask`` mode is prompted with the Mask
  R-CNN masks at inference. Default 0 (SAM's and micro-sam's recipe).
- Loss (SAM paper): 20 x focal + 1 x Dice on the masks (for the three-mask first round,
  only the mask with the smallest loss counts), plus the mean squared error between the
  predicted IoU and the IoU of each predicted mask with the instance. It is computed on
  the decoder's low-res grid (a quarter of SAM's input side; 256 x 256 for the released
  models), against the instance masks averaged onto that grid (>= 0.5 is foreground).
  From random weights the focal term drives the decoder to predict background everywhere
  (measured: mask IoU 0 after 150 steps, while Dice alone reaches 0.44), so the focal
  weight defaults to 0 there (Dice alone, as micro-sam's trainer) and to 20 from a checkpoint.
- ``trainable``: ``decoder`` (mask decoder), ``decoder+prompt`` (and the prompt encoder):
  the image encoder is frozen, so each image's embedding is computed once and cached
  (``embeddings.pt`` in the run folder, reused on resume) and a step costs the decoder
  alone; ``all``: the image encoder is trained too (a GPU job; the embedding is computed
  every step). No augmentation: a cached embedding fixes the image.
- Several processes (``torchrun --nproc_per_node N -m torch_instseg.sam_finetune ...``): a
  step takes one image per process (a global batch of N images, gradients averaged by DDP,
  the learning rate unchanged), rank 0 validates and writes (``torch_instseg.distributed``);
  a run resumes on any number of processes.
- AdamW at a constant learning rate; validation loss every epoch with prompts drawn from a
  fixed seed, so epochs compare; ``best.pth`` (lowest validation loss) and ``last.pth``
  are plain SAM state dicts (``build_sam`` and ``segment_anything.sam_model_registry``
  load them); ``resume.pt`` holds the optimizer state, the epoch and the random state.

torch and segment-anything are imported inside functions only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from data.lifecycle import EpochSteps, RunSpec, TrainingRun, run_epochs, summary
from data.outputs import check_can_write

from .distributed import (Processes, barrier, launch_environment, mean_over_processes, on_main, open_shared_run, spread, start,
                          stop, whole_batches, wrap_calls)
from .errors import InstsegError
from .reproducible import make_reproducible
from .sam_data import (TrainingImage, _atomic_torch_save, check_training_data, compute_embedding, embed_all,  # noqa: F401
                       embedding_key, instance_masks, load_or_embed, prepare_image, set_trainable)
from .sam_loss import FOCAL_ALPHA, FOCAL_GAMMA, dice_loss, focal_loss, mask_iou, sam_loss  # noqa: F401
from .sam_prompts import (BOX_NOISE_FRACTION, BOX_NOISE_MAX_PX_AT_1024, LOWRES_STRIDE, PAD_LABEL, correction_points,  # noqa: F401
                          detector_like_masks, grid_to_input, jitter_boxes, sample_points)
from .settings import FINETUNE_RESUME_MUST_MATCH, FinetuneSettings, build_sam_checkpoint, starts_untrained

TRAINER = "sam_finetune"
RUN_FILES = ("run.json", "history.csv", "best.pth", "last.pth", "resume.pt", "embeddings.pt")
RESUME_MUST_MATCH = FINETUNE_RESUME_MUST_MATCH


# ---------------------------------------------------------------- one step

def _input_points(pixels: np.ndarray, labels: np.ndarray, device):
    import torch

    return (torch.as_tensor(grid_to_input(pixels), device=device), torch.as_tensor(labels, device=device))


def prompt_rounds(sam, embedding, image: TrainingImage, chosen: np.ndarray, settings: FinetuneSettings,
                  rng: np.random.Generator) -> tuple[Any, dict[str, float]]:
    """Loss of one image's prompts over the first round and ``settings.iterations`` correction rounds.

    chosen: indices of the instances prompted. Returns (mean loss over rounds, mean components
    as floats; ``mask_iou`` is that of the first round).
    """
    import torch

    device = sam.device
    targets_np = image.targets[chosen]
    targets = torch.as_tensor(targets_np, device=device)
    max_shift = BOX_NOISE_MAX_PX_AT_1024 * sam.image_encoder.img_size / 1024.0
    boxes = jitter_boxes(image.boxes[chosen], rng, image.input_size, max_shift=max_shift)
    box_tensor = torch.as_tensor(boxes, device=device)
    points = None
    if rng.random() < settings.point_probability and settings.positive_points + settings.negative_points > 0:
        grid_boxes = boxes / LOWRES_STRIDE
        pixels, labels = sample_points(targets_np, grid_boxes, settings.positive_points, settings.negative_points, rng)
        points = _input_points(pixels, labels, device)
    image_pe = sam.prompt_encoder.get_dense_pe()
    total = None
    sums: dict[str, float] = {}
    previous = None
    if settings.mask_prompt_probability > 0 and rng.random() < settings.mask_prompt_probability:
        previous = torch.as_tensor(detector_like_masks(targets_np, rng), device=device)
    for round_index in range(settings.iterations + 1):
        sparse, dense = sam.prompt_encoder(points=points, boxes=box_tensor, masks=previous)
        low_res, predicted_iou = sam.mask_decoder(
            image_embeddings=embedding, image_pe=image_pe, sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=round_index == 0,
        )
        loss, parts, best = sam_loss(low_res, predicted_iou, targets, settings.focal_weight, settings.dice_weight)
        total = loss if total is None else total + loss
        for name, value in parts.items():
            if name != "mask_iou" or round_index == 0:
                sums[name] = sums.get(name, 0.0) + float(value)
        rows = torch.arange(len(best), device=device)
        previous = low_res[rows, best][:, None].detach()
        if round_index == settings.iterations:
            break
        new_pixels, new_labels = correction_points((previous[:, 0] > 0).cpu().numpy(), targets_np, rng)
        new_points = _input_points(new_pixels[:, None], new_labels[:, None], device)
        points = new_points if points is None else (torch.cat([points[0], new_points[0]], 1), torch.cat([points[1], new_points[1]], 1))
    rounds = settings.iterations + 1
    components = {name: value / (1 if name == "mask_iou" else rounds) for name, value in sums.items()}
    components["loss"] = float(total.detach()) / rounds
    return total / rounds, components


def choose_prompts(image: TrainingImage, count: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of up to ``count`` instances drawn without replacement."""
    n = len(image.targets)
    return np.sort(rng.choice(n, size=min(count, n), replace=False)) if n else np.zeros(0, np.int64)


def image_embedding(sam, image: TrainingImage, embeddings: Mapping[str, Any] | None):
    """The cached embedding of ``image``, or one computed now (with gradients when the encoder trains)."""
    if embeddings is not None:
        return embeddings[image.name].to(sam.device)
    return compute_embedding(sam, image.pixels)


# ---------------------------------------------------------------- epochs

def _mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {}
    return {name: float(np.mean([row[name] for row in rows if name in row])) for name in rows[0]}


def train_one_epoch(sam, images: Sequence[TrainingImage], optimizer, settings: FinetuneSettings,
                    rng: np.random.Generator, embeddings: Mapping[str, Any] | None, progress=None, net=None,
                    processes: Processes = Processes(), epoch: int = 0) -> dict[str, float]:
    """One pass over the training images in random order, one optimizer step per image and process; mean components.

    One process: the order and the prompts are drawn from ``rng``. Several (``net``: ``sam`` in
    ``distributed.wrap_calls``): a step takes one image per process (a global batch of world-size
    images, gradients averaged), the order drawn from ``rng`` (the same on every process) over the
    images with instances, wrapped around to a whole number of steps, and process r's prompts from
    (seed, epoch, r); the means are over every process's steps.
    """
    sam.train()
    if settings.trainable != "all":
        sam.image_encoder.eval()
    order = rng.permutation(len(images))
    prompt_rng = rng
    if processes.distributed:
        with_instances = order[[len(images[position].targets) > 0 for position in order]]
        order = spread(whole_batches(with_instances, processes.world), processes).ravel()
        prompt_rng = np.random.default_rng([settings.seed, epoch, processes.rank])
    step = net if net is not None else (lambda compute: compute())
    rows = []
    for position in order:
        image = images[position]
        chosen = choose_prompts(image, settings.prompts_per_image, prompt_rng)
        if chosen.size == 0:
            continue
        loss, components = step(lambda: prompt_rounds(sam, image_embedding(sam, image, embeddings), image, chosen, settings,
                                                       prompt_rng))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        rows.append(components)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{components['loss']:.4f}")
    if not processes.distributed:
        return _mean_rows(rows)
    return mean_over_processes({name: sum(row[name] for row in rows) for name in (rows[0] if rows else {})}, len(rows), processes,
                               sam.device)


def evaluate_loss(sam, images: Sequence[TrainingImage], settings: FinetuneSettings, seed: int,
                  embeddings: Mapping[str, Any] | None) -> dict[str, float]:
    """Mean loss components on ``images`` with prompts drawn from ``seed`` (the same every epoch), no gradients."""
    import torch

    sam.eval()
    rng = np.random.default_rng(seed)
    rows = []
    with torch.no_grad():
        for image in images:
            chosen = choose_prompts(image, settings.prompts_per_image, rng)
            if chosen.size == 0:
                continue
            _, components = prompt_rounds(sam, image_embedding(sam, image, embeddings), image, chosen, settings, rng)
            rows.append(components)
    return _mean_rows(rows)


# ---------------------------------------------------------------- checkpoints and run folder

def save_sam_state(sam, path: str | Path) -> Path:
    """Write SAM's state dict (the layout of the released checkpoints), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_torch_save({name: tensor.detach().cpu() for name, tensor in sam.state_dict().items()}, path)
    return path


def save_resume_state(path: Path, optimizer, epoch: int, rng: np.random.Generator) -> None:
    """``resume.pt``: the optimizer state, the epoch and the prompt sampler's random state."""
    _atomic_torch_save({"optimizer": optimizer.state_dict(), "epoch": epoch, "rng": rng.bit_generator.state}, path)


def load_resume_state(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise InstsegError("cannot resume: resume.pt missing (the run never finished an epoch); start over with --overwrite", path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - unreadable file is bad input
        raise InstsegError(f"cannot read the resume state ({type(error).__name__}: {error})", path) from None


def _split_record(split: Mapping[str, Any], split_path: str | Path | None) -> dict[str, Any]:
    record = {"train": list(split["train"]), "val": list(split["val"])}
    if split_path is not None:
        record["path"] = str(split_path)
    return record


def run_spec(settings: FinetuneSettings, split_record: dict[str, Any]) -> RunSpec:
    """What the shared life cycle (``data.lifecycle``) needs to know about this run."""
    return RunSpec(TRAINER, f"sam_{settings.variant}", settings.to_dict(), split_record, settings.epochs, RESUME_MUST_MATCH,
                   RUN_FILES, resume_files=("last.pth", "resume.pt"), max_minutes=settings.max_minutes)


def build_for_training(settings: FinetuneSettings, device: str | None, resume_from: Path | None = None):
    """SAM for fine-tuning: from the resume checkpoint, the given checkpoint, or random weights seeded by ``settings.seed``."""
    import torch

    from .sam import build_sam

    torch.manual_seed(settings.seed)
    checkpoint = str(resume_from) if resume_from is not None else build_sam_checkpoint(settings.checkpoint)
    return build_sam(settings.variant, checkpoint, device)


# ---------------------------------------------------------------- the trainer

@dataclass
class FinetuneRunOptions:
    """Run control of one ``finetune_sam`` call: device, resume/overwrite, output, and where the split came from or goes."""

    device: str | None = None
    resume: bool = False
    overwrite: bool = False
    quiet: bool = True
    split_path: str | Path | None = None
    write_split_to: str | Path | None = None


def finetune_sam(dataset, split: Mapping[str, Any], out_dir: str | Path,
                 settings: FinetuneSettings | Mapping[str, Any] | None = None, options: FinetuneRunOptions | None = None,
                 **fields: Any) -> dict[str, Any]:
    """Fine-tune SAM on ``split['train']`` of ``dataset``, validated on ``split['val']``; returns the run record as a dict.

    Every input is checked (settings, images, instances, checkpoint variant, the run folder
    and a resume's settings, through ``data.lifecycle``) before anything is written: then
    ``split`` goes to ``write_split_to`` when given (a split made for this run), and the run
    to ``out_dir``. ``options``: run control (``FinetuneRunOptions``); ``fields``: its fields by
    name (``device="cpu", resume=True``), replacing those of ``options``.
    """
    from dataclasses import replace

    options = replace(options or FinetuneRunOptions(), **fields)
    device, resume, overwrite, quiet = options.device, options.resume, options.overwrite, options.quiet
    split_path, write_split_to = options.split_path, options.write_split_to
    if not isinstance(settings, FinetuneSettings):
        settings = FinetuneSettings(**dict(settings or {}))
    settings.check()
    train_names, val_names = list(split["train"]), list(split["val"])
    if not train_names:
        raise InstsegError("the split has no training images", split_path)
    processes, torch_device = start(device)
    run = open_shared_run(out_dir, run_spec(settings, _split_record(split, split_path)), resume, overwrite, processes)
    if run.done:
        return run.record.to_dict()
    reproducibility = make_reproducible(settings.deterministic)
    sam = build_for_training(settings, str(torch_device), run.out_dir / "last.pth" if run.start_epoch > 0 else None)
    image_size = int(sam.image_encoder.img_size)
    check_training_data(dataset, train_names, image_size, "training")
    if val_names:
        check_training_data(dataset, val_names, image_size, "validation")
    images = [[prepare_image(s, image_size, settings.trainable == "all") for s in dataset.subset(names)]
              for names in (train_names, val_names)]
    if write_split_to is not None and processes.main:
        from data.split import write_split

        write_split(write_split_to, dict(split))
    parameters = set_trainable(sam, settings.trainable)
    run.start({**_details(settings, sam, parameters, images, reproducibility), **processes.record(processes.world)})
    began = time.perf_counter()
    embeddings = None
    if settings.trainable != "all":
        key = embedding_key(settings, image_size, train_names + val_names)
        embeddings = load_or_embed(sam, dataset, train_names + val_names, run.out_dir / "embeddings.pt", key,
                                   quiet or not processes.main, write=processes.main)
    run.record.details["embedding_time_s" if run.previous is None else "resume_embedding_time_s"] = round(time.perf_counter() - began, 3)
    net = wrap_calls(sam, processes, torch_device) if processes.distributed else None
    show = not quiet and processes.main
    record = run_epochs(run, epoch_steps(sam, parameters, images, settings, embeddings, run, not show, net, processes), show=show)
    barrier(processes)
    return record


def _details(settings: FinetuneSettings, sam, parameters: list, images: list, reproducibility: dict) -> dict[str, Any]:
    """What run.json's details say about the model, the data and the loss."""
    return {
        "image_size": int(sam.image_encoder.img_size), "trainable": settings.trainable,
        "n_trainable_parameters": int(sum(p.numel() for p in parameters)),
        "n_train_instances": int(sum(len(i.targets) for i in images[0])),
        "n_val_instances": int(sum(len(i.targets) for i in images[1])),
        "untrained_start": starts_untrained(settings.checkpoint),
        "loss": f"{settings.focal_weight:g} x focal + {settings.dice_weight:g} x Dice (low-res grid) + MSE(predicted IoU)",
        "device": str(sam.device), "reproducibility": reproducibility,
    }


def epoch_steps(sam, parameters: list, images: list, settings: FinetuneSettings, embeddings: Mapping[str, Any] | None,
                run: TrainingRun, quiet: bool, net=None, processes: Processes = Processes()) -> EpochSteps:
    """SAM fine-tuning's "train one epoch", "evaluate" and checkpoint for ``data.lifecycle.run_epochs``.

    net: ``sam`` in ``distributed.wrap_calls`` when several processes train; rank 0 validates and every process gets its losses.
    """
    import torch
    from tqdm.auto import tqdm

    train_images, val_images = images
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    rng = np.random.default_rng(settings.seed)
    if run.start_epoch > 0:
        state = load_resume_state(run.out_dir / "resume.pt")
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]

    def train(epoch: int) -> dict[str, float]:
        with tqdm(total=len(train_images), desc=f"sam epoch {epoch}/{settings.epochs}", disable=quiet, leave=False) as progress:
            return train_one_epoch(sam, train_images, optimizer, settings, rng, embeddings, progress, net, processes, epoch)

    def evaluate(epoch: int) -> dict[str, float] | None:
        if not val_images:
            return None
        return on_main(lambda: evaluate_loss(sam, val_images, settings, settings.seed + 1, embeddings), processes)

    def row(epoch: int, train_losses: Mapping, val_losses: Mapping | None, seconds: float) -> dict:
        return {"epoch": epoch, **{f"train_{k}": v for k, v in train_losses.items()},
                **{f"val_{k}": v for k, v in (val_losses or {}).items()}, "lr": settings.lr, "time_s": round(seconds, 3)}

    def save(epoch: int, improved: bool, monitored: float) -> None:
        if improved:
            save_sam_state(sam, run.out_dir / "best.pth")
        save_sam_state(sam, run.out_dir / "last.pth")
        save_resume_state(run.out_dir / "resume.pt", optimizer, epoch, rng)

    return EpochSteps(train=train, evaluate=evaluate, save=save, row=row)


# ---------------------------------------------------------------- the step the runner calls

@dataclass
class FinetuneStepResult:
    """What ``finetune_and_predict`` produced."""

    run_dir: Path
    record: dict[str, Any]
    predictions: dict[str, Path] = field(default_factory=dict)


@dataclass
class FinetunePredictOptions:
    """The settings of one ``finetune_and_predict`` call besides the fine-tuning settings: the prompts and run control."""

    modes: Sequence[str] = ("box", "box_point", "box_mask")
    score: str = "maskrcnn"
    prompt_sources: Sequence[str] = ("maskrcnn", "gt")
    device: str | None = None
    resume: bool = False
    overwrite: bool = False
    quiet: bool = True
    split_path: str | Path | None = None


def finetune_and_predict(settings: FinetuneSettings | Mapping[str, Any], dataset, split: Mapping[str, Any],
                         out_dir: str | Path, predictions_dir: str | Path, options: FinetunePredictOptions | None = None,
                         **fields: Any) -> FinetuneStepResult:
    """Fine-tune SAM (``out_dir``: run.json, history.csv, best.pth, last.pth) and write its predictions.

    predictions_dir must hold ``gt.json`` (validation ground truth) and, for the ``maskrcnn``
    prompt source, ``maskrcnn.json``. Writes ``sam_ft_<mode>.json`` (+ ``.meta.json``) for
    each mode prompted by Mask R-CNN's detections and ``sam_ft_gt_<mode>.json`` for the
    ground-truth boxes (modes ``box`` and ``box_point``). A finished run in ``out_dir`` with
    the same settings is reused when ``resume`` is set. ``options``: prompts and run control
    (``FinetunePredictOptions``); ``fields``: its fields by name (``device="cpu"``), replacing those of ``options``.
    """
    from dataclasses import replace

    from .sam import GT_PROMPT_MODES, build_sam, run_sam

    options = replace(options or FinetunePredictOptions(), **fields)
    modes, score, prompt_sources, device = options.modes, options.score, options.prompt_sources, options.device
    resume, overwrite, quiet, split_path = options.resume, options.overwrite, options.quiet, options.split_path
    settings = settings if isinstance(settings, FinetuneSettings) else FinetuneSettings(**dict(settings))
    predictions_dir = Path(predictions_dir)
    gt_path = predictions_dir / "gt.json"
    maskrcnn_json = predictions_dir / "maskrcnn.json"
    if not gt_path.is_file():
        raise InstsegError("ground truth not found (the Mask R-CNN step writes it)", gt_path)
    if "maskrcnn" in prompt_sources and not maskrcnn_json.is_file():
        raise InstsegError("Mask R-CNN detections not found (the Mask R-CNN step writes them)", maskrcnn_json)
    for source in prompt_sources:
        stem = "sam_ft" if source == "maskrcnn" else "sam_ft_gt"
        for mode in modes:
            if source == "maskrcnn" or mode in GT_PROMPT_MODES:
                check_can_write(predictions_dir / f"{stem}_{mode}.json", overwrite or resume)
    out_dir = Path(out_dir)
    resume = resume and (out_dir / "run.json").is_file()
    record = finetune_sam(dataset, split, out_dir, settings, device=device, resume=resume, overwrite=overwrite,
                          quiet=quiet, split_path=split_path)
    sam = build_sam(settings.variant, out_dir / "best.pth", device)
    embeddings = None
    if settings.trainable != "all":
        image_size = int(sam.image_encoder.img_size)
        names = list(split["train"]) + list(split["val"])
        embeddings = load_or_embed(sam, dataset, names, out_dir / "embeddings.pt", embedding_key(settings, image_size, names), quiet)
    predictions: dict[str, Path] = {}
    for source in prompt_sources:
        source_modes = [m for m in modes if source == "maskrcnn" or m in GT_PROMPT_MODES]
        predictions.update({f"{source}:{mode}": path for mode, path in run_sam(
            dataset, split["val"], maskrcnn_json if source == "maskrcnn" else None, gt_path, predictions_dir,
            variant=settings.variant, modes=source_modes, score=score if source == "maskrcnn" else "sam_iou",
            device=device, overwrite=overwrite or resume, quiet=quiet, sam=sam, prompts=source, method_prefix="sam_ft",
            embeddings=embeddings,
        ).items()})
    return FinetuneStepResult(out_dir, record, predictions)


# ---------------------------------------------------------------- command line

def build_parser():
    from data.cli import add_dataset_arguments, make_parser
    from data.settings import add_arguments

    parser = make_parser("instseg-sam-train", "Fine-tune SAM on instance masks (prompts sampled from the ground truth).")
    add_dataset_arguments(parser)
    parser.add_argument("--split", required=True, help="split JSON (made with seed --seed if it does not exist)")
    parser.add_argument("--out", required=True, help="run folder (run.json, history.csv, best.pth, last.pth, resume.pt)")
    add_arguments(parser, FinetuneSettings)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available; under torchrun "
                                                         "cuda:LOCAL_RANK)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    return parser


def _main(argv: Sequence[str] | None = None) -> int:
    from data.split import make_split, read_split

    from data.cli import open_dataset
    from data.lock import lock_output_folder
    from data.settings import from_arguments

    args = build_parser().parse_args(argv)
    processes = launch_environment()
    if processes.main:
        lock_output_folder(args.out)
    settings = from_arguments(FinetuneSettings, args)
    settings.check()
    dataset = open_dataset(args)
    new_split = not Path(args.split).is_file() and not args.resume
    if new_split:
        split = make_split(dataset.names, seed=args.seed, source=str(args.data))
    else:
        split = read_split(args.split, dataset.names)
    try:
        record = finetune_sam(dataset, split, args.out, settings, device=args.device, resume=args.resume,
                              overwrite=args.overwrite, quiet=args.quiet or not processes.main, split_path=args.split,
                              write_split_to=args.split if new_split else None)
    finally:
        stop()
    if processes.main:
        print(summary(record, args.out))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from data.cli import run_cli

    return run_cli(_main, argv, resume_hint="continue with --resume")


if __name__ == "__main__":
    import sys

    sys.exit(main())

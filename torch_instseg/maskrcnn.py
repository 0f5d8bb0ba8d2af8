"""Mask R-CNN (torchvision ResNet-50-FPN v2) for cell instances: ``instseg-train`` and the names of the pieces.

The pieces, one concern each (every name stays importable from here): ``maskrcnn_data``
(instances from labels, flips and rotations, the dataset), ``maskrcnn_model`` (the network,
heads, anchors, weights), ``maskrcnn_train`` (train one epoch, evaluate, checkpoint; the run
folder's life cycle is ``data.lifecycle``'s), ``maskrcnn_predict`` (a run's model, instances,
COCO results).

The paper's recipe: COCO-initialised ``maskrcnn_resnet50_fpn_v2`` with box and mask
predictors replaced for 2 classes (background, cell); AdamW lr 3e-3, weight decay 5e-4,
batch 2, 50 epochs, ReduceLROnPlateau on the validation loss; horizontal flip p=0.5,
vertical flip p=0.3, 90-degree rotation p=0.3; the weights with the lowest validation
loss are kept. Choices the paper does not state (and these modules make): the plateau
scheduler multiplies the lr by 0.1 after 5 epochs without improvement of the validation
loss; a linear warm-up over the first epoch (torchvision's reference recipe);
a rotation, when drawn, turns by 90, 180 or 270 degrees with equal chance; the
validation loss is computed in train mode (torchvision returns losses only there)
under ``torch.no_grad`` with every BatchNorm layer in eval mode and a fixed seed; each
epoch's order is a permutation drawn from (seed, epoch), its last batch filled by wrapping
around, so a resumed run sees the order of an uninterrupted one.

Several processes (``torchrun --nproc_per_node N -m torch_instseg.maskrcnn ...``): DDP, the
global batch ``batch_size`` split over the processes, rank 0 validating and writing
(``torch_instseg.distributed``); a run resumes on any number of processes.

Outputs of a run (``out_dir``): ``run.json`` (every setting, versions, wall time,
split), ``history.csv`` (one row per epoch), ``best.pt`` and ``last.pt``.
torch is imported inside functions only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from data.cli import add_dataset_arguments, make_parser, open_dataset, run_cli
from data.lifecycle import summary
from data.lock import lock_output_folder
from data.outputs import check_can_write
from data.run_record import library_versions
from data.settings import add_arguments, from_arguments

from .distributed import launch_environment
from .errors import InstsegError  # noqa: F401
from .maskrcnn_data import (InstanceTrainingSet, apply_augmentation, augment, collate, labels_to_instances,  # noqa: F401
                            masks_to_boxes, random_augmentation, resize_sample, to_model_inputs)
from .maskrcnn_model import MODEL_NAME, build_maskrcnn, freeze_batchnorm, import_torch, read_state_dict, resolve_device  # noqa: F401
from .maskrcnn_predict import (  # noqa: F401
    CocoPredictOptions, load_model, lowres_probs, predict_instances, predict_to_coco, probs_sidecar_path,
)
from .maskrcnn_train import (LOSS_COMPONENTS, RESUME_MUST_MATCH, RUN_FILES, TrainingState, _distributed,  # noqa: F401
                             _end_distributed, build_training_state, check_training_inputs, epoch_steps, evaluate_loss,
                             load_or_resume_record, make_warmup, run_spec, save_checkpoint, train_maskrcnn, train_one_epoch)
from .settings import LR_SCHEDULES, V2_HEAD_CHANNELS, MaskRCNNSettings  # noqa: F401 - LR_SCHEDULES, V2_HEAD_CHANNELS: their old home

_versions = library_versions  # torch_instseg.sam records versions through this name


# ---------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("instseg-train", description="Fine-tune Mask R-CNN (ResNet-50-FPN v2) on cell instances.")
    add_dataset_arguments(parser)
    parser.add_argument("--split", required=True, help="split JSON (made with seed --seed if it does not exist)")
    parser.add_argument("--out", required=True, help="run folder (run.json, history.csv, best.pt, last.pt)")
    add_arguments(parser, MaskRCNNSettings)
    parser.add_argument("--head-channels", type=int, default=None,
                        help="the model option head_channels: channels of the box and mask head convolutions "
                             "(default 256, torchvision's; fewer only with --weights none)")
    parser.add_argument("--predictions", default=None, help="also write gt.json and maskrcnn.json for the validation images here")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available; under torchrun "
                                                         "cuda:LOCAL_RANK)")
    parser.add_argument("--quiet", action="store_true")
    return parser


def _nested(first: Path, second: Path) -> bool:
    """True when one folder is the other or lies inside it (one lock covers both)."""
    first, second = first.absolute(), second.absolute()
    return first == second or first in second.parents or second in first.parents


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    processes = launch_environment()
    if processes.main:
        lock_output_folder(args.out)
        if args.predictions and not _nested(Path(args.predictions), Path(args.out)):
            lock_output_folder(args.predictions)
    options = dict(args.model_options, **({} if args.head_channels is None else {"head_channels": args.head_channels}))
    settings = from_arguments(MaskRCNNSettings, args, model_options=options)
    settings.checked()
    try:
        from data.split import make_split, read_split, write_split

        dataset = open_dataset(args)
        if Path(args.split).is_file():
            split = read_split(args.split, dataset.names)
        else:
            split = make_split(dataset.names, seed=args.seed, source=str(args.data))
            if processes.main:
                write_split(args.split, split)
        if args.predictions and processes.main:
            for name in ("gt.json", "maskrcnn.json"):
                if not args.resume:
                    check_can_write(Path(args.predictions) / name, args.overwrite)
        record = train_maskrcnn(dataset, split, args.out, settings, resume=args.resume, overwrite=args.overwrite,
                                device=args.device, quiet=args.quiet or not processes.main, split_path=args.split)
        if args.predictions and processes.main and split["val"]:
            from . import coco

            predictions = Path(args.predictions)
            gt = coco.dataset_to_coco(list(dataset.subset(split["val"])))
            check_can_write(predictions / "gt.json", args.overwrite or args.resume)
            coco.write_coco(predictions / "gt.json", gt)
            predict_to_coco(args.out, dataset, split["val"], gt, predictions / "maskrcnn.json", device=args.device,
                            overwrite=args.overwrite or args.resume, quiet=args.quiet)
        if processes.main:
            print(summary(record, args.out))
    finally:
        _end_distributed()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, resume_hint="continue with --resume")


if __name__ == "__main__":
    sys.exit(main())

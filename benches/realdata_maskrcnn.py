"""Mask R-CNN on the real Usiigaci phase-contrast set (train 45, val 5), evaluated in both AP conventions.

Trains from random init (COCO weights are not available offline) with the paper's recipe
(AdamW 3e-3, weight decay 5e-4, batch 2, ReduceLROnPlateau, flips/rot90) for the epochs or
minutes given, predicts the 5 validation images at their native size and prints mAP with
11-point and 101-point interpolation (cap 100 and 300 detections), the mean epoch time,
detections per image and mean confidence. Optionally prompts SAM (random weights unless a
checkpoint is given) with the detections and times it.

CPU, reduced size, cheaper RoI sampling (what fits in half an hour on a shared machine):
    nice -n 10 .venv/bin/python benches/realdata_maskrcnn.py --image-size 256 --cheap --max-minutes 25 --threads 1
GPU (paper settings, native size):
    python benches/realdata_maskrcnn.py --device cuda --epochs 50 --max-minutes 7 --num-workers 8
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHEAP_MODEL_OPTIONS = {
    "box_batch_size_per_image": 128, "rpn_pre_nms_top_n_train": 1000, "rpn_post_nms_top_n_train": 500,
    "rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 500,
}


def read_usiigaci(root: Path, image_name: str, mask_name: str):
    """One Dataset over root/train and root/val (names are the set folders) and the split {train, val}."""
    from data import read_dataset
    from data.dataset import Dataset

    train = read_dataset(root / "train", format="per_sample", image_name=image_name, mask_name=mask_name)
    val = read_dataset(root / "val", format="per_sample", image_name=image_name, mask_name=mask_name)
    dataset = Dataset(train.entries + val.entries, str(root), "per_sample")
    return dataset, {"train": train.names, "val": val.names, "seed": None, "source": str(root)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("MSCSEG_USIIGACI", str(ROOT.parent / "shared" / "datasets" / "usiigaci")))
    parser.add_argument("--image-name", default="raw.tif")
    parser.add_argument("--mask-name", default="instances_ids.png")
    parser.add_argument("--out", default="/tmp/mscseg_realdata_maskrcnn")
    parser.add_argument("--image-size", type=int, default=None, help="train at N x N (default: native size)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop training after the epoch that passes this")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weights", default="none")
    parser.add_argument("--cheap", action="store_true", help=f"fewer RPN proposals and sampled RoIs: {CHEAP_MODEL_OPTIONS}")
    parser.add_argument("--device", default=None)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--sam", default=None, help="also prompt SAM of this variant (vit_h, vit_b, ...) with the detections")
    parser.add_argument("--sam-checkpoint", default="none")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from torch_instseg import coco, evaluate
    from torch_instseg.maskrcnn import predict_to_coco, train_maskrcnn

    if args.threads:
        torch.set_num_threads(args.threads)
    dataset, split = read_usiigaci(Path(args.root), args.image_name, args.mask_name)
    out = Path(args.out)
    started = time.time()
    record = train_maskrcnn(
        dataset, split, out / "maskrcnn", image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weights=args.weights, device=args.device, num_workers=args.num_workers, quiet=args.quiet, overwrite=True,
        max_minutes=args.max_minutes, model_options=CHEAP_MODEL_OPTIONS if args.cheap else None, split_path=str(args.root),
    )
    train_s = time.time() - started
    val_samples = list(dataset.subset(split["val"]))
    gt = coco.dataset_to_coco(val_samples)
    predictions = out / "predictions"
    coco.write_coco(predictions / "gt.json", gt)
    started = time.time()
    predict_to_coco(out / "maskrcnn", dataset, split["val"], gt, predictions / "maskrcnn.json", device=args.device, overwrite=True)
    predict_s = time.time() - started
    methods = {"maskrcnn": predictions / "maskrcnn.json"}
    sam_s = None
    if args.sam:
        from torch_instseg.sam import run_sam

        started = time.time()
        methods.update({f"sam_{mode}": path for mode, path in run_sam(
            dataset, split["val"], predictions / "maskrcnn.json", gt, predictions, variant=args.sam,
            checkpoint=args.sam_checkpoint, device=args.device, overwrite=True, quiet=args.quiet).items()})
        sam_s = time.time() - started
    import pandas as pd

    tables = [evaluate.instance_table(gt, methods, max_dets=cap, interpolation=interpolation)
              for interpolation in (11, 101) for cap in (100, 300)]
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(out / "instance_table.csv", index=False)
    history = pd.read_csv(out / "maskrcnn" / "history.csv")
    summary = {
        "device": record["details"]["device"], "image_size": args.image_size or "native", "cheap": args.cheap,
        "epochs_done": record["epochs_done"], "status": record["status"], "best_epoch": record["best_epoch"],
        "epoch_time_s_mean": record["epoch_time_s_mean"], "train_wall_s": round(train_s, 1),
        "predict_5_val_s": round(predict_s, 1), "sam_all_modes_s": None if sam_s is None else round(sam_s, 1),
        "final_train_loss": float(history["train_loss"].iloc[-1]), "best_val_loss": record["best_loss"],
    }
    (out / "bench.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(history[["epoch", "train_loss", "val_loss", "lr", "time_s"]].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

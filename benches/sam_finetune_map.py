"""mAP of a fine-tuned SAM against the model it started from, on the validation images of its run.

The starting model is rebuilt from the run's settings (the released checkpoint, or the
same seeded random weights); both are prompted with the ground-truth boxes (``--prompts
gt``: SAM's mask quality apart from a detector's misses) and, with ``--maskrcnn``, with
the Mask R-CNN detections. When the encoder was frozen, the run's cached embeddings are
reused, so only the decoder runs. Prints one row per model x prompt source x mode and
writes ``summary.csv`` to ``--out``.

    python benches/sam_finetune_map.py --data DATA --split split.json --run RUN --out OUT \
        [--maskrcnn maskrcnn.json] [--format per_sample --image-name raw.tif --mask-name instances_ids.png]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from data.outputs import write_csv
    from data.run_record import read_record
    from data.split import read_split
    from torch_instseg import coco
    from torch_instseg.evaluate import evaluate
    from data.cli import add_dataset_arguments, open_dataset
    from torch_instseg.sam import build_sam, run_sam
    from torch_instseg.sam_finetune import FinetuneSettings, build_for_training, embedding_key, load_or_embed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_arguments(parser)
    parser.add_argument("--split", required=True)
    parser.add_argument("--run", required=True, help="instseg-sam-train run folder")
    parser.add_argument("--out", required=True, help="folder for gt.json, the results and summary.csv")
    parser.add_argument("--maskrcnn", default=None, help="Mask R-CNN results on the same validation images (optional)")
    parser.add_argument("--gt-modes", default="box,box_point", help="prompt modes with the ground-truth boxes")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    run = Path(args.run)
    record = read_record(run)
    known = FinetuneSettings.__dataclass_fields__
    settings = FinetuneSettings(**{k: v for k, v in record.settings.items() if k in known})
    dataset = open_dataset(args)
    split = read_split(args.split, dataset.names)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gt = coco.dataset_to_coco(list(dataset.subset(split["val"])))
    coco.write_coco(out / "gt.json", gt)
    models = {"sam": build_for_training(settings, args.device), "sam_ft": build_sam(settings.variant, run / "best.pth", args.device)}
    embeddings = None
    if settings.trainable != "all":
        names = list(split["train"]) + list(split["val"])
        image_size = int(models["sam"].image_encoder.img_size)
        embeddings = load_or_embed(models["sam"], dataset, names, run / "embeddings.pt", embedding_key(settings, image_size, names))
    rows = []
    sources = {"gt": tuple(mode for mode in args.gt_modes.split(",") if mode)}
    if args.maskrcnn:
        sources["maskrcnn"] = ("box", "box_point", "box_mask")
    for prefix, sam in models.items():
        for source, modes in sources.items():
            started = time.time()
            paths = run_sam(dataset, split["val"], args.maskrcnn if source == "maskrcnn" else None, gt, out,
                            variant=settings.variant, modes=modes, score="sam_iou" if source == "gt" else "maskrcnn",
                            device=args.device, overwrite=True, sam=sam, prompts=source, method_prefix=prefix, embeddings=embeddings)
            seconds = time.time() - started
            for mode, path in paths.items():
                for interpolation in (11, 101):
                    summary = evaluate(gt, path, interpolation=interpolation, max_dets=300 if interpolation == 11 else 100)
                    rows.append({"model": "fine-tuned" if prefix == "sam_ft" else "start", "method": path.stem,
                                 "prompts": source, "mode": mode, "interpolation": interpolation,
                                 "mAP": summary["mAP"], "AP50": summary["AP50"], "AP75": summary["AP75"],
                                 "predict_s_all_modes": round(seconds, 1)})
    table = pd.DataFrame(rows)
    write_csv(out / "summary.csv", table)
    print(f"run {run}: {settings.variant}, trainable {settings.trainable}, start {settings.checkpoint}, "
          f"{record.epochs_done} epochs, best {record.best_epoch}, fine-tuning wall time {record.wall_time_s:.0f} s")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Real micrographs end to end: a U-Net trained from random weights on usiigaci, then mscseg-predict with defaults.

1. ``semseg-train`` on ``usiigaci/train`` (45 phase-contrast micrographs 1022 x 1024,
   80:20 split of them for the best epoch), random encoder weights, ``--image-size``
   (default 256), stopped with Ctrl-C (SIGINT: the run keeps its best weights) when the
   training process has used ``--cpu-minutes`` of CPU time or ``--wall-minutes`` have
   passed. Skipped when ``--out/unet/best.weights.h5`` exists (``--no-train``).
2. ``mscseg-predict`` on the 5 ``usiigaci/val`` images with default settings (training
   geometry, threshold, minimum area), plus ``--coco`` with the validation ground truth
   converted by ``python -m data convert --to coco``.
3. Per image: cells and confluence predicted vs the truth (``instances_ids.png``),
   seconds per image; and the mask mAP of the predicted cells (11- and 101-point).

    nice -n 10 python benches/realdata_unet.py --out /tmp/realdata_unet [--cpu-minutes 25] [--image-size 256]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("MSCSEG_USIIGACI", ROOT.parent / "shared" / "datasets" / "usiigaci"))
READER = ["--format", "per_sample", "--image-name", "raw.tif", "--mask-name", "instances_ids.png"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def train(data: Path, out: Path, image_size: int, cpu_minutes: float, wall_minutes: float) -> dict:
    command = [sys.executable, "-m", "keras_semseg.train", "--data", str(data / "train"), *READER,
               "--split", str(out / "split.json"), "--model", "unet", "--out", str(out / "unet"), "--epochs", "200",
               "--image-size", str(image_size), "--batch-size", "4", "--encoder-weights", "none", "--quiet"]
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(command)
    used = {"cpu_s": 0.0}

    def watch() -> None:
        while process.poll() is None:
            try:
                used["cpu_s"] = cpu_seconds(process.pid)
            except OSError:
                return
            if used["cpu_s"] >= 60 * cpu_minutes or time.perf_counter() - started >= 60 * wall_minutes:
                process.send_signal(signal.SIGINT)
                return
            time.sleep(5)

    threading.Thread(target=watch, daemon=True).start()
    process.wait()
    from data.run_record import read_record

    record = read_record(out / "unet").to_dict()
    print(f"training stopped after {record.get('epochs_done')} epochs (best {record.get('best_epoch')}), "
          f"{used['cpu_s'] / 60:.1f} CPU min, {(time.perf_counter() - started) / 60:.1f} wall min", flush=True)
    return record


def truth_counts(path: Path) -> tuple[int, float]:
    from data.imageio import read_labels

    labels = read_labels(path)
    return int(np.unique(labels[labels > 0]).size), float((labels > 0).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--cpu-minutes", type=float, default=25.0)
    parser.add_argument("--wall-minutes", type=float, default=60.0)
    parser.add_argument("--no-train", action="store_true", help="use the run already in --out/unet")
    args = parser.parse_args(argv)
    if not (args.data / "train").is_dir():
        print(f"error: {args.data}: usiigaci not found (set MSCSEG_USIIGACI)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_train and not (args.out / "unet" / "best.weights.h5").is_file():
        train(args.data, args.out, args.image_size, args.cpu_minutes, args.wall_minutes)

    val_images = sorted((args.data / "val").glob("*/raw.tif"))
    gt = args.out / "val_gt.json"
    if not gt.is_file():
        subprocess.run([sys.executable, "-m", "data", "convert", str(args.data / "val"), *READER, "--to", "coco",
                        "--out", str(gt)], check=True)
    predict_out = args.out / "predict"
    command = [sys.executable, "-m", "mscseg.predict", "--model", str(args.out / "unet"), "--images",
               *map(str, val_images), "--out", str(predict_out), "--coco", str(args.out / "val_pred.json"),
               "--coco-gt", str(gt), "--overwrite"]
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    total_s = time.perf_counter() - started

    import pandas as pd

    counts = pd.read_csv(predict_out / "counts.csv")
    rows = []
    for path, row in zip(val_images, counts.itertuples()):
        cells, confluence = truth_counts(path.parent / "instances_ids.png")
        rows.append({"image": row.image, "cells_true": cells, "cells_pred": row.cell_count,
                     "confluence_true": round(confluence, 4), "confluence_pred": round(row.confluence, 4),
                     "seconds": row.seconds, "tiles": row.tiles, "min_area_px": row.min_area_px})
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "realdata_unet.csv", index=False)
    print(table.to_string(index=False))
    record = json.loads((predict_out / "predict.json").read_text())
    print(f"threshold {record['threshold']} ({record['threshold_source']}); scale {record['scale']} ({record['scale_source']}); "
          f"min area {record['min_area_px']} px ({record['min_area_source']})")
    print(f"mscseg-predict: {total_s:.1f} s for {len(val_images)} images including start-up and model loading; "
          f"{table['seconds'].mean():.2f} s per image inside the loop")
    from torch_instseg.evaluate import evaluate

    for interpolation in (11, 101):
        summary = evaluate(gt, args.out / "val_pred.json", interpolation=interpolation, max_dets=None)
        print(f"mask mAP@[.50:.95] ({interpolation}-point, no cap): {summary['mAP']:.3f}  AP50 {summary['AP50']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

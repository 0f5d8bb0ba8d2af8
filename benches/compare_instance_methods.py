"""Every instance method side by side from one finished run (issue 26): AP, counts, confluence, CPU and predict time.

    python benches/compare_instance_methods.py results/usiigaci [--out /tmp/peers_bench]

For each method of the run's instance table (Mask R-CNN, SAM rows, the peers Cellpose and StarDist),
on the run's validation images:

- mAP (11- and 101-point), AP50 and AP75 (11-point): the run's ``instance/instance_table.csv``, scored by
  this project's matcher with the run's detection caps;
- count error and confluence error per image (then their mean): |cells found - cells annotated| and
  |cell area fraction found - annotated|. A method with a run folder that ``mscseg-predict`` takes
  (Mask R-CNN, Cellpose, StarDist) is counted from what ``mscseg-predict`` writes (counts.csv; Mask R-CNN
  at the run's ``instance.score_threshold``, a peer at its own thresholds); the SAM rows, which have no
  such folder, from their COCO results at that same score threshold;
- training CPU minutes: run.json's ``details.cpu_time_s`` of the run that trained the method (Mask R-CNN,
  SAM fine-tuning, the peer; the zero-shot SAM rows train nothing);
- predict seconds per image: the wall time of the whole ``mscseg-predict`` command (start-up, model
  loading and every image) divided by the number of images.

Writes ``summary.csv`` (one row per method) and ``per_image.csv`` (method x image) into ``--out`` and prints
the summary. ``--in-process`` runs mscseg-predict in this process (its start-up not counted; for tests).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.coco_codec import decode_rle  # noqa: E402
from mscseg.layout import Layout  # noqa: E402


def _gt_per_image(gt: dict) -> dict[str, dict]:
    """{file_name: {"image_id", "count", "confluence"}} of the COCO ground truth."""
    out = {}
    for image in gt["images"]:
        shape = (int(image["height"]), int(image["width"]))
        out[image["file_name"]] = {"image_id": int(image["id"]), "shape": shape, "count": 0, "mask": np.zeros(shape, bool)}
    by_id = {v["image_id"]: v for v in out.values()}
    for annotation in gt["annotations"]:
        entry = by_id[int(annotation["image_id"])]
        entry["count"] += 1
        entry["mask"] |= decode_rle(annotation["segmentation"]).astype(bool)
    for entry in out.values():
        entry["confluence"] = float(entry.pop("mask").mean())
    return out


def _from_results(results_path: Path, gt: dict[str, dict], threshold: float) -> dict[str, tuple[int, float]]:
    """{image: (detections with score >= threshold, fraction of pixels they cover)} of a COCO results file."""
    results = json.loads(results_path.read_text())
    found = {}
    for name, entry in gt.items():
        mask = np.zeros(entry["shape"], bool)
        count = 0
        for detection in results:
            if int(detection["image_id"]) == entry["image_id"] and float(detection["score"]) >= threshold:
                count += 1
                mask |= decode_rle(detection["segmentation"]).astype(bool)
        found[name] = (count, float(mask.mean()))
    return found


def _image_paths(root: Path, settings: dict, names: Sequence[str]) -> dict[str, Path]:
    """{validation image name: image file} of the run's instance dataset."""
    from data import read_dataset

    spec = settings["instance"]["dataset"]
    if spec.get("synthetic"):
        dataset = read_dataset(Layout(root).synthetic_data("instance"), format="folders")
    else:
        dataset = read_dataset(spec["path"], spec.get("format"), **(spec.get("options") or {}))
    sources = {entry.name: Path(entry.source) for entry in dataset.entries}
    return {name: sources[name] for name in names}


def run_predict(run_dir: Path, images: dict[str, Path], out: Path, threshold: float | None, in_process: bool
                ) -> tuple[dict[str, tuple[int, float]], float]:
    """({image: (cell count, confluence)} from mscseg-predict's counts.csv, wall seconds of the whole command)."""
    argv = ["--model", str(run_dir), "--images", *map(str, images.values()), "--out", str(out), "--overwrite"]
    argv += ["--threshold", str(threshold)] if threshold is not None else []
    started = time.perf_counter()
    if in_process:
        from mscseg.predict import main

        code = main(argv)
    else:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        code = subprocess.run([sys.executable, "-m", "mscseg.predict", *argv], env=env, stdout=subprocess.DEVNULL).returncode
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"mscseg-predict --model {run_dir} failed with status {code}")
    record = json.loads((out / "predict.json").read_text())
    name_of = {str(Path(path).resolve()): name for name, path in images.items()}
    predicted = {name_of[str(Path(path).resolve())]: key for key, path in record["images"].items()}
    counts = pd.read_csv(out / "counts.csv", dtype={"image": str}).set_index("image")
    return {name: (int(counts.loc[key, "cell_count"]), float(counts.loc[key, "confluence"]))
            for name, key in predicted.items()}, seconds


def _cpu_minutes(run_dir: Path) -> float:
    from data.errors import MscsegError
    from data.run_record import read_record

    try:
        cpu = read_record(run_dir).details.get("cpu_time_s")
    except MscsegError:
        return math.nan
    return float(cpu) / 60.0 if cpu is not None else math.nan


def bench(root: Path, out: Path, in_process: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary: one row per method, per_image: one row per method x image) of the finished run ``root``."""
    from mscseg.config import PEER_NAMES
    from mscseg.steps import absent_methods, instance_methods
    from mscseg.run import settings_from_config_json

    layout = Layout(root)
    config = json.loads(layout.config_json.read_text())["settings"]
    settings = settings_from_config_json(layout.config_json)
    methods = instance_methods(settings.instance)
    absent = absent_methods(layout, methods)
    table = pd.read_csv(layout.instance_table)
    gt = _gt_per_image(json.loads(layout.prediction("gt").read_text()))
    images = _image_paths(root, config, list(gt))
    threshold = float(settings.instance.score_threshold)
    runs = {"maskrcnn": layout.maskrcnn, **{name: layout.peer_run(name) for name in PEER_NAMES}}
    summary, per_image = [], []
    for method in methods:
        row: dict = {"method": method}
        for interpolation in (11, 101):
            found = table[(table["method"] == method) & (table["interpolation"] == interpolation)]
            row[f"mAP_{interpolation}"] = float(found["mAP"].iloc[0]) if len(found) else math.nan
            if interpolation == 11:
                row["AP50"] = float(found["AP50"].iloc[0]) if len(found) else math.nan
                row["AP75"] = float(found["AP75"].iloc[0]) if len(found) else math.nan
        if method in absent:
            summary.append({**row, "absent": absent[method]})
            continue
        seconds = math.nan
        if method in runs:
            found, wall = run_predict(runs[method], images, out / "predict" / method,
                                      threshold if method == "maskrcnn" else None, in_process)
            seconds, source = wall / len(images), "mscseg-predict"
        else:
            found, source = _from_results(layout.prediction(method), gt, threshold), f"results, score >= {threshold:g}"
        for name, truth in gt.items():
            count, confluence = found[name]
            per_image.append({"method": method, "image": name, "cells": truth["count"], "cells_found": count,
                              "count_error": abs(count - truth["count"]), "confluence": truth["confluence"],
                              "confluence_found": confluence, "confluence_error": abs(confluence - truth["confluence"])})
        mine = [r for r in per_image if r["method"] == method]
        trained_by = (layout.maskrcnn if method == "maskrcnn" else layout.sam_finetune if method.startswith("sam_ft")
                      else runs.get(method))
        summary.append({**row, "count_error": float(np.mean([r["count_error"] for r in mine])),
                        "count_error_rel": float(np.mean([r["count_error"] / max(1, r["cells"]) for r in mine])),
                        "confluence_error": float(np.mean([r["confluence_error"] for r in mine])),
                        "train_cpu_min": _cpu_minutes(trained_by) if trained_by is not None else math.nan,
                        "predict_s_per_image": seconds, "counted_from": source, "absent": ""})
    return pd.DataFrame(summary), pd.DataFrame(per_image)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a finished mscseg-run results folder (e.g. results/usiigaci)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mscseg_peers_bench"), help="where the tables and predict outputs go")
    parser.add_argument("--in-process", action="store_true", help="run mscseg-predict in this process (tests)")
    args = parser.parse_args(argv)
    from data.outputs import write_csv

    summary, per_image = bench(args.results, args.out, args.in_process)
    write_csv(args.out / "summary.csv", summary)
    write_csv(args.out / "per_image.csv", per_image)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"tables in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

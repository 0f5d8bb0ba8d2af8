"""Benchmark: does the default run (``small`` preset) show every model learning?

Runs ``python -m mscseg.run --config small`` into a fresh folder (or reads a finished
results folder given with ``--results``) and prints each model's figure against the
targets of issue 16, one line per target, ``ok`` or ``MISS``:

- semantic (Table 1, at each model's Dice-optimal threshold, >= 12 validation images):
  U-Net Dice >= 0.85; DeepLabV3+, SegNet, Keras Mask R-CNN >= 0.75; the optimal
  threshold inside (0.05, 0.95);
- instance (11-point interpolation, >= 8 validation images): Mask R-CNN mAP@[.50:.95]
  >= 0.30, AP50 >= 0.60, detections per image within 25% of the true cell count; the
  best SAM row >= 0.20 mAP; the peers (issue 26), Cellpose and StarDist: mAP >= 0.25,
  AP50 >= 0.60, detections per image within 25%;
- statistics: Friedman's p-value defined for every metric of both studies;
- the wall time of all steps (from the logs' run records) <= 15 minutes, when the
  script ran the preset itself.

A benchmark, not a test: the numbers depend on the machine only through time, but a
slow machine makes the same numbers. Exit status 0 when every line is ok.

    PYTHONPATH=$PWD nice -n 5 python benches/demo_learning.py [--results results/small] [--config small] [--seed N]

``--seed N`` runs the preset with training seed N (the data and split unchanged), so a
claim is shown not to rest on one seed; each line prints its margin past the target.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEMANTIC_TARGETS = {"unet": 0.85, "deeplabv3plus": 0.75, "segnet": 0.75, "maskrcnn": 0.75}
THRESHOLD_RANGE = (0.05, 0.95)
MIN_SEMANTIC_VAL, MIN_INSTANCE_VAL = 12, 8
MASKRCNN_MAP, MASKRCNN_AP50, COUNT_TOLERANCE = 0.30, 0.60, 0.25
SAM_MAP = 0.20
PEER_MAP, PEER_AP50 = 0.25, 0.60
DETECTOR_TARGETS = (("maskrcnn", "Mask R-CNN", MASKRCNN_MAP, MASKRCNN_AP50),
                    ("cellpose", "Cellpose (peer)", PEER_MAP, PEER_AP50),
                    ("stardist", "StarDist (peer)", PEER_MAP, PEER_AP50))
"""(method, label, mAP target, AP50 target): Mask R-CNN's of issue 16, the peers' of issue 26; counts within 25%."""
WALL_LIMIT_S = 15 * 60


def _line(ok: bool, label: str, value: str, target: str, margin: float | None = None) -> dict:
    """One target line; ``margin``: how far the value is past the target (negative: short of it)."""
    shown = "" if margin is None or math.isnan(margin) else f"   margin {margin:+.3f}"
    print(f"{'ok  ' if ok else 'MISS'}  {label:<44} {value:>14}   target {target}{shown}", flush=True)
    return {"target": label, "value": value, "wanted": target, "ok": bool(ok), "margin": margin}


def _number(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def semantic_lines(results: Path) -> list[dict]:
    import pandas as pd

    table1 = results / "semantic" / "sweep" / "table1.csv"
    if not table1.is_file():
        return [_line(False, "semantic Table 1", "missing", str(table1))]
    table = pd.read_csv(table1).set_index("model")
    split = json.loads((results / "split.json").read_text())
    lines = [_line(len(split["val"]) >= MIN_SEMANTIC_VAL, "semantic validation images", str(len(split["val"])),
                   f">= {MIN_SEMANTIC_VAL}")]
    for model, target in SEMANTIC_TARGETS.items():
        if model not in table.index:
            lines.append(_line(False, f"{model} Dice", "not run", f">= {target}"))
            continue
        dice, threshold = _number(table.loc[model, "dice_mean"]), _number(table.loc[model, "threshold"])
        lines.append(_line(dice >= target, f"{model} Dice at its optimal threshold", f"{dice:.3f}", f">= {target}",
                           dice - target))
        lines.append(_line(THRESHOLD_RANGE[0] < threshold < THRESHOLD_RANGE[1], f"{model} Dice-optimal threshold",
                           f"{threshold:.2f}", f"inside {THRESHOLD_RANGE}"))
    return lines


def detector_lines(table, method: str, label: str, map_target: float, ap50_target: float) -> list[dict]:
    """mAP, AP50 and count lines of one instance method (a row of the 11-point instance table), or one 'missing' line."""
    if method not in table.index:
        return [_line(False, f"{label} row", "missing", "present")]
    row = table.loc[method]
    lines = [_line(_number(row["mAP"]) >= map_target, f"{label} mAP@[.50:.95] (11-point)", f"{_number(row['mAP']):.3f}",
                   f">= {map_target}", _number(row["mAP"]) - map_target),
             _line(_number(row["AP50"]) >= ap50_target, f"{label} AP50 (11-point)", f"{_number(row['AP50']):.3f}",
                   f">= {ap50_target}", _number(row["AP50"]) - ap50_target)]
    truth, found = _number(row["cells_per_image"]), _number(row["detections_per_image"])
    close = truth > 0 and abs(found - truth) <= COUNT_TOLERANCE * truth
    lines.append(_line(close, f"{label} detections per image", f"{found:.1f} / {truth:.1f}",
                       f"within {COUNT_TOLERANCE:.0%} of truth",
                       COUNT_TOLERANCE - abs(found - truth) / truth if truth > 0 else math.nan))
    return lines


def instance_lines(results: Path) -> list[dict]:
    import pandas as pd

    path = results / "instance" / "instance_table.csv"
    if not path.is_file():
        return [_line(False, "instance table", "missing", str(path))]
    table = pd.read_csv(path)
    table = table[table["interpolation"] == 11].set_index("method")
    split = json.loads((results / "instance" / "split.json").read_text())
    lines = [_line(len(split["val"]) >= MIN_INSTANCE_VAL, "instance validation images", str(len(split["val"])),
                   f">= {MIN_INSTANCE_VAL}")]
    for method, label, map_target, ap50_target in DETECTOR_TARGETS:
        lines += detector_lines(table, method, label, map_target, ap50_target)
    sam = table[[method.startswith("sam") for method in table.index]]
    if len(sam):
        best = sam["mAP"].astype(float).idxmax()
        lines.append(_line(_number(sam.loc[best, "mAP"]) >= SAM_MAP, f"best SAM mode mAP ({best})",
                           f"{_number(sam.loc[best, 'mAP']):.3f}", f">= {SAM_MAP}", _number(sam.loc[best, "mAP"]) - SAM_MAP))
    return lines


def stats_lines(results: Path) -> list[dict]:
    import pandas as pd

    lines = []
    for study, folder in (("semantic", results / "semantic" / "stats"), ("instance", results / "instance" / "stats")):
        path = folder / "tests.csv"
        if not path.is_file():
            lines.append(_line(False, f"{study} statistics", "missing", str(path)))
            continue
        tests = pd.read_csv(path)
        friedman = tests[tests["test"].astype(str).str.lower().str.startswith("friedman")]
        undefined = sorted(friedman.loc[friedman["p_value"].isna(), "metric"].astype(str))
        lines.append(_line(len(friedman) > 0 and not undefined, f"{study} Friedman p defined for every metric",
                           "all" if not undefined else f"not: {','.join(undefined)}", "every metric"))
    return lines


def step_times(results: Path) -> dict[str, float]:
    """Seconds per training run, from the run records (run.json ``wall_time_s``)."""
    from data.run_record import RUN_JSON, read_record

    times = {}
    for path in sorted(results.glob(f"*/*/{RUN_JSON}")):
        times[f"{path.parent.parent.name}/{path.parent.name}"] = float(read_record(path.parent).wall_time_s or 0.0)
    return times


def seed_config(base: str, seed: int, folder: Path) -> Path:
    """A config file that is ``base`` with every training seed set to ``seed`` (semantic, Mask R-CNN, SAM fine-tuning,
    the peers)."""
    path = folder / f"{Path(base).stem}_seed{seed}.json"
    from peers import PEER_NAMES

    peers = {name: {"seed": seed} for name in PEER_NAMES}
    path.write_text(json.dumps({"base": base, "name": f"{Path(base).stem}_seed{seed}", "semantic": {"seed": seed},
                                "instance": {"seed": seed, "sam_finetune": {"seed": seed}, "peers": peers}}, indent=1))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, help="a finished results folder to read instead of running the preset")
    parser.add_argument("--config", default="small", help="preset or config file to run (default small)")
    parser.add_argument("--seed", type=int, default=None,
                        help="run the preset with this training seed (weights, data order, augmentation, RoI and prompt "
                        "sampling) instead of its own; the data and split stay the same")
    parser.add_argument("--json", type=Path, help="also write the lines as JSON here")
    args = parser.parse_args(argv)

    wall_s = None
    results = args.results
    if results is None:
        results = Path(tempfile.mkdtemp(prefix="demo_learning_")) / "run"
        config = args.config if args.seed is None else str(seed_config(args.config, args.seed, results.parent))
        started = time.perf_counter()
        command = [sys.executable, "-m", "mscseg.run", "--config", config, "--out", str(results)]
        print("running:", " ".join(command), flush=True)
        finished = subprocess.run(command, env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", os.getcwd())})
        wall_s = time.perf_counter() - started
        if finished.returncode != 0:
            print(f"the run failed (exit {finished.returncode}); reading what it finished", flush=True)
    if not results.is_dir():
        parser.error(f"{results}: no such results folder")
    print(f"results: {results}")
    lines = semantic_lines(results) + instance_lines(results) + stats_lines(results)
    if wall_s is not None:
        lines.append(_line(wall_s <= WALL_LIMIT_S, "all steps, wall time", f"{wall_s / 60:.1f} min", "<= 15 min"))
    for name, seconds in step_times(results).items():
        print(f"      {name:<44} {seconds:>10.0f} s")
    met = sum(line["ok"] for line in lines)
    print(f"{met} of {len(lines)} targets met")
    if args.json:
        args.json.write_text(json.dumps({"results": str(results), "wall_s": wall_s, "lines": lines}, indent=1))
    return 0 if met == len(lines) else 1


if __name__ == "__main__":
    sys.exit(main())

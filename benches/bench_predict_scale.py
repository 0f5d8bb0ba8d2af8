"""Images per second of mscseg-predict: the serial command, one Dask worker and two, and the same files from each.

A U-Net trained for one short epoch on four 1000 x 1000 micrographs resized to 256
(``semseg-train`` from random weights: speed, not skill) predicts 20 new synthetic 1000 x 1000
micrographs (``data.synthetic.generate_sample``) three times in one run of this script: the
serial command, ``--workers 1`` and ``--workers 2`` (a local Dask cluster of one-thread worker
processes). Each is timed as the whole ``mscseg-predict`` command (start-up, cluster start,
model loading in every worker, every image), so the ratios hold on a noisy machine. The
distributed outputs are then compared with the serial run's: every per-image file byte for
byte, counts.csv without its ``seconds`` column, predict.json without ``execution``.

    python benches/bench_predict_scale.py [--images 20] [--workers 1 2] [--model RUN_DIR] [--json FILE]

Two workers need two free cores to be faster than one: on a shared machine say how many it had.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benches"))

from bench_predict_geometry import make_images, train_unet  # noqa: E402

IMAGE_FOLDERS = ("masks", "labels", "overlays", "cells")


def time_predict(run: Path, images: Path, out: Path, extra: list[str]) -> float:
    """Wall seconds of the whole mscseg-predict command."""
    command = [sys.executable, "-m", "mscseg.predict", "--model", str(run), "--images", str(images), "--out", str(out),
               *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def differences(reference: Path, other: Path) -> list[str]:
    """What differs between two outputs folders beyond counts.csv's seconds and predict.json's execution ([]: none)."""
    import pandas as pd

    def files(out: Path) -> dict[str, bytes]:
        return {p.relative_to(out).as_posix(): p.read_bytes() for folder in IMAGE_FOLDERS for p in (out / folder).iterdir()}

    expected, found = files(reference), files(other)
    problems = [path for path in sorted(set(expected) | set(found)) if expected.get(path) != found.get(path)]
    counts = [pd.read_csv(out / "counts.csv", dtype=str, keep_default_na=False).drop(columns="seconds")
              for out in (reference, other)]
    if not counts[0].equals(counts[1]):
        problems.append("counts.csv")
    records = [{key: value for key, value in json.loads((out / "predict.json").read_text()).items() if key != "execution"}
               for out in (reference, other)]
    if records[0] != records[1]:
        problems.append("predict.json")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20, help="how many micrographs to predict (default 20)")
    parser.add_argument("--size", type=int, default=1000, help="micrograph side in pixels (default 1000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Dask worker counts to time (default 1 2)")
    parser.add_argument("--model", type=Path, help="an existing semantic run folder (default: train a U-Net here)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} CPU core(s) visible; {args.images} micrographs of {args.size} x {args.size} px")
    with tempfile.TemporaryDirectory(prefix="bench_predict_scale_") as temp:
        work = Path(temp)
        run = args.model or train_unet(work, args.size)
        (work / "new").mkdir()
        make_images(work / "new", args.images, args.size, seed=200)
        rows = {}
        for mode, extra in [("serial", [])] + [(f"{n} worker(s)", ["--workers", str(n)]) for n in args.workers]:
            out = work / mode.replace(" ", "_").replace("(", "").replace(")", "")
            seconds = time_predict(run, work / "new", out, extra)
            problems = [] if mode == "serial" else differences(work / "serial", out)
            rows[mode] = {"seconds": seconds, "images_per_second": args.images / seconds, "identical_to_serial": not problems}
            same = "" if mode == "serial" else ("; outputs identical to the serial run" if not problems else
                                                f"; DIFFERENT from the serial run: {', '.join(problems[:5])}")
            print(f"{mode:14s} {args.images / seconds:6.3f} images/s ({seconds:6.1f} s, whole command){same}", flush=True)
        for mode, row in rows.items():
            if mode != "serial":
                print(f"{mode} / serial: {row['images_per_second'] / rows['serial']['images_per_second']:.2f}x images/s")
        if args.json:
            args.json.write_text(json.dumps({"cpus": os.cpu_count(), "images": args.images, "size": args.size, "rows": rows},
                                            indent=2))
    return 0 if all(row["identical_to_serial"] for row in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

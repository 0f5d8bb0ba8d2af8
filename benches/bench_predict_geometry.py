"""Seconds per 1000 x 1000 micrograph for a semantic run predicted at its training geometry, against scale 1.

A U-Net trained on 1000 x 1000 micrographs resized whole to 256 (``semseg-train``, a few
steps from random weights: speed, not skill) meets new 1000 x 1000 micrographs in one of
two ways, each timed as the whole ``mscseg-predict`` command (start-up, model loading,
every image) in one run of this script, so the ratio holds on a noisy machine:

- default: the training geometry from run.json (scale 0.256, one tile per image, as in training);
- ``--scale 1``: the fallback when a run records no geometry (tiles of 256 px at full resolution).

    python benches/bench_predict_geometry.py [--images 4] [--model RUN_DIR]

``--model`` times an existing semantic run folder instead (e.g. ``results/small/semantic/unet``).
Prints one line per mode and the ratio; ``--json`` also writes them.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_images(folder: Path, count: int, size: int, seed: int) -> list[Path]:
    """``count`` synthetic size x size micrographs (8-bit PNG) in ``folder``."""
    from data.imageio import write_png
    from data.synthetic import generate_sample

    paths = []
    for index in range(count):
        sample = generate_sample((size, size), "dense", seed=seed + index, name=f"frame{index:03d}")
        paths.append(folder / f"{sample.name}.png")
        write_png(paths[-1], (sample.image[..., 0] * 255).astype(np.uint8))
    return paths


def train_unet(work: Path, size: int) -> Path:
    """A U-Net run trained for one short epoch on four size x size micrographs resized to 256."""
    from data.synthetic import write_dataset

    data, run = work / "train_data", work / "unet"
    write_dataset(data, n_images=4, size=size, density="dense", seed=0)
    command = [sys.executable, "-m", "keras_semseg.train", "--data", str(data), "--split", str(work / "split.json"),
               "--out", str(run), "--model", "unet", "--image-size", "256", "--epochs", "1", "--batch-size", "2",
               "--encoder-weights", "none", "--quiet"]
    subprocess.run(command, check=True, cwd=ROOT)
    return run


def time_predict(run: Path, images: Path, out: Path, extra: list[str]) -> tuple[float, dict]:
    """(wall seconds of the whole mscseg-predict command, its predict.json)."""
    command = [sys.executable, "-m", "mscseg.predict", "--model", str(run), "--images", str(images), "--out", str(out),
               *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started, json.loads((out / "predict.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="how many 1000 x 1000 micrographs to predict (default 4)")
    parser.add_argument("--size", type=int, default=1000, help="micrograph side in pixels (default 1000)")
    parser.add_argument("--model", type=Path, help="an existing semantic run folder (default: train a U-Net here)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_predict_geometry_") as temp:
        work = Path(temp)
        run = args.model or train_unet(work, args.size)
        (work / "new").mkdir()
        make_images(work / "new", args.images, args.size, seed=100)
        rows = {}
        for mode, extra in (("training geometry", []), ("scale 1 (no geometry)", ["--scale", "1"])):
            seconds, record = time_predict(run, work / "new", work / mode.split()[0], extra)
            rows[mode] = {"seconds_per_image": seconds / args.images, "scale": record["scale"], "tile_px": record["tile_px"],
                          "min_area_px": record["min_area_px"], "scale_source": record["scale_source"]}
            tiles = "x".join(str(t) for t in record["tile_px"])
            print(f"{mode:24s} {seconds / args.images:7.2f} s per {args.size} px micrograph (whole command, {args.images} "
                  f"images); scale {record['scale']}, tiles of {tiles} image px, min area {record['min_area_px']} px")
        ratio = rows["scale 1 (no geometry)"]["seconds_per_image"] / rows["training geometry"]["seconds_per_image"]
        print(f"scale 1 / training geometry: {ratio:.1f}x the time per micrograph")
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

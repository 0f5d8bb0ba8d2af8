"""What the ``deterministic`` setting costs per training step on this machine (U-Net in Keras, Mask R-CNN in torch).

Each trainer runs four times on the same small synthetic set, in the order
``--deterministic``, ``--no-deterministic``, ``--no-deterministic``, ``--deterministic``
(so a drift of the machine's load falls on both alike), each in a process of its own
(TensorFlow's op determinism is a process-wide switch); the per-epoch times come from the
runs' history.csv, the first epoch (graph building, warm-up) left out. Printed as seconds
per step and the ratio, from one run of this script.

    python benches/bench_determinism.py [--epochs 3]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAINERS = {
    "U-Net (Keras)": ["-m", "keras_semseg.train", "--model", "unet", "--image-size", "128", "--batch-size", "4",
                      "--encoder-weights", "none", "--steps-per-epoch", "8"],
    "Mask R-CNN (torch)": ["-m", "torch_instseg.maskrcnn", "--weights", "none", "--image-size", "128", "--batch-size", "2",
                           "--device", "cpu", "--head-channels", "64"],
}


ORDER = ("--deterministic", "--no-deterministic", "--no-deterministic", "--deterministic")


def seconds_per_step(history: Path, steps: int) -> float:
    """Mean epoch time after the first, per optimiser step."""
    times = pd.read_csv(history)["time_s"].to_numpy(float)
    return float(times[1:].mean() if len(times) > 1 else times.mean()) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3; the first is left out)")
    args = parser.parse_args(argv)
    from data.synthetic import write_dataset

    with tempfile.TemporaryDirectory(prefix="bench_determinism_") as temp:
        work = Path(temp)
        write_dataset(work / "data", n_images=10, size=128, density="sparse", seed=0)
        for name, command in TRAINERS.items():
            steps = 8 if "keras" in command[1] else 4          # Mask R-CNN: 8 training images / batch 2
            per_step: dict[str, list[float]] = {"--deterministic": [], "--no-deterministic": []}
            for position, flag in enumerate(ORDER):
                out = work / f"{command[1]}{position}"
                subprocess.run([sys.executable, *command, "--data", str(work / "data"), "--split", str(work / "split.json"),
                                "--out", str(out), "--epochs", str(args.epochs), "--quiet", flag],
                               check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
                per_step[flag].append(seconds_per_step(out / "history.csv", steps))
            on, off = (sum(per_step[flag]) / len(per_step[flag]) for flag in ("--deterministic", "--no-deterministic"))
            print(f"{name:20s} deterministic {on:.3f} s/step, not {off:.3f} s/step: {on / off:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

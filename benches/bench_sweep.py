"""Benchmark of the threshold sweep: one-pass counts vs a naive loop over the 101 thresholds.

End to end (``--e2e-images``, default 48 maps of 1000 x 1000): the command
``python -m keras_semseg.sweep`` (process start-up, reading float16 maps and binary
0/255 PNG masks, writing the four CSVs) against a naive script in its own process
(same reading; per threshold ``prob > t`` and two ``np.count_nonzero``; per_image.csv written). Target:
>= 8x (CPU time of the child processes; wall time printed too). Both must give the same
per-image Dice, Jaccard and pixel accuracy.

Targets: >= 30x faster than the naive loop; < 2x the time of one plain ``np.histogram``
pass (``bins=101, range=(0, 1)``, NumPy's fast equal-bin path) over the same maps.
Maps are float32 in [0, 1], uniform noise plus a cell signal; a fraction of the values
(--on-grid, default 0.05) is set exactly onto the 0.01 grid (as float32) and as many
again one ulp either side of it (half above, half below), the hard cases for binning. The counts of both methods must agree
exactly for every image and threshold.

    nice -n 10 timeout 900 .venv/bin/python benches/bench_sweep.py [--images 64] [--size 1000] [--e2e-images 48] [--e2e-only]
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from keras_semseg.sweep import THRESHOLDS, confusion_counts, metrics_from_counts


def make_maps(n_images: int, size: int, seed: int, on_grid_fraction: float) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    maps = []
    for _ in range(n_images):
        truth = rng.random((size, size)) < 0.3
        prob = np.clip(truth * 0.35 + rng.random((size, size)) * 0.65, 0, 1).astype(np.float32)
        on_grid = (rng.integers(0, 101, (size, size)) / 100).astype(np.float32)
        pick = rng.random((size, size))
        f = on_grid_fraction
        prob = np.where(pick < f, on_grid, prob)
        prob = np.where((pick >= f) & (pick < 1.5 * f), np.nextafter(on_grid, np.float32(2)), prob)
        prob = np.where((pick >= 1.5 * f) & (pick < 2 * f), np.nextafter(on_grid, np.float32(-1)), prob)
        maps.append((np.clip(prob, 0, 1).astype(np.float32), truth))
    return maps


def one_pass(prob: np.ndarray, truth: np.ndarray):
    counts = confusion_counts(prob, truth, THRESHOLDS)
    return counts, metrics_from_counts(*counts)


def naive(prob: np.ndarray, truth: np.ndarray):
    rows = []
    for t in THRESHOLDS:
        predicted = prob > t
        rows.append((np.sum(predicted & truth), np.sum(predicted & ~truth), np.sum(~predicted & truth), np.sum(~predicted & ~truth)))
    counts = tuple(np.array(column, np.int64) for column in zip(*rows))
    return counts, metrics_from_counts(*counts)


def timed(function, maps, repeats: int) -> tuple[float, float, list]:
    """Median over ``repeats`` of the total CPU time and wall time over all maps, and the last results.

    CPU time (``time.process_time``) is the work this process did; wall time also counts
    waiting for a core, which on a shared machine depends on what else runs.
    """
    cpu, wall = [], []
    for _ in range(repeats):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        results = [function(prob, truth) for prob, truth in maps]
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return float(np.median(cpu)), float(np.median(wall)), results


def peak_bytes(function, prob, truth) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    function(prob, truth)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


NAIVE_SCRIPT = """
import sys
from pathlib import Path
import numpy as np, pandas as pd
from PIL import Image
probs, masks, out = (Path(a) for a in sys.argv[1:4])
rows = []
for path in sorted(probs.glob("*.npy")):
    prob = np.load(path)
    truth = np.asarray(Image.open(masks / (path.stem + ".png"))) > 0
    cells = np.count_nonzero(truth)
    for t in np.arange(101) / 100.0:
        predicted = prob > t
        tp = np.count_nonzero(predicted & truth)
        fp = np.count_nonzero(predicted) - tp
        fn, tn = cells - tp, truth.size - cells - fp
        union = tp + fp + fn
        rows.append({"image": path.stem, "threshold": t, "dice": 2 * tp / (union + tp) if union else 1.0,
                     "jaccard": tp / union if union else 1.0, "pixel_accuracy": (tp + tn) / (union + tn)})
out.mkdir(parents=True, exist_ok=True)
pd.DataFrame(rows).to_csv(out / "per_image.csv", index=False)
"""


def write_e2e_inputs(folder: Path, n_images: int, size: int, seed: int) -> None:
    """``probs/<stem>.npy`` float16 maps (as semseg-train writes them) and ``masks/<stem>.png`` binary 0/255 masks."""
    from PIL import Image

    (folder / "probs").mkdir(parents=True)
    (folder / "masks").mkdir()
    for index, (prob, truth) in enumerate(make_maps(n_images, size, seed, 0.05)):
        np.save(folder / "probs" / f"img{index:03d}.npy", prob.astype(np.float16))
        Image.fromarray((truth * 255).astype(np.uint8)).save(folder / "masks" / f"img{index:03d}.png")


def run_child(command: list[str]) -> tuple[float, float]:
    """(CPU seconds of the child process, wall seconds) of one command; it must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def end_to_end(n_images: int, size: int, seed: int, repeats: int) -> float:
    """Print the command-vs-naive-script times and return the CPU-time ratio."""
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_e2e_inputs(folder, n_images, size, seed)
        sweep_cpu, sweep_wall = [], []
        for repeat in range(repeats):
            cpu, wall = run_child([sys.executable, "-m", "keras_semseg.sweep", "--probs", str(folder / "probs"), "--masks",
                                   str(folder / "masks"), "--model", "m", "--out", str(folder / "sweep"), "--overwrite"])
            sweep_cpu.append(cpu)
            sweep_wall.append(wall)
        naive_cpu, naive_wall = run_child([sys.executable, "-c", NAIVE_SCRIPT, str(folder / "probs"), str(folder / "masks"),
                                           str(folder / "naive")])
        ours = pd.read_csv(folder / "sweep" / "per_image.csv")
        theirs = pd.read_csv(folder / "naive" / "per_image.csv")
        for metric in METRICS_COMPARED:
            if not np.allclose(ours[metric].to_numpy(), theirs[metric].to_numpy(), rtol=0, atol=1e-12):
                print(f"MISMATCH end to end: {metric} differs between the sweep and the naive script", file=sys.stderr)
                return 0.0
    cpu, wall = float(np.median(sweep_cpu)), float(np.median(sweep_wall))
    print(f"end to end, {n_images} maps {size}x{size} (float16 .npy + 0/255 PNG masks), start-up, reading and writing included:")
    print(f"  python -m keras_semseg.sweep (median of {repeats})  CPU {cpu:7.2f} s   wall {wall:7.2f} s")
    print(f"  naive script, loop over 101 thresholds         CPU {naive_cpu:7.2f} s   wall {naive_wall:7.2f} s")
    print(f"  end-to-end speed-up: CPU {naive_cpu / cpu:5.1f} x   wall {naive_wall / wall:5.1f} x   (target >= 8)")
    return naive_cpu / cpu


METRICS_COMPARED = ("dice", "jaccard", "pixel_accuracy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the fast methods (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--on-grid", type=float, default=0.05, help="fraction of values exactly on the 0.01 grid")
    parser.add_argument("--e2e-images", type=int, default=48, help="maps in the end-to-end comparison (0: skip it)")
    parser.add_argument("--e2e-only", action="store_true", help="only the end-to-end comparison")
    args = parser.parse_args(argv)

    e2e_ok = True
    if args.e2e_images:
        e2e_ok = end_to_end(args.e2e_images, args.size, args.seed, 3) >= 8
        print("end-to-end target met (CPU time)" if e2e_ok else "END-TO-END TARGET NOT MET (CPU time)")
    if args.e2e_only:
        return 0 if e2e_ok else 1

    maps = make_maps(args.images, args.size, args.seed, args.on_grid)
    pixels = args.images * args.size * args.size
    print(f"{args.images} maps {args.size}x{args.size} float32, {len(THRESHOLDS)} thresholds; "
          f"{args.on_grid:.0%} of values on the grid, {args.on_grid:.0%} one ulp off; numpy {np.__version__}, python {platform.python_version()}, {platform.machine()}")

    load_before = os.getloadavg()[0]
    fast_s, fast_wall, fast = timed(one_pass, maps, args.repeats)
    hist_s, hist_wall, _ = timed(lambda prob, truth: np.histogram(prob, bins=101, range=(0.0, 1.0)), maps, args.repeats)
    edges = np.linspace(0.0, 1.0, 102)
    hist_edges_s, hist_edges_wall, _ = timed(lambda prob, truth: np.histogram(prob, bins=edges), maps, 1)
    naive_s, naive_wall, slow = timed(naive, maps, 1)
    load_after = os.getloadavg()[0]

    for (counts_a, _), (counts_b, _) in zip(fast, slow):
        if not all(np.array_equal(a, b) for a, b in zip(counts_a, counts_b)):
            print("MISMATCH between one-pass counts and the naive loop", file=sys.stderr)
            return 1
    print(f"agreement: tp/fp/fn/tn identical for all {args.images} images x {len(THRESHOLDS)} thresholds")

    fast_peak = peak_bytes(one_pass, *maps[0])
    naive_peak = peak_bytes(naive, *maps[0])
    map_bytes = maps[0][0].nbytes + maps[0][1].nbytes
    print(f"machine: {os.cpu_count()} cores, 1-min load average {load_before:.1f} before, {load_after:.1f} after")
    print("                               CPU time             wall time")
    rows = [
        (f"one pass (project), median of {args.repeats}", fast_s, fast_wall),
        ("naive loop over 101 thresholds", naive_s, naive_wall),
        (f"np.histogram bins=101 range, median of {args.repeats}", hist_s, hist_wall),
        ("np.histogram bins=edges", hist_edges_s, hist_edges_wall),
    ]
    for label, cpu_s, wall_s in rows:
        print(f"{label:45s} {cpu_s:8.3f} s ({cpu_s / args.images * 1e3:6.1f} ms/img)  {wall_s:8.3f} s")
    print(f"speed-up vs naive:              CPU {naive_s / fast_s:6.1f} x   wall {naive_wall / fast_wall:6.1f} x   (target >= 30)")
    print(f"one pass / np.histogram:        CPU {fast_s / hist_s:6.2f} x   wall {fast_wall / hist_wall:6.2f} x   (target < 2)")
    print(f"one pass / np.histogram edges:  CPU {fast_s / hist_edges_s:6.2f} x   wall {fast_wall / hist_edges_wall:6.2f} x")
    print(f"peak extra memory per image (tracemalloc): one pass {fast_peak / 2**20:.2f} MiB, "
          f"naive {naive_peak / 2**20:.2f} MiB (input map + mask {map_bytes / 2**20:.2f} MiB)")
    print(f"process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB "
          f"(holds all {args.images} maps: {pixels * 5 / 2**20:.0f} MiB)")
    ok = naive_s / fast_s >= 30 and fast_s / hist_s < 2 and e2e_ok
    print("targets met (CPU time)" if ok else "TARGETS NOT MET (CPU time)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

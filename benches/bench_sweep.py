"""Benchmark of the threshold sweep: one-pass counts vs a naive loop over the 101 thresholds.

Targets: >= 30x faster than the naive loop; < 2x the time of one plain ``np.histogram``
pass (``bins=101, range=(0, 1)``, NumPy's fast equal-bin path) over the same maps.
Maps are float32 in [0, 1], uniform noise plus a cell signal; a fraction of the values
(--on-grid, default 0.05) is set exactly onto the 0.01 grid (as float32) and as many
again one ulp either side of it (half above, half below), the hard cases for binning. The counts of both methods must agree
exactly for every image and threshold.

    nice -n 10 timeout 900 .venv/bin/python benches/bench_sweep.py [--images 64] [--size 1000]
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
import tracemalloc

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the fast methods (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--on-grid", type=float, default=0.05, help="fraction of values exactly on the 0.01 grid")
    args = parser.parse_args(argv)

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
    ok = naive_s / fast_s >= 30 and fast_s / hist_s < 2
    print("targets met (CPU time)" if ok else "TARGETS NOT MET (CPU time)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

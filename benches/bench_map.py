"""Benchmark: COCO-mode mask mAP of torch_instseg.evaluate vs pycocotools COCOeval.

64 synthetic images (256 x 256 by default), 40 ground-truth cells and 50 detections each
(40 jittered copies of the cells plus 10 false positives, random scores). Asserts that
both give the same mAP (--interpolation 101, --max-dets 100) and prints both times
(best of --repeats runs) and the ratio. COCOeval is timed for evaluate + accumulate +
summarize with its printing suppressed; building its COCO objects is not timed. Ours is
timed for ``evaluate(gt_dict, results_list)`` including validation of both.

    nice -n 10 python benches/bench_map.py [--images 64] [--size 256] [--repeats 3]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import sys
import time

import numpy as np

from torch_instseg.coco import encode_rle, labels_to_annotations
from torch_instseg.evaluate import evaluate


def _disc(height: int, width: int, cy: float, cx: float, radius: float) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    y0, y1 = max(int(cy - radius), 0), min(int(cy + radius) + 2, height)
    x0, x1 = max(int(cx - radius), 0), min(int(cx + radius) + 2, width)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    mask[y0:y1, x0:x1] = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    return mask


def make_case(n_images: int, size: int, n_cells: int, n_dets: int, seed: int) -> tuple[dict, list]:
    """COCO ground truth (non-overlapping label images) and results with overlapping detections."""
    rng = np.random.default_rng(seed)
    scale = size / 256
    images, annotations, results = [], [], []
    for image_id in range(1, n_images + 1):
        while True:
            labels = np.zeros((size, size), dtype=np.int32)
            cells = [(rng.uniform(0, size), rng.uniform(0, size), rng.uniform(6, 14) * scale) for _ in range(n_cells)]
            for label, (cy, cx, radius) in enumerate(cells, start=1):
                labels[_disc(size, size, cy, cx, radius)] = label
            if len(np.unique(labels)) == n_cells + 1:
                break
        images.append({"id": image_id, "file_name": f"bench_{image_id:03d}", "height": size, "width": size})
        annotations.extend(labels_to_annotations(labels, image_id, start_id=len(annotations) + 1))
        for k in range(n_dets):
            if k < n_cells:
                cy, cx, radius = cells[k]
                mask = _disc(size, size, cy + rng.normal(0, 2 * scale), cx + rng.normal(0, 2 * scale), radius * rng.uniform(0.75, 1.25))
                score = rng.uniform(0.3, 1.0)
            else:
                mask = _disc(size, size, rng.uniform(0, size), rng.uniform(0, size), rng.uniform(6, 14) * scale)
                score = rng.uniform(0.0, 0.9)
            results.append({"image_id": image_id, "category_id": 1, "segmentation": encode_rle(mask), "score": float(score)})
    gt = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cell"}]}
    return gt, results


def pycocotools_map(gt: dict, results: list, repeats: int) -> tuple[float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    best, value = float("inf"), float("nan")
    for _ in range(repeats):
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO()
            coco_gt.dataset = copy.deepcopy(gt)
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(copy.deepcopy(results))
            evaluator = COCOeval(coco_gt, coco_dt, "segm")
            start = time.perf_counter()
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            best = min(best, time.perf_counter() - start)
        value = float(evaluator.stats[0])
    return value, best


def ours_map(gt: dict, results: list, repeats: int) -> tuple[float, float]:
    best, value = float("inf"), float("nan")
    for _ in range(repeats):
        start = time.perf_counter()
        summary = evaluate(gt, results, interpolation=101, max_dets=100)
        best = min(best, time.perf_counter() - start)
        value = summary["mAP"]
    return value, best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--cells", type=int, default=40)
    parser.add_argument("--dets", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    gt, results = make_case(args.images, args.size, args.cells, args.dets, args.seed)
    print(f"{args.images} images {args.size}x{args.size}, {len(gt['annotations'])} cells, {len(results)} detections; best of {args.repeats}")
    ref_map, ref_time = pycocotools_map(gt, results, args.repeats)
    our_map, our_time = ours_map(gt, results, args.repeats)
    assert abs(ref_map - our_map) < 1e-6, f"mAP differs: pycocotools {ref_map} vs ours {our_map}"
    print(f"pycocotools COCOeval   mAP {ref_map:.6f}  {ref_time:.3f} s (evaluate+accumulate+summarize)")
    print(f"torch_instseg.evaluate mAP {our_map:.6f}  {our_time:.3f} s (validation+matching+AP)")
    print(f"|difference| {abs(ref_map - our_map):.2e}; speed-up {ref_time / our_time:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

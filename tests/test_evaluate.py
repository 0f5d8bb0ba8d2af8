"""torch_instseg.evaluate: known-answer AP for both interpolations, the detection cap, and
equality with pycocotools COCOeval (iouType segm) on random cases."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from torch_instseg.coco import encode_rle, instances_to_results, write_coco
from torch_instseg.errors import InstsegError
from torch_instseg.evaluate import (
    PER_IMAGE_COLUMNS,
    TABLE_COLUMNS,
    _match_in_order,
    _match_single_candidates,
    cap_warning,
    evaluate,
    instance_table,
    main,
    per_image,
    run_evaluation,
)

SIZE = (24, 40)


def _square(k: int, size=SIZE) -> np.ndarray:
    """The k-th 3x3 square on a grid with gaps, so distinct squares never touch."""
    per_row = size[1] // 4
    mask = np.zeros(size, bool)
    y, x = 4 * (k // per_row), 4 * (k % per_row)
    mask[y:y + 3, x:x + 3] = True
    return mask


def _case(images: list[tuple[list[int], list[int], list[float]]], size=SIZE) -> tuple[dict, list]:
    """Per image: ground-truth square ids, detected square ids (in input order), scores."""
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cell"}]}
    results = []
    for image_id, (gt_ids, det_ids, scores) in enumerate(images, start=1):
        gt["images"].append({"id": image_id, "file_name": f"img{image_id}", "height": size[0], "width": size[1]})
        for k in gt_ids:
            mask = _square(k, size)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                                      "segmentation": encode_rle(mask), "area": int(mask.sum()),
                                      "bbox": [0, 0, 3, 3], "iscrowd": 0})
        if det_ids:
            results += instances_to_results(image_id, np.array([_square(k, size) for k in det_ids]), scores)
    return gt, results


def _ap(gt, results, interpolation, **kwargs) -> float:
    return evaluate(gt, results, interpolation=interpolation, **kwargs)["mAP"]


@pytest.mark.parametrize("interpolation", [11, 101])
def test_perfect_predictions_score_one(interpolation):
    gt, results = _case([([0, 1, 2], [2, 0, 1], [0.3, 0.9, 0.5]), ([3, 4], [3, 4], [0.8, 0.7])])
    summary = evaluate(gt, results, interpolation=interpolation)
    assert summary["mAP"] == pytest.approx(1.0)
    assert summary["AP50"] == pytest.approx(1.0) and summary["AP75"] == pytest.approx(1.0)
    assert list(summary["ap_per_iou"]) == [f"{0.5 + 0.05 * k:.2f}" for k in range(10)]
    assert summary["interpolation"] == interpolation and summary["max_dets"] == 100
    assert (summary["n_images"], summary["n_gt"], summary["n_pred"]) == (2, 5, 5)


@pytest.mark.parametrize("interpolation", [11, 101])
def test_false_positive_ranked_first(interpolation):
    # FP (0.9), TP (0.8), TP (0.7) on 2 cells: precision 0, 1/2, 2/3 at recall 0, 1/2, 1;
    # the envelope is 2/3 at every recall, so AP = 2/3 with either interpolation.
    gt, results = _case([([0, 1], [5, 0, 1], [0.9, 0.8, 0.7])])
    assert _ap(gt, results, interpolation) == pytest.approx(2 / 3)


def test_hand_computed_curve_both_interpolations():
    # 4 cells; ranked TP FP TP FP FP TP: precision 1, 1/2, 2/3, 1/2, 2/5, 1/2 at recall
    # .25 .25 .5 .5 .5 .75; envelope 1, 2/3, 2/3, 1/2, 1/2, 1/2.
    # 11-point: r = 0..0.2 -> 1, r = 0.3..0.5 -> 2/3, r = 0.6, 0.7 -> 1/2, r >= 0.8 -> 0: 6/11.
    # 101-point: r <= .25 (26 points) -> 1, (.25, .5] (25) -> 2/3, (.5, .75] (25) -> 1/2, rest 0.
    gt, results = _case([([0, 1, 2, 3], [0, 8, 1, 9, 10, 2], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4])])
    assert _ap(gt, results, 11) == pytest.approx(6 / 11)
    assert _ap(gt, results, 101) == pytest.approx((26 + 25 * 2 / 3 + 25 * 0.5) / 101)


def test_duplicate_detections_are_false_positives():
    # Cells A, B; detections A (0.9), A again (0.8), B (0.7): precision 1, 1/2, 2/3 at recall
    # 1/2, 1/2, 1; envelope 1, 2/3, 2/3.
    gt, results = _case([([0, 1], [0, 0, 1], [0.9, 0.8, 0.7])])
    assert _ap(gt, results, 11) == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert _ap(gt, results, 101) == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_images_without_ground_truth():
    base_gt, base_results = _case([([0], [0], [0.5])])
    gt, results = _case([([0], [0], [0.5]), ([], [], [])])
    assert _ap(gt, results, 11) == pytest.approx(_ap(base_gt, base_results, 11)) == pytest.approx(1.0)
    frame = per_image(gt, results)
    assert list(frame.columns) == PER_IMAGE_COLUMNS
    assert frame["ap"].iloc[0] == pytest.approx(1.0) and math.isnan(frame["ap"].iloc[1])
    # A false positive on an image without cells, ranked first over all images: AP 0.5.
    gt, results = _case([([0], [0], [0.5]), ([], [3], [0.9])])
    assert _ap(gt, results, 11) == pytest.approx(0.5) and _ap(gt, results, 101) == pytest.approx(0.5)
    frame = per_image(gt, results)
    assert frame["ap"].iloc[0] == pytest.approx(1.0) and math.isnan(frame["ap"].iloc[1])
    assert frame["n_pred"].tolist() == [1, 1] and frame["image"].tolist() == ["img1", "img2"]


def test_missed_image_and_empty_results():
    gt, results = _case([([0, 1], [0, 1], [0.9, 0.8]), ([2], [], [])])
    frame = per_image(gt, results, interpolation=101)
    assert frame["ap"].tolist()[1] == 0.0 and math.isnan(frame["mean_score"].iloc[1])
    assert frame["mean_score"].iloc[0] == pytest.approx(0.85)
    assert evaluate(gt, [], interpolation=101)["mAP"] == 0.0


def test_recall_exactly_on_three_six_seven_tenths():
    # 10 cells; ranked T T T F T T T F F T F F: recall reaches exactly 0.3, 0.6 and 0.7.
    # Envelope: 1 up to recall 0.3 (index 2), 6/7 from index 3 to 6, then 0.75, 0.7, 0.7, 7/11, 7/12.
    # The 11 points np.linspace(0, 1, 11) hold 0.30000000000000004, 0.6000000000000001 and
    # 0.7000000000000001, just above 3/10, 6/10 and 7/10: they sample recall 0.4 (6/7), recall 0.7
    # (0.7) and nothing (0). Exact tenths would give 1, 6/7 and 0.7 there instead.
    gt_ids = list(range(10))
    det_ids = [0, 1, 2, 20, 3, 4, 5, 21, 22, 6, 23, 24]
    gt, results = _case([(gt_ids, det_ids, list(np.linspace(0.95, 0.4, len(det_ids))))], size=(24, 40))
    expected = (3 + 3 * 6 / 7 + 0.7) / 11
    assert _ap(gt, results, 11) == pytest.approx(expected, abs=1e-12)
    assert abs(expected - (4 + 2 * 6 / 7 + 0.7 + 0.7) / 11) > 0.05
    _, coco_eleven = _cocoeval(gt, results, recall_points=np.linspace(0, 1, 11))
    assert abs(_ap(gt, results, 11) - coco_eleven) <= 1e-12


def test_eleven_points_equal_pycocotools_where_recall_hits_tenths():
    """Pooled images whose recall steps are tenths (10 or 20 cells): equal to COCOeval with recThrs linspace(0, 1, 11)."""
    rng = np.random.default_rng(7)
    for _ in range(12):
        images = []
        for n_cells in (10, 10):
            found = sorted(rng.choice(n_cells, size=int(rng.integers(3, n_cells + 1)), replace=False).tolist())
            misses = list(range(n_cells, n_cells + int(rng.integers(0, 5))))
            det_ids = [int(k) for k in rng.permutation(found + misses)]
            images.append((list(range(n_cells)), det_ids, np.round(rng.random(len(det_ids)), 2).tolist()))
        gt, results = _case(images, size=(24, 40))
        _, coco_eleven = _cocoeval(gt, results, recall_points=np.linspace(0, 1, 11))
        assert abs(_ap(gt, results, 11) - coco_eleven) <= 1e-12
        for image_id in (1, 2):
            one = {**gt, "images": [gt["images"][image_id - 1]],
                   "annotations": [a for a in gt["annotations"] if a["image_id"] == image_id]}
            mine = [r for r in results if r["image_id"] == image_id]
            _, coco_one = _cocoeval(one, mine, recall_points=np.linspace(0, 1, 11))
            assert abs(_ap(one, mine, 11) - coco_one) <= 1e-12


def test_cap_counts_and_warns_about_dropped_detections(tmp_path, capsys):
    ids = list(range(12))
    gt, results = _case([(ids, ids, list(np.linspace(1.0, 0.1, 12))), ([0, 1], [0, 1], [0.9, 0.8]),
                         (ids, ids + [40], list(np.linspace(1.0, 0.1, 13)))], size=(48, 40))
    summary = evaluate(gt, results, interpolation=11, max_dets=10)
    assert (summary["n_pred_dropped_by_cap"], summary["n_images_capped"]) == (2 + 3, 2)
    assert summary["n_pred_evaluated"] == summary["n_pred"] - 5
    line = cap_warning(summary)
    assert "left out 5 of 27 detections in 2 of 3 images" in line and "\n" not in line
    assert evaluate(gt, results, max_dets=None)["n_pred_dropped_by_cap"] == 0
    assert cap_warning(evaluate(gt, results, max_dets=13)) == ""
    gt_path, pred_path = write_coco(tmp_path / "gt.json", gt), write_coco(tmp_path / "pred.json", results)
    assert main(["--gt", str(gt_path), "--pred", str(pred_path), "--max-dets", "10", "--out", str(tmp_path / "e")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: the cap of 10 detections per image left out 5 of 27")
    written = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert (written["n_pred_dropped_by_cap"], written["n_images_capped"]) == (5, 2)


def test_detection_cap():
    # 120 cells, 120 perfect detections with decreasing scores. A cap of 100 keeps recall
    # at most 100/120: 101-point AP = 84/101 (r = 0 .. 0.83), 11-point AP = 9/11 (r = 0 .. 0.8).
    size = (48, 40)
    ids = list(range(120))
    gt, results = _case([(ids, ids, list(np.linspace(1.0, 0.1, 120)))], size=size)
    capped = evaluate(gt, results, interpolation=101, max_dets=100)
    assert capped["mAP"] == pytest.approx(84 / 101)
    assert capped["n_pred"] == 120 and capped["n_pred_evaluated"] == 100
    assert _ap(gt, results, 11, max_dets=100) == pytest.approx(9 / 11)
    assert _ap(gt, results, 101, max_dets=200) == pytest.approx(1.0)
    assert _ap(gt, results, 101, max_dets=None) == pytest.approx(1.0)


def test_ties_keep_input_order():
    # Same score: the false positive listed first is ranked first (stable, like COCOeval).
    gt, results = _case([([0], [4, 0], [0.5, 0.5])])
    assert _ap(gt, results, 11) == pytest.approx(0.5)
    gt, results = _case([([0], [0, 4], [0.5, 0.5])])
    assert _ap(gt, results, 11) == pytest.approx(1.0)


def test_bad_settings():
    gt, results = _case([([0], [0], [0.5])])
    with pytest.raises(InstsegError, match="interpolation"):
        evaluate(gt, results, interpolation=12)
    with pytest.raises(InstsegError, match="max_dets"):
        evaluate(gt, results, max_dets=0)


def test_fast_matching_equals_cocoeval_loop():
    rng = np.random.default_rng(5)
    thresholds = np.linspace(0.5, 0.95, 10)
    for _ in range(50):
        n_det, n_gt = rng.integers(1, 12), rng.integers(1, 8)
        ious = rng.random((n_det, n_gt)) * 0.45
        owner = rng.integers(-1, n_gt, n_det)
        for d, g in enumerate(owner):
            if g >= 0:
                ious[d, g] = rng.choice([0.5, 0.75, rng.uniform(0.5, 1.0)])
        is_candidate = ious >= 0.5
        matched, ignored = _match_in_order(ious, is_candidate, np.zeros(n_gt, bool), thresholds)
        assert np.array_equal(_match_single_candidates(ious, is_candidate.any(axis=1), thresholds), matched)
        assert not ignored.any()


# ---------------------------------------------------------------- equality with COCOeval

def _random_case(rng: np.random.Generator) -> tuple[dict, list]:
    images, annotations, results = [], [], []
    for index in range(int(rng.integers(1, 5))):
        image_id = int(3 * index + 2)
        h, w = (int(v) for v in rng.integers(16, 40, 2))
        images.append({"id": image_id, "file_name": f"r{index}", "height": h, "width": w})
        gts = []
        for _ in range(int(rng.integers(0, 8))):
            mask = np.zeros((h, w), bool)
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            mask[y:y + rng.integers(2, 12), x:x + rng.integers(2, 12)] = True
            gts.append(mask)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "segmentation": encode_rle(mask), "area": int(mask.sum()), "bbox": [0, 0, 1, 1],
                                "iscrowd": int(rng.random() < 0.1)})
        if gts and rng.random() < 0.3:
            duplicate = copy.deepcopy(annotations[-1])
            duplicate["id"] = len(annotations) + 1
            annotations.append(duplicate)
        masks = []
        for _ in range(int(rng.integers(0, 10))):
            if gts and rng.random() < 0.7:
                mask = np.roll(gts[rng.integers(len(gts))], tuple(rng.integers(-2, 3, 2)), (0, 1))
                if rng.random() < 0.3:
                    mask = mask | (rng.random((h, w)) < 0.02)
            else:
                mask = np.zeros((h, w), bool)
                y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
                mask[y:y + rng.integers(2, 12), x:x + rng.integers(2, 12)] = True
            masks.append(mask)
        if masks:
            scores = rng.random(len(masks))
            if rng.random() < 0.4:
                scores = np.round(scores, 1)
            results += instances_to_results(image_id, np.array(masks), scores)
    gt = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cell"}]}
    return gt, results


def _cocoeval(gt: dict, results: list, max_dets: int = 100, recall_points=None):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "segm")
        evaluator.params.maxDets = [1, 10, max_dets] if max_dets >= 10 else [max_dets] * 3
        if recall_points is not None:
            evaluator.params.recThrs = recall_points
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    return evaluator.stats, float(precision[precision > -1].mean())


def test_coco_mode_equals_pycocotools_on_random_cases():
    rng = np.random.default_rng(2024)
    compared = 0
    while compared < 20:
        gt, results = _random_case(rng)
        if not results or all(a["iscrowd"] for a in gt["annotations"]):
            continue
        stats, _ = _cocoeval(gt, results)
        ours = evaluate(gt, results, interpolation=101, max_dets=100)
        assert ours["mAP"] == pytest.approx(stats[0], abs=1e-6)
        assert ours["AP50"] == pytest.approx(stats[1], abs=1e-6)
        assert ours["AP75"] == pytest.approx(stats[2], abs=1e-6)
        if compared % 4 == 0:
            # Same matcher with the 11 recall points, and a cap of 3 detections per image.
            _, eleven = _cocoeval(gt, results, recall_points=np.linspace(0, 1, 11))
            assert evaluate(gt, results, interpolation=11)["mAP"] == pytest.approx(eleven, abs=1e-6)
            _, capped = _cocoeval(gt, results, max_dets=3)
            assert evaluate(gt, results, interpolation=101, max_dets=3)["mAP"] == pytest.approx(capped, abs=1e-6)
        compared += 1


# ---------------------------------------------------------------- outputs and command line

def _write_case(tmp_path, images=(([0, 1], [0, 5], [0.9, 0.8]),)) -> tuple:
    gt, results = _case(list(images))
    gt_path = write_coco(tmp_path / "gt.json", gt)
    pred_path = write_coco(tmp_path / "pred.json", results)
    return gt_path, pred_path


def test_run_evaluation_writes_and_refuses_overwrite(tmp_path):
    gt_path, pred_path = _write_case(tmp_path)
    summary = run_evaluation(gt_path, pred_path, tmp_path / "out", interpolation=101, max_dets=300)
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["max_dets"] == 300 and written["interpolation"] == 101
    # TP then FP on 2 cells: precision 1 up to recall 1/2, then nothing: 51 of 101 points.
    assert written["mAP"] == pytest.approx(summary["mAP"]) == pytest.approx(51 / 101)
    lines = (tmp_path / "out" / "per_image.csv").read_text().splitlines()
    assert lines[0] == ",".join(PER_IMAGE_COLUMNS) and len(lines) == 2
    from data.outputs import OutputExistsError

    with pytest.raises(OutputExistsError):
        run_evaluation(gt_path, pred_path, tmp_path / "out", interpolation=101, max_dets=300)
    run_evaluation(gt_path, pred_path, tmp_path / "out", interpolation=11, max_dets=300, overwrite=True)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["interpolation"] == 11


def test_instance_table(tmp_path):
    gt, perfect = _case([([0, 1], [0, 1], [0.9, 0.7]), ([2], [2, 6], [0.8, 0.6])])
    _, half = _case([([0, 1], [0], [0.5]), ([2], [], [])])
    (tmp_path / "sam.json").write_text(json.dumps(half))
    (tmp_path / "sam.meta.json").write_text(json.dumps({"score_source": "sam_iou"}))
    table = instance_table(gt, {"maskrcnn": perfect, "sam": tmp_path / "sam.json"}, max_dets=100, interpolation=11)
    assert list(table.columns) == TABLE_COLUMNS + ["score_source"]
    assert table["method"].tolist() == ["maskrcnn", "sam"]
    assert table["cells_per_image"].tolist() == [1.5, 1.5]
    assert table["detections_per_image"].tolist() == [2.0, 0.5]
    assert table["mean_confidence"].tolist() == pytest.approx([0.75, 0.5])
    assert table["mAP"].iloc[0] == pytest.approx(1.0) and table["score_source"].iloc[1] == "sam_iou"


def test_cli_success(tmp_path, capsys):
    gt_path, pred_path = _write_case(tmp_path)
    code = main(["--gt", str(gt_path), "--pred", str(pred_path), "--interpolation", "101",
                 "--max-dets", "all", "--out", str(tmp_path / "eval")])
    assert code == 0
    assert "mAP 0.5050" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["max_dets"] is None


@pytest.mark.parametrize("breakage, problem", [
    (lambda pred: pred.write_text("[{oops"), "not valid JSON"),
    (lambda pred: pred.write_text(json.dumps([{**json.loads(pred.read_text())[0], "image_id": 42}])), "image id 42"),
    (lambda pred: pred.write_text(json.dumps([{**json.loads(pred.read_text())[0],
                                                "segmentation": encode_rle(np.ones((5, 5), bool))}])), "does not match"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, breakage, problem):
    gt_path, pred_path = _write_case(tmp_path)
    breakage(pred_path)
    code = main(["--gt", str(gt_path), "--pred", str(pred_path), "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {pred_path}") and problem in err[0]
    assert not (tmp_path / "eval").exists()


def test_modules_import_no_framework_and_run_as_script(tmp_path):
    code = (
        "import sys, torch_instseg.evaluate, torch_instseg.coco\n"
        "bad = [m for m in ('torch', 'tensorflow', 'torchvision', 'keras') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    gt_path, pred_path = _write_case(tmp_path)
    done = subprocess.run([sys.executable, "-m", "torch_instseg.evaluate", "--gt", str(gt_path), "--pred", "missing.json",
                           "--out", str(tmp_path / "e")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == "error: missing.json: file not found"

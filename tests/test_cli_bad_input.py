"""Bad input across every console script: exit 2, one line on stderr naming the file, nothing written.

Each case builds its inputs in its own folder, snapshots the output folder (every file's
bytes), calls the script's ``main(argv)`` in-process, and compares. A few cases run the
installed console scripts in a subprocess. No case trains a model.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from data.imageio import write_labels, write_png
from data.split import make_split, write_split

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    main: Callable[[list[str]], int]
    argv: list[str]
    named: Path
    out: Path


def snapshot(folder: Path) -> dict[str, bytes | None] | None:
    """Every file (bytes) and folder (None) under ``folder``; None when it does not exist."""
    if not folder.exists():
        return None
    if folder.is_file():
        return {"": folder.read_bytes()}
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


# ---------------------------------------------------------------- inputs

def folders_dataset(root: Path, n: int = 6, size: int = 32) -> Path:
    """images/ + masks/ of ``n`` synthetic images (sparse cells)."""
    from data.synthetic import write_dataset

    write_dataset(root, n_images=n, size=size, density="sparse", seed=0)
    return root


def split_file(path: Path, dataset: Path, seed: int = 0) -> Path:
    names = sorted(p.stem for p in (dataset / "images").iterdir())
    write_split(path, make_split(names, 0.34, seed, str(dataset)))
    return path


def previous_outputs(out: Path) -> Path:
    """An output folder holding earlier results, which a failed run must leave byte-identical."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "previous.csv").write_text("model,image,dice\nA,x,0.5\n")
    return out


def via_file(folder: Path, region: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_png(folder / "cells.png", np.zeros((16, 16), np.uint8))
    good = {"name": "polygon", "all_points_x": [1, 6, 6], "all_points_y": [1, 1, 6]}
    record = {"filename": "cells.png", "size": 1, "regions": [
        {"shape_attributes": good, "region_attributes": {}}, {"shape_attributes": region, "region_attributes": {}}]}
    path = folder / "via_project.json"
    path.write_text(json.dumps({"cells.png1": record}))
    return path


def coco_file(folder: Path, image: dict | None = None, segmentation: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_png(folder / "cells.png", np.zeros((16, 16), np.uint8))
    image = {"id": 1, "file_name": "cells.png", "height": 16, "width": 16, **(image or {})}
    segmentation = segmentation or {"size": [16, 16], "counts": [10, 5, 241]}
    data = {"images": [image], "categories": [{"id": 1, "name": "cell"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": segmentation, "iscrowd": 0}]}
    path = folder / "instances.json"
    path.write_text(json.dumps(data))
    return path


def sweep_inputs(root: Path, n: int = 3, size: int = 16) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    probs, masks = root / "probs", root / "masks"
    probs.mkdir(parents=True)
    masks.mkdir(parents=True)
    for index in range(n):
        np.save(probs / f"img{index}.npy", rng.uniform(size=(size, size)).astype(np.float32))
        write_png(masks / f"img{index}.png", ((rng.uniform(size=(size, size)) > 0.5) * 255).astype(np.uint8))
    return probs, masks


def per_image_csv(path: Path, cell: str | None = None) -> Path:
    rng = np.random.default_rng(1)
    lines = ["model,image,dice,jaccard"]
    for model in ("unet", "segnet", "deeplabv3plus"):
        for index in range(6):
            lines.append(f"{model},img{index},{rng.uniform():.4f},{rng.uniform():.4f}")
    if cell is not None:
        lines[5] = lines[5].rsplit(",", 2)[0] + f",{cell},0.5"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def coco_pair(root: Path, dataset: Path | None = None, split: Path | None = None) -> tuple[Path, Path]:
    """gt.json (3 synthetic images, or the validation images of ``dataset``) and a results
    file with every ground-truth mask at score 0.9."""
    from data import in_memory, read_dataset
    from data.split import read_split
    from data.synthetic import generate
    from torch_instseg.coco import dataset_to_coco

    root.mkdir(parents=True, exist_ok=True)
    if dataset is None:
        samples = list(in_memory(generate(3, 32, "sparse", seed=2)))
    else:
        samples = list(read_dataset(dataset).subset(read_split(split)["val"]))
    gt = dataset_to_coco(samples)
    results = [{"image_id": a["image_id"], "category_id": 1, "segmentation": a["segmentation"], "score": 0.9}
               for a in gt["annotations"]]
    (root / "gt.json").write_text(json.dumps(gt))
    (root / "maskrcnn.json").write_text(json.dumps(results))
    return root / "gt.json", root / "maskrcnn.json"


def truncated_png(path: Path, size: int = 64) -> Path:
    write_png(path, (np.random.default_rng(3).uniform(size=(size, size)) * 255).astype(np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def config_file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- the scripts

def data_main(argv):
    from data.__main__ import main

    return main(argv)


def sweep_main(argv):
    from keras_semseg.sweep import main

    return main(argv)


def stats_main(argv):
    from stats.__main__ import main

    return main(argv)


def evaluate_main(argv):
    from torch_instseg.evaluate import main

    return main(argv)


def semseg_train_main(argv):
    from keras_semseg.train import main

    return main(argv)


def instseg_train_main(argv):
    from torch_instseg.maskrcnn import main

    return main(argv)


def sam_main(argv):
    from torch_instseg.sam import main

    return main(argv)


def predict_main(argv):
    from mscseg.predict import main

    return main(argv)


def run_main(argv):
    from mscseg.run import main

    return main(argv)


def plots_main(argv):
    from keras_semseg.plots import main

    return main(argv)


def report_main(argv):
    from mscseg.report import main

    return main(argv)


# ---------------------------------------------------------------- cases: (tmp) -> Case

def c_data_summary_missing(tmp):
    out = previous_outputs(tmp / "out")
    return Case(data_main, ["summary", str(tmp / "nowhere"), "--csv", str(out / "summary.csv")], tmp / "nowhere", out)


def c_data_summary_mask_size(tmp):
    dataset = folders_dataset(tmp / "set")
    mask = sorted((dataset / "masks").iterdir())[2]
    write_labels(mask, np.zeros((31, 32), np.int32))
    out = previous_outputs(tmp / "out")
    return Case(data_main, ["summary", str(dataset), "--csv", str(out / "summary.csv")], mask, out)


def c_data_convert_two_point_polygon(tmp):
    path = via_file(tmp / "via", {"name": "polygon", "all_points_x": [2, 9], "all_points_y": [2, 9]})
    out = previous_outputs(tmp / "out")
    return Case(data_main, ["convert", str(path), "--out", str(out), "--overwrite"], path, out)


def c_data_convert_via_nan(tmp):
    path = via_file(tmp / "via", {"name": "polygon", "all_points_x": [2, float("nan"), 9], "all_points_y": [2, 3, 9]})
    out = previous_outputs(tmp / "out")
    return Case(data_main, ["convert", str(path), "--out", str(out), "--overwrite"], path, out)


def c_data_convert_via_nan_circle(tmp):
    path = via_file(tmp / "via", {"name": "circle", "cx": 5, "cy": 5, "r": float("nan")})
    out = previous_outputs(tmp / "out")
    return Case(data_main, ["convert", str(path), "--out", str(out), "--overwrite"], path, out)


def c_data_convert_coco_height_text(tmp):
    path = coco_file(tmp / "coco", image={"height": "abc"})
    out = previous_outputs(tmp / "out")
    return Case(data_main, ["convert", str(path), "--format", "coco", "--out", str(out), "--overwrite"], path, out)


def c_data_convert_coco_rle_sum(tmp):
    path = coco_file(tmp / "coco", segmentation={"size": [16, 16], "counts": [10, 5, 200]})
    out = previous_outputs(tmp / "out")
    return Case(data_main, ["convert", str(path), "--out", str(out), "--overwrite"], path, out)


def c_data_convert_coco_rle_string_sum(tmp):
    from torch_instseg.coco import encode_rle

    counts = encode_rle(np.ones((8, 8), bool))["counts"]
    path = coco_file(tmp / "coco", segmentation={"size": [16, 16], "counts": counts})
    out = previous_outputs(tmp / "out")
    return Case(data_main, ["convert", str(path), "--out", str(out), "--overwrite"], path, out)


def c_data_convert_truncated_image(tmp):
    dataset = folders_dataset(tmp / "set")
    image = sorted((dataset / "images").iterdir())[3]
    image.write_bytes(image.read_bytes()[:60])
    out = previous_outputs(tmp / "out")
    return Case(data_main, ["convert", str(dataset), "--out", str(out), "--overwrite"], image, out)


def c_data_convert_out_is_file(tmp):
    dataset = folders_dataset(tmp / "set")
    out = tmp / "out.txt"
    out.write_text("not a folder")
    return Case(data_main, ["convert", str(dataset), "--out", str(out), "--overwrite"], out, out)


def c_data_split_other_seed(tmp):
    dataset = folders_dataset(tmp / "set")
    out = tmp / "out"
    out.mkdir()
    split = split_file(out / "split.json", dataset, seed=0)
    return Case(data_main, ["split", str(dataset), "--out", str(split), "--seed", "5"], split, out)


def c_data_split_binary_file(tmp):
    dataset = folders_dataset(tmp / "set")
    out = tmp / "out"
    out.mkdir()
    split = out / "split.json"
    split.write_bytes(bytes(range(256)))
    return Case(data_main, ["split", str(dataset), "--out", str(split)], split, out)


def c_data_synth_out_is_file(tmp):
    out = tmp / "synthetic"
    out.write_text("a file")
    return Case(data_main, ["synth", "--out", str(out), "--n", "2", "--size", "32", "--overwrite"], out, out)


def c_sweep_nan_map(tmp):
    probs, masks = sweep_inputs(tmp)
    np.save(probs / "img1.npy", np.full((16, 16), np.nan, np.float32))
    out = previous_outputs(tmp / "out")
    return Case(sweep_main, ["--probs", str(probs), "--masks", str(masks), "--model", "unet", "--out", str(out)],
                probs / "img1.npy", out)


def c_sweep_shape(tmp):
    probs, masks = sweep_inputs(tmp)
    np.save(probs / "img2.npy", np.zeros((16, 15), np.float32))
    out = previous_outputs(tmp / "out")
    return Case(sweep_main, ["--probs", str(probs), "--masks", str(masks), "--model", "unet", "--out", str(out)],
                probs / "img2.npy", out)


def c_sweep_out_of_range(tmp):
    probs, masks = sweep_inputs(tmp)
    np.save(probs / "img0.npy", np.full((16, 16), 1.5, np.float32))
    out = previous_outputs(tmp / "out")
    return Case(sweep_main, ["--probs", str(probs), "--masks", str(masks), "--model", "unet", "--out", str(out)],
                probs / "img0.npy", out)


def c_sweep_corrupt_mask(tmp):
    probs, masks = sweep_inputs(tmp)
    (masks / "img2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = previous_outputs(tmp / "out")
    return Case(sweep_main, ["--probs", str(probs), "--masks", str(masks), "--model", "unet", "--out", str(out)],
                masks / "img2.png", out)


def c_sweep_out_is_file(tmp):
    probs, masks = sweep_inputs(tmp)
    out = tmp / "sweep.csv"
    out.write_text("x\n")
    return Case(sweep_main, ["--probs", str(probs), "--masks", str(masks), "--model", "unet", "--out", str(out)], out, out)


def c_sweep_model_already_there(tmp):
    from keras_semseg.sweep import run_sweep

    probs, masks = sweep_inputs(tmp)
    out = tmp / "out"
    run_sweep(probs, masks, "unet", out)
    return Case(sweep_main, ["--probs", str(probs), "--masks", str(masks), "--model", "unet", "--out", str(out)],
                out / "per_image.csv", out)


def c_sweep_output_is_a_folder(tmp):
    from keras_semseg.sweep import run_sweep

    probs, masks = sweep_inputs(tmp)
    out = tmp / "out"
    run_sweep(probs, masks, "unet", out)
    (out / "table1.csv").unlink()
    (out / "table1.csv").mkdir()
    (out / "table1.csv" / "keep.txt").write_text("x")
    return Case(sweep_main, ["--probs", str(probs), "--masks", str(masks), "--model", "segnet", "--out", str(out)],
                out / "table1.csv", out)


def c_stats_text_cell(tmp):
    table = per_image_csv(tmp / "per_image.csv", cell="high")
    out = previous_outputs(tmp / "out")
    return Case(stats_main, [str(table), "--out", str(out), "--no-figure", "--n-boot", "10"], table, out)


def c_stats_no_image_column(tmp):
    table = tmp / "per_image.csv"
    table.write_text("model,dice\nA,0.5\nB,0.6\n")
    out = previous_outputs(tmp / "out")
    return Case(stats_main, [str(table), "--out", str(out), "--no-figure"], table, out)


def c_stats_one_model(tmp):
    table = tmp / "per_image.csv"
    table.write_text("model,image,dice\n" + "".join(f"A,img{i},0.{i}\n" for i in range(5)))
    out = previous_outputs(tmp / "out")
    return Case(stats_main, [str(table), "--out", str(out), "--no-figure"], table, out)


def c_stats_nan_score(tmp):
    table = per_image_csv(tmp / "per_image.csv", cell="nan")
    out = previous_outputs(tmp / "out")
    return Case(stats_main, [str(table), "--out", str(out), "--no-figure", "--n-boot", "10"], table, out)


def c_stats_missing_optimal(tmp):
    table = per_image_csv(tmp / "per_image.csv")
    out = previous_outputs(tmp / "out")
    return Case(stats_main, [str(table), "--out", str(out), "--at-optimal", str(tmp / "optimal.csv")],
                tmp / "optimal.csv", out)


def c_stats_binary_csv(tmp):
    table = tmp / "per_image.csv"
    table.write_bytes(bytes(range(128, 256)) * 4)
    out = previous_outputs(tmp / "out")
    return Case(stats_main, [str(table), "--out", str(out)], table, out)


def c_stats_out_is_file(tmp):
    table = per_image_csv(tmp / "per_image.csv")
    out = tmp / "stats.txt"
    out.write_text("x")
    return Case(stats_main, [str(table), "--out", str(out), "--no-figure", "--n-boot", "10"], out, out)


def c_stats_outputs_exist(tmp):
    from stats.__main__ import main

    table = per_image_csv(tmp / "per_image.csv")
    out = tmp / "out"
    assert main([str(table), "--out", str(out), "--no-figure", "--n-boot", "10"]) == 0
    return Case(stats_main, [str(table), "--out", str(out), "--no-figure", "--n-boot", "10"], out, out)


def c_evaluate_gt_not_json(tmp):
    gt, pred = coco_pair(tmp / "pred")
    gt.write_text("{not json")
    out = previous_outputs(tmp / "out")
    return Case(evaluate_main, ["--gt", str(gt), "--pred", str(pred), "--out", str(out)], gt, out)


def c_evaluate_rle_sum(tmp):
    gt, pred = coco_pair(tmp / "pred")
    results = json.loads(pred.read_text())
    results[1]["segmentation"] = {"size": [32, 32], "counts": [10, 5, 100]}
    pred.write_text(json.dumps(results))
    out = previous_outputs(tmp / "out")
    return Case(evaluate_main, ["--gt", str(gt), "--pred", str(pred), "--out", str(out)], pred, out)


def c_evaluate_unknown_image(tmp):
    gt, pred = coco_pair(tmp / "pred")
    results = json.loads(pred.read_text())
    results[0]["image_id"] = 99
    pred.write_text(json.dumps(results))
    out = previous_outputs(tmp / "out")
    return Case(evaluate_main, ["--gt", str(gt), "--pred", str(pred), "--out", str(out)], pred, out)


def c_evaluate_out_is_file(tmp):
    gt, pred = coco_pair(tmp / "pred")
    out = tmp / "eval.json"
    out.write_text("{}")
    return Case(evaluate_main, ["--gt", str(gt), "--pred", str(pred), "--out", str(out)], out, out)


def c_evaluate_outputs_exist(tmp):
    from torch_instseg.evaluate import run_evaluation

    gt, pred = coco_pair(tmp / "pred")
    out = tmp / "out"
    run_evaluation(gt, pred, out)
    return Case(evaluate_main, ["--gt", str(gt), "--pred", str(pred), "--out", str(out)], out, out)


def c_semseg_train_missing_data(tmp):
    out = previous_outputs(tmp / "out")
    return Case(semseg_train_main, ["--data", str(tmp / "nowhere"), "--split", str(tmp / "split.json"), "--model", "segnet",
                                    "--out", str(out), "--encoder-weights", "none"], tmp / "nowhere", out)


def c_semseg_train_split_unknown_image(tmp):
    dataset = folders_dataset(tmp / "set")
    split = tmp / "split.json"
    split.write_text(json.dumps({"train": ["img_000", "ghost"], "val": ["img_001"], "seed": 0}))
    out = previous_outputs(tmp / "out")
    return Case(semseg_train_main, ["--data", str(dataset), "--split", str(split), "--model", "segnet", "--out", str(out),
                                    "--encoder-weights", "none"], split, out)


def c_semseg_train_corrupt_encoder_weights(tmp):
    dataset = folders_dataset(tmp / "set")
    split = split_file(tmp / "split.json", dataset)
    weights = tmp / "vgg16_notop.h5"
    weights.write_bytes(b"<html>quota exceeded</html>")
    out = tmp / "run"
    return Case(semseg_train_main, ["--data", str(dataset), "--split", str(split), "--model", "segnet", "--out", str(out),
                                    "--encoder-weights", str(weights), "--epochs", "1", "--image-size", "32"], weights, out)


def c_instseg_train_missing_data(tmp):
    out = previous_outputs(tmp / "out")
    return Case(instseg_train_main, ["--data", str(tmp / "nowhere"), "--split", str(tmp / "split.json"), "--out", str(out),
                                     "--weights", "none", "--device", "cpu"], tmp / "nowhere", out)


def c_instseg_train_corrupt_split(tmp):
    dataset = folders_dataset(tmp / "set")
    split = tmp / "split.json"
    split.write_text("[1, 2")
    out = previous_outputs(tmp / "out")
    return Case(instseg_train_main, ["--data", str(dataset), "--split", str(split), "--out", str(out), "--weights", "none",
                                     "--device", "cpu"], split, out)


def c_instseg_train_missing_weights_file(tmp):
    dataset = folders_dataset(tmp / "set")
    split = split_file(tmp / "split.json", dataset)
    out = tmp / "run"
    return Case(instseg_train_main, ["--data", str(dataset), "--split", str(split), "--out", str(out),
                                     "--weights", str(tmp / "mine.pth"), "--device", "cpu"], tmp / "mine.pth", out)


def c_sam_gt_missing(tmp):
    dataset = folders_dataset(tmp / "set")
    split = split_file(tmp / "split.json", dataset)
    gt, pred = coco_pair(tmp / "pred", dataset, split)
    gt.unlink()
    out = previous_outputs(tmp / "out")
    return Case(sam_main, ["--data", str(dataset), "--split", str(split), "--maskrcnn", str(pred), "--out", str(out),
                           "--variant", "vit_tiny", "--sam-checkpoint", "none", "--device", "cpu"], gt, out)


def c_sam_split_not_in_gt(tmp):
    dataset = folders_dataset(tmp / "set")
    split = split_file(tmp / "split.json", dataset)
    gt, pred = coco_pair(tmp / "pred")
    out = previous_outputs(tmp / "out")
    return Case(sam_main, ["--data", str(dataset), "--split", str(split), "--maskrcnn", str(pred), "--gt", str(gt),
                           "--out", str(out), "--variant", "vit_tiny", "--sam-checkpoint", "none"], gt, out)


def c_sam_split_missing(tmp):
    dataset = folders_dataset(tmp / "set")
    gt, pred = coco_pair(tmp / "pred")
    out = previous_outputs(tmp / "out")
    return Case(sam_main, ["--data", str(dataset), "--split", str(tmp / "split.json"), "--maskrcnn", str(pred),
                           "--out", str(out), "--variant", "vit_tiny", "--sam-checkpoint", "none"], tmp / "split.json", out)


def c_sam_corrupt_checkpoint(tmp):
    dataset = folders_dataset(tmp / "set")
    split = split_file(tmp / "split.json", dataset)
    gt, pred = coco_pair(tmp / "pred", dataset, split)
    checkpoint = tmp / "sam_vit_b_01ec64.pth"
    checkpoint.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    out = previous_outputs(tmp / "out")
    return Case(sam_main, ["--data", str(dataset), "--split", str(split), "--maskrcnn", str(pred), "--gt", str(gt),
                           "--out", str(out), "--variant", "vit_b", "--sam-checkpoint", str(checkpoint), "--device", "cpu"],
                checkpoint, out)


def c_predict_truncated_third_image(tmp):
    images = tmp / "images"
    images.mkdir()
    for index in range(2):
        write_png(images / f"a{index}.png", np.full((64, 64), 100, np.uint8))
    bad = truncated_png(images / "a2.png")
    out = previous_outputs(tmp / "out")
    return Case(predict_main, ["--model", str(tmp / "run"), "--images", str(images), "--out", str(out)], bad, out)


def c_predict_missing_image(tmp):
    out = previous_outputs(tmp / "out")
    return Case(predict_main, ["--model", str(tmp / "run"), "--images", str(tmp / "x.png"), "--out", str(out)],
                tmp / "x.png", out)


def c_predict_not_a_run(tmp):
    images = tmp / "images"
    images.mkdir()
    write_png(images / "a.png", np.full((64, 64), 100, np.uint8))
    (tmp / "run").mkdir()
    out = previous_outputs(tmp / "out")
    return Case(predict_main, ["--model", str(tmp / "run"), "--images", str(images), "--out", str(out)], tmp / "run", out)


def c_predict_out_is_file(tmp):
    images = tmp / "images"
    images.mkdir()
    write_png(images / "a.png", np.full((64, 64), 100, np.uint8))
    out = tmp / "predictions"
    out.write_text("x")
    return Case(predict_main, ["--model", str(tmp / "run"), "--images", str(images), "--out", str(out)], out, out)


def c_run_binary_config(tmp):
    config = tmp / "settings.yaml"
    config.write_bytes(bytes(range(256)) * 8)
    out = tmp / "results"
    return Case(run_main, ["--config", str(config), "--out", str(out)], config, out)


def c_run_infinite_lr(tmp):
    config = config_file(tmp / "settings.yaml", "base: small\ninstance:\n  lr: .inf\n")
    out = tmp / "results"
    return Case(run_main, ["--config", str(config), "--out", str(out)], config, out)


def c_run_missing_dataset(tmp):
    config = config_file(tmp / "settings.yaml", f"base: small\nsemantic:\n  dataset: {{path: {tmp / 'nowhere'}}}\n")
    out = tmp / "results"
    return Case(run_main, ["--config", str(config), "--out", str(out)], config, out)


def c_run_corrupt_sam_checkpoint(tmp):
    checkpoint = tmp / "sam_vit_b_01ec64.pth"
    checkpoint.write_bytes(b"not a checkpoint")
    config = config_file(tmp / "settings.yaml",
                         f"base: small\ninstance:\n  sam: {{variant: vit_b, checkpoint: {checkpoint}}}\n")
    out = tmp / "results"
    return Case(run_main, ["--config", str(config), "--out", str(out)], checkpoint, out)


def c_plots_summary_columns(tmp):
    summary = tmp / "summary.csv"
    summary.write_text("model,threshold\nunet,0.5\n")
    optimal = tmp / "optimal.csv"
    optimal.write_text("model,metric,threshold,mean\nunet,dice,0.5,0.8\n")
    out = previous_outputs(tmp / "figures")
    return Case(plots_main, ["figure2", "--summary", str(summary), "--optimal", str(optimal), "--out", str(out / "fig2")],
                summary, out)


def c_plots_history_missing(tmp):
    out = previous_outputs(tmp / "figures")
    return Case(plots_main, ["figure1", "--history", f"unet={tmp / 'history.csv'}", "--out", str(out / "fig1")],
                tmp / "history.csv", out)


def c_report_not_results(tmp):
    results = previous_outputs(tmp / "results")
    return Case(report_main, [str(results)], results / "config.json", results)


CASES = {name[2:]: case for name, case in dict(globals()).items() if name.startswith("c_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MSCSEG_SAM_DIR", str(tmp_path / "sam_cache"))
    case = CASES[name](tmp_path)
    capsys.readouterr()
    before = snapshot(case.out)
    code = case.main([str(item) for item in case.argv])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert str(case.named) in lines[0], f"{case.named} not named in: {lines[0]}"
    assert snapshot(case.out) == before
    assert not list(tmp_path.rglob("*.partial")) and not list(tmp_path.rglob(".staging-*"))


def test_the_matrix_covers_every_console_script():
    scripts = {case.__name__.split("_")[1] for case in CASES.values()}
    assert scripts >= {"data", "sweep", "stats", "evaluate", "semseg", "instseg", "sam", "predict", "run", "plots", "report"}
    assert len(CASES) >= 40


# ---------------------------------------------------------------- regressions beyond the matrix

def test_sweep_failure_leaves_outputs_and_allows_the_rerun(tmp_path, capsys):
    """A sweep that cannot write table1.csv changes none of the 4 files, and the same command works once fixed."""
    from keras_semseg.sweep import main, run_sweep

    probs, masks = sweep_inputs(tmp_path)
    out = tmp_path / "out"
    run_sweep(probs, masks, "unet", out)
    (out / "table1.csv").unlink()
    (out / "table1.csv").mkdir()
    before = snapshot(out)
    argv = ["--probs", str(probs), "--masks", str(masks), "--model", "segnet", "--out", str(out)]
    assert main(argv) == 2
    assert snapshot(out) == before
    (out / "table1.csv").rmdir()
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err
    models = {line.split(",")[0] for line in (out / "table1.csv").read_text().splitlines()[1:]}
    assert models == {"unet", "segnet"}


def test_stats_text_cell_is_dropped_and_reported_with_dropna(tmp_path, capsys):
    from stats.__main__ import main

    table = per_image_csv(tmp_path / "per_image.csv", cell="high")
    out = tmp_path / "out"
    assert main([str(table), "--out", str(out), "--no-figure", "--n-boot", "10", "--dropna"]) == 0
    notes = (out / "notes.txt").read_text()
    assert "dice: 1 non-numeric cell(s) read as missing at CSV line(s) 6" in notes
    assert "dice" in (out / "tests.csv").read_text()


@pytest.mark.parametrize("value", [7, 65535])
def test_two_valued_mask_with_several_regions_is_binary(tmp_path, value):
    from data.imageio import BinaryMaskWarning, read_labels

    mask = np.zeros((12, 12), np.uint16)
    mask[1:4, 1:4] = value
    mask[6:10, 6:10] = value
    path = tmp_path / "mask.png"
    write_png(path, mask if value > 255 else mask.astype(np.uint8))
    import data.imageio

    data.imageio._BINARY_NOTED.clear()
    with pytest.warns(BinaryMaskWarning, match="read as a binary mask"):
        labels = read_labels(path)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    assert (labels[1:4, 1:4] == labels[2, 2]).all() and labels[2, 2] != labels[7, 7]


def test_single_region_with_one_label_id_keeps_its_id():
    from data.imageio import mask_to_labels

    mask = np.zeros((8, 8), np.uint16)
    mask[2:5, 2:5] = 7
    assert sorted(np.unique(mask_to_labels(mask)).tolist()) == [0, 7]


def test_predict_writes_more_than_65535_labels_as_tiff(tmp_path):
    from data.imageio import read_labels, write_labels
    from mscseg.predict import components

    mask = np.zeros((600, 600), bool)
    mask[::2, ::2] = True
    labels = components(mask)
    assert labels.dtype == np.int32 and labels.max() == 90000
    write_labels(tmp_path / "labels.tif", labels)
    np.testing.assert_array_equal(read_labels(tmp_path / "labels.tif"), labels)


def test_semseg_train_without_tensorflow_names_the_extra(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_tensorflow(name, *args, **kwargs):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")
        return real_import(name, *args, **kwargs)

    dataset = folders_dataset(tmp_path / "set")
    split = split_file(tmp_path / "split.json", dataset)
    from keras_semseg import tf_env
    from keras_semseg.train import main

    tf_env.tensorflow.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_tensorflow)
    try:
        code = main(["--data", str(dataset), "--split", str(split), "--model", "segnet", "--out", str(tmp_path / "run")])
    finally:
        monkeypatch.undo()
        tf_env.tensorflow.cache_clear()
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.count("\n") == 1 and "pip install" in stderr and "[keras]" in stderr
    assert not (tmp_path / "run").exists()


def test_registries_are_the_one_source_of_names():
    from keras_semseg.registry import MODEL_LABELS, MODELS
    from keras_semseg.sweep import METRIC_LABELS, METRICS
    from mscseg import config, report
    from torch_instseg import plots as instance_plots
    from torch_instseg.names import INTERPOLATIONS, METHOD_LABELS, PROMPT_MODES, SCORE_SOURCES, sam_method
    from torch_instseg.sam import SAM_VARIANTS

    assert config.SEMANTIC_MODELS == tuple(MODELS) and config.SEMANTIC_METRICS == METRICS
    assert config.SAM_MODES == PROMPT_MODES and config.SAM_SCORES == SCORE_SOURCES
    assert config.SAM_VARIANTS == tuple(SAM_VARIANTS) and config.INTERPOLATIONS == INTERPOLATIONS
    for name in MODELS:
        assert MODEL_LABELS[name] and report.MODEL_LABELS[name] == MODEL_LABELS[name]
    for metric in METRICS:
        assert report.METRIC_LABELS[metric] == METRIC_LABELS[metric]
    for mode in PROMPT_MODES:
        assert METHOD_LABELS[sam_method(mode)].startswith("SAM (")
        assert instance_plots.METHOD_LABELS is METHOD_LABELS and report.METHOD_LABELS is METHOD_LABELS
    defaults = config.Settings()
    assert defaults.semantic.models == list(MODELS) and defaults.instance.sam.modes == list(PROMPT_MODES)
    from torch_instseg.weights import SAM_CHECKPOINT_FILES

    for name, variant in SAM_VARIANTS.items():
        assert config.build(config.SamConfig, {"variant": name}).variant == name
        assert variant.checkpoint_file == SAM_CHECKPOINT_FILES.get(name)


# ---------------------------------------------------------------- the installed scripts

def _script(name: str) -> list[str]:
    found = shutil.which(name, path=os.path.dirname(sys.executable))
    if found is None:
        pytest.skip(f"console script {name} not installed")
    return [found]


@pytest.mark.parametrize("script, build", [
    ("semseg-sweep", c_sweep_nan_map),
    ("mscseg-stats", c_stats_text_cell),
    ("mscseg-data", c_data_convert_coco_rle_sum),
    ("instseg-evaluate", c_evaluate_rle_sum),
])
def test_installed_scripts_print_one_line(script, build, tmp_path):
    case = build(tmp_path)
    before = snapshot(case.out)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(_script(script) + [str(item) for item in case.argv], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(case.named) in lines[0], done.stderr
    assert snapshot(case.out) == before


def test_usage_errors_are_one_line_with_the_script_name(capsys):
    from keras_semseg.sweep import main

    assert main(["--probs", "p"]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith("error: semseg-sweep: ")


def test_unwritable_output_folder_is_one_line(tmp_path, capsys, monkeypatch):
    """Root ignores permission bits, so the check is driven through os.access."""
    import data.outputs

    probs, masks = sweep_inputs(tmp_path)
    out = previous_outputs(tmp_path / "out")
    before = snapshot(out)
    monkeypatch.setattr(data.outputs.os, "access", lambda path, mode: Path(path) != out)
    assert sweep_main(["--probs", str(probs), "--masks", str(masks), "--model", "unet", "--out", str(out)]) == 2
    stderr = capsys.readouterr().err
    assert stderr == f"error: {out}: output folder is not writable (nothing was written)\n"
    assert snapshot(out) == before


def test_staged_outputs_move_together_or_not_at_all(tmp_path):
    from data.outputs import staged_outputs

    out = previous_outputs(tmp_path / "out")
    before = snapshot(out)
    with pytest.raises(RuntimeError):
        with staged_outputs(out) as stage:
            (stage / "a.csv").write_text("new")
            (stage / "sub").mkdir()
            (stage / "sub" / "b.csv").write_text("new")
            raise RuntimeError("stopped half way")
    assert snapshot(out) == before
    with staged_outputs(out) as stage:
        (stage / "previous.csv").write_text("replaced")
        (stage / "sub").mkdir()
        (stage / "sub" / "b.csv").write_text("new")
    assert snapshot(out) == {"previous.csv": b"replaced", "sub": None, "sub/b.csv": b"new"}
    fresh = tmp_path / "new" / "deeper"
    with pytest.raises(RuntimeError):
        with staged_outputs(fresh):
            raise RuntimeError("nothing written")
    assert not (tmp_path / "new").exists()

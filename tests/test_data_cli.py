"""``python -m data``: synth, convert, split, summary, and one-line errors with exit status 2."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from data import Sample, in_memory, read_dataset
from data.__main__ import main
from data.summary import COLUMNS, summarize, summary_text


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_via(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)).save(folder / "cells.png")
    regions = [
        {"shape_attributes": {"name": "polygon", "all_points_x": [1, 5, 5, 1], "all_points_y": [1, 1, 4, 4]}},
        {"shape_attributes": {"name": "rect", "x": 8, "y": 6, "width": 6, "height": 5}},
    ]
    path = folder / "via.json"
    path.write_text(json.dumps({"cells.png100": {"filename": "cells.png", "size": 100, "regions": regions}}))
    return path


def write_per_sample(root: Path, count: int = 3) -> None:
    for index in range(count):
        folder = root / f"set{index + 1}"
        folder.mkdir(parents=True)
        tifffile.imwrite(str(folder / "raw.tif"), np.full((10, 14), 1000 * (index + 1), np.uint16) + np.arange(14, dtype=np.uint16))
        labels = np.zeros((10, 14), np.uint8)
        labels[1:4, 1:4], labels[6:9, 5:12] = 1, index + 2
        Image.fromarray(labels).save(folder / "ids.png")


def test_synth_then_summary(tmp_path, capsys):
    out = tmp_path / "syn"
    code, stdout, _ = run(capsys, "synth", "--out", out, "--n", 4, "--size", 32, "--density", "sparse", "--seed", 0)
    assert code == 0 and "wrote 4 synthetic images" in stdout
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"syn_{i:04d}.png" for i in range(4)]
    code, stdout, _ = run(capsys, "summary", out)
    assert code == 0
    assert "images: 4" in stdout and "sizes (W x H): 32x32 (4)" in stdout and "bit depth: 8-bit uint8, grayscale (4)" in stdout
    assert "cells per image: mean" in stdout
    code, _, _ = run(capsys, "synth", "--out", tmp_path / "syn16", "--n", 2, "--size", 32, "--bit-depth", 16)
    _, stdout, _ = run(capsys, "summary", tmp_path / "syn16")
    assert code == 0 and "16-bit uint16" in stdout


def test_synth_refuses_existing_output(tmp_path, capsys):
    out = tmp_path / "syn"
    run(capsys, "synth", "--out", out, "--n", 2, "--size", 32)
    before = tree(out)
    code, _, err = run(capsys, "synth", "--out", out, "--n", 3, "--size", 32)
    assert code == 2 and tree(out) == before
    assert_one_line_error(err, str(out), "--overwrite")
    code, _, _ = run(capsys, "synth", "--out", out, "--n", 3, "--size", 32, "--seed", 4, "--overwrite")
    assert code == 0 and len(read_dataset(out)) == 3
    code, _, err = run(capsys, "synth", "--out", tmp_path / "x", "--density", "crowded")
    assert code == 2 and not (tmp_path / "x").exists()
    assert_one_line_error(err, "unknown density 'crowded'")


def test_convert_via_to_folder_pairs(tmp_path, capsys):
    source = write_via(tmp_path / "via")
    out = tmp_path / "pairs"
    code, stdout, _ = run(capsys, "convert", source, "--out", out)
    assert code == 0 and "converted 1 samples (via)" in stdout
    assert (out / "images" / "cells.png").read_bytes() == (tmp_path / "via" / "cells.png").read_bytes()
    mask = Image.open(out / "masks" / "cells.png")
    assert mask.mode == "I;16"
    original, converted = read_dataset(source)[0], read_dataset(out)[0]
    np.testing.assert_array_equal(converted.labels, original.labels)
    np.testing.assert_array_equal(converted.image, original.image)
    assert converted.n_cells == 2 and (converted.labels == 2).sum() == 30
    before = tree(out)
    code, _, err = run(capsys, "convert", source, "--out", out)
    assert code == 2 and tree(out) == before
    assert_one_line_error(err, "already exists")


def test_convert_per_sample_keeps_16_bit_images(tmp_path, capsys):
    write_per_sample(tmp_path / "src")
    out = tmp_path / "pairs"
    code, _, _ = run(capsys, "convert", tmp_path / "src", "--format", "per_sample", "--image-name", "raw.tif", "--mask-name", "ids.png", "--out", out)
    assert code == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["set1.tif", "set2.tif", "set3.tif"]
    assert tifffile.imread(str(out / "images" / "set2.tif")).dtype == np.uint16
    for original, converted in zip(read_dataset(tmp_path / "src", image_name="raw.tif", mask_name="ids.png"), read_dataset(out)):
        assert original.name == converted.name
        np.testing.assert_array_equal(original.labels, converted.labels)


def test_convert_bad_input_writes_nothing(tmp_path, capsys):
    write_per_sample(tmp_path / "src")
    Image.fromarray(np.zeros((11, 14), np.uint8)).save(tmp_path / "src" / "set3" / "ids.png")
    out = tmp_path / "pairs"
    options = ["--format", "per_sample", "--image-name", "raw.tif", "--mask-name", "ids.png"]
    code, _, err = run(capsys, *options, "convert", tmp_path / "src", "--out", out)
    assert code == 2
    assert_one_line_error(err, str(tmp_path / "src" / "set3" / "ids.png"), "image is 14x10 (WxH) but its mask is 14x11")
    assert not out.exists()
    run(capsys, "synth", "--out", out, "--n", 2, "--size", 32)
    before = tree(out)
    code, _, err = run(capsys, "convert", tmp_path / "src", *options, "--out", out, "--overwrite")
    assert code == 2 and tree(out) == before
    assert_one_line_error(err, "set3")


def test_split_writes_reuses_and_refuses(tmp_path, capsys):
    dataset = tmp_path / "syn"
    run(capsys, "synth", "--out", dataset, "--n", 10, "--size", 32)
    split_file = tmp_path / "run" / "split.json"
    code, stdout, _ = run(capsys, "split", dataset, "--out", split_file, "--seed", 0, "--val-fraction", 0.2)
    split = json.loads(split_file.read_text())
    assert code == 0 and len(split["train"]) == 8 and len(split["val"]) == 2 and split["seed"] == 0
    assert "8 train, 2 val" in stdout
    written = split_file.read_text()
    code, stdout, _ = run(capsys, "split", dataset, "--out", split_file)
    assert code == 0 and "reusing existing split" in stdout and split_file.read_text() == written
    code, _, err = run(capsys, "split", dataset, "--out", split_file, "--seed", 5)
    assert code == 2 and split_file.read_text() == written
    assert_one_line_error(err, str(split_file), "seed 0", "--overwrite")
    code, _, _ = run(capsys, "split", dataset, "--out", split_file, "--seed", 5, "--overwrite")
    assert code == 0 and json.loads(split_file.read_text())["seed"] == 5


def test_split_file_naming_missing_images(tmp_path, capsys):
    dataset = tmp_path / "syn"
    run(capsys, "synth", "--out", dataset, "--n", 6, "--size", 32)
    split_file = tmp_path / "split.json"
    run(capsys, "split", dataset, "--out", split_file)
    gone = json.loads(split_file.read_text())["val"][0]
    (dataset / "images" / f"{gone}.png").unlink()
    (dataset / "masks" / f"{gone}.png").unlink()
    code, _, err = run(capsys, "split", dataset, "--out", split_file)
    assert code == 2
    assert_one_line_error(err, str(split_file), "missing from the dataset", gone)


def test_summary_reader_options_before_or_after_and_csv(tmp_path, capsys):
    write_per_sample(tmp_path / "src")
    options = ["--format", "per_sample", "--image-name", "raw.tif", "--mask-name", "ids.png"]
    code_after, after, _ = run(capsys, "summary", tmp_path / "src", *options, "--csv", tmp_path / "s.csv")
    code_before, before, _ = run(capsys, *options, "summary", tmp_path / "src")
    assert code_after == code_before == 0 and after == before
    assert "images: 3" in after and "sizes (W x H): 14x10 (3)" in after and "16-bit uint16, grayscale (3)" in after
    assert "cells per image: mean 2.00, min 2, max 2 (total 6)" in after
    frame = pd.read_csv(tmp_path / "s.csv")
    assert list(frame.columns) == COLUMNS and frame["image"].tolist() == ["set1", "set2", "set3"]
    code, _, err = run(capsys, "summary", tmp_path / "src", *options, "--csv", tmp_path / "s.csv")
    assert code == 2
    assert_one_line_error(err, "s.csv", "--overwrite")


@pytest.mark.parametrize("problem", ["empty", "missing", "option", "bad_json"])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, problem):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text("{")
    argv = {
        "empty": ["summary", tmp_path / "empty"],
        "missing": ["summary", tmp_path / "nowhere"],
        "option": ["summary", tmp_path / "empty", "--format", "folders", "--category", "cell"],
        "bad_json": ["convert", tmp_path / "bad.json", "--format", "coco", "--out", tmp_path / "out"],
    }[problem]
    code, stdout, err = run(capsys, *argv)
    assert code == 2 and stdout == ""
    assert_one_line_error(err)
    assert not (tmp_path / "out").exists()


def test_summarize_known_answer():
    labels = np.zeros((4, 5), np.int32)
    labels[0, 0:2], labels[3, 4] = 1, 7
    samples = [
        Sample(np.zeros((4, 5, 3), np.float32), labels, "a"),
        Sample(np.zeros((4, 5, 3), np.float32), np.zeros((4, 5), np.int32), "b"),
    ]
    frame = summarize(in_memory(samples))
    assert list(frame.columns) == COLUMNS
    assert frame["n_cells"].tolist() == [2, 0] and frame["cell_fraction"].tolist() == [0.15, 0.0]
    assert frame["height"].tolist() == [4, 4] and frame["width"].tolist() == [5, 5]
    text = summary_text(frame)
    assert "images: 2" in text and "sizes (W x H): 5x4 (2)" in text
    assert "cells per image: mean 1.00, min 0, max 2 (total 2)" in text and "images without cells: 1" in text


def test_convert_to_coco_matches_pycocotools(tmp_path, capsys):
    mask_util = pytest.importorskip("pycocotools.mask")
    root = tmp_path / "pairs"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    labels = np.zeros((13, 17), np.uint16)
    labels[0:3, 0:2] = 1                      # touches the top-left corner
    labels[5:13, 16] = 2                      # last column, down to the last row
    labels[2:9, 6:12] = 3
    labels[4:7, 8:10] = 0                     # a hole
    labels[10, 1:15] = 4                      # one row spanning many columns
    labels[12, 0] = 7                         # one pixel; label values need not be consecutive
    Image.fromarray(labels).save(root / "masks" / "frame.png")
    Image.fromarray(np.arange(13 * 17, dtype=np.uint8).reshape(13, 17)).save(root / "images" / "frame.png")
    tifffile.imwrite(str(root / "images" / "blank.tif"), np.zeros((6, 9), np.uint16))
    Image.fromarray(np.zeros((6, 9), np.uint8)).save(root / "masks" / "blank.png")
    out = tmp_path / "gt.json"
    code, stdout, _ = run(capsys, "convert", root, "--to", "coco", "--out", out)
    assert code == 0 and "2 samples" in stdout and "5 cells" in stdout
    coco = json.loads(out.read_text())
    assert [(i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [("blank", 9, 6), ("frame", 17, 13)]
    assert coco["categories"] == [{"id": 1, "name": "cell"}]
    frame_id = coco["images"][1]["id"]
    annotations = coco["annotations"]
    assert [a["image_id"] for a in annotations] == [frame_id] * 5 and len({a["id"] for a in annotations}) == 5
    for annotation, value in zip(annotations, (1, 2, 3, 4, 7)):
        reference = mask_util.encode(np.asfortranarray((labels == value).astype(np.uint8)))
        assert annotation["segmentation"]["counts"] == reference["counts"].decode("ascii")
        assert annotation["segmentation"]["size"] == [13, 17]
        assert annotation["area"] == int(mask_util.area(reference))
        assert annotation["bbox"] == mask_util.toBbox(reference).tolist()
        assert annotation["iscrowd"] == 0 and annotation["category_id"] == 1
    code, _, err = run(capsys, "convert", root, "--to", "coco", "--out", out)
    assert code == 2 and "already exists" in err


def test_convert_to_coco_then_self_evaluation_scores_one(tmp_path, capsys):
    from torch_instseg.evaluate import evaluate

    run(capsys, "synth", "--out", tmp_path / "syn", "--n", 3, "--size", 64, "--density", "medium")
    code, _, _ = run(capsys, "convert", tmp_path / "syn", "--to", "coco", "--out", tmp_path / "gt.json")
    assert code == 0
    coco = json.loads((tmp_path / "gt.json").read_text())
    results = [{"image_id": a["image_id"], "category_id": 1, "segmentation": a["segmentation"], "score": 1.0}
               for a in coco["annotations"]]
    for interpolation in (11, 101):
        assert evaluate(tmp_path / "gt.json", results, interpolation=interpolation, max_dets=None)["mAP"] == 1.0


@pytest.mark.realdata
def test_usiigaci_to_coco_scores_one_against_itself(usiigaci_root, tmp_path, capsys):
    from torch_instseg.evaluate import evaluate

    out = tmp_path / "val.json"
    code, stdout, _ = run(capsys, "convert", usiigaci_root / "val", "--format", "per_sample", "--image-name", "raw.tif",
                          "--mask-name", "instances_ids.png", "--to", "coco", "--out", out)
    assert code == 0 and "5 samples" in stdout
    coco = json.loads(out.read_text())
    assert [image["file_name"] for image in coco["images"]] == ["set46", "set47", "set48", "set49", "set50"]
    results = [{"image_id": a["image_id"], "category_id": 1, "segmentation": a["segmentation"], "score": 1.0}
               for a in coco["annotations"]]
    for interpolation in (11, 101):
        assert evaluate(out, results, interpolation=interpolation, max_dets=None)["mAP"] == 1.0

"""Known-answer tests for every dataset reader, on tiny files written here, and their bad-input errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from data import DatasetError, detect_format, read_dataset
from data.readers import available_formats, reader_options

H, W = 20, 30

# Three cells as rectangles given by their corners (x0, y0, x1, y1) in continuous image
# coordinates; the pixels whose centres lie inside are [y0:y1, x0:x1]. Cell 3 overlaps cell 2.
RECTS = [(2, 2, 7, 6), (10, 3, 16, 9), (13, 6, 19, 11)]


def expected_labels(rects=RECTS, shape=(H, W)) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    for label, (x0, y0, x1, y1) in enumerate(rects, start=1):
        labels[y0:y1, x0:x1] = label
    return labels


def corners(rect) -> tuple[list[float], list[float]]:
    x0, y0, x1, y1 = rect
    return [x0, x1, x1, x0], [y0, y0, y1, y1]


def write_image(path: Path, shape=(H, W), dtype=np.uint8, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    high = 255 if dtype == np.uint8 else 4000
    pixels = np.random.default_rng(seed).integers(0, high, shape).astype(dtype)
    if path.suffix == ".tif":
        tifffile.imwrite(str(path), pixels)
    else:
        Image.fromarray(pixels).save(path)
    return pixels


def write_mask(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":
        tifffile.imwrite(str(path), labels.astype(np.uint16))
    else:
        Image.fromarray(labels.astype(np.uint16)).save(path)


def via_v2_regions() -> list[dict]:
    regions = []
    for rect in RECTS:
        xs, ys = corners(rect)
        regions.append({"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys}, "region_attributes": {}})
    regions.insert(1, {"shape_attributes": {"name": "point", "cx": 25, "cy": 15}, "region_attributes": {}})
    regions.append({"shape_attributes": {"name": "polyline", "all_points_x": [0, 29], "all_points_y": [19, 19]}, "region_attributes": {}})
    return regions


def via_v2(folder: Path, wrapped: bool = False) -> Path:
    write_image(folder / "cells.png")
    write_image(folder / "empty.png", seed=1)
    metadata = {
        "cells.png1234": {"filename": "cells.png", "size": 1234, "regions": via_v2_regions(), "file_attributes": {}},
        "empty.png99": {"filename": "empty.png", "size": 99, "regions": [], "file_attributes": {}},
    }
    content = {"_via_settings": {}, "_via_img_metadata": metadata, "_via_attributes": {}} if wrapped else metadata
    path = folder / "via_region_data.json"
    path.write_text(json.dumps(content))
    return path


def via_v3(folder: Path, extra_metadata: dict | None = None) -> Path:
    write_image(folder / "cells.png")
    metadata = {}
    for index, rect in enumerate(RECTS):
        xs, ys = corners(rect)
        metadata[f"1_m{index}"] = {"vid": "1", "flg": 0, "z": [], "xy": [7] + [v for xy in zip(xs, ys) for v in xy], "av": {}}
    metadata["1_point"] = {"vid": "1", "flg": 0, "z": [], "xy": [1, 25, 15], "av": {}}
    metadata["1_line"] = {"vid": "1", "flg": 0, "z": [], "xy": [5, 0, 0, 29, 19], "av": {}}
    metadata.update(extra_metadata or {})
    project = {
        "project": {"pid": "__VIA_PROJECT_ID__", "rev": "__VIA_PROJECT_REV_ID__", "pname": "cells", "vid_list": ["1"]},
        "config": {"file": {"loc_prefix": {"1": "", "2": "", "3": "", "4": ""}}, "ui": {}},
        "attribute": {},
        "file": {"1": {"fid": "1", "fname": "cells.png", "type": 2, "loc": 1, "src": ""}},
        "view": {"1": {"fid_list": ["1"]}},
        "metadata": metadata,
    }
    path = folder / "project.json"
    path.write_text(json.dumps(project))
    return path


# ---------------------------------------------------------------- registry and detection

def test_registry_lists_every_format():
    assert available_formats() == ["coco", "ctc", "folders", "per_sample", "via"]
    assert reader_options("per_sample") == ["image_name", "mask_name"]


def test_missing_path_empty_folder_and_unknown_option(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty") as caught:
        read_dataset(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(caught.value)
    with pytest.raises(DatasetError, match="unknown dataset format 'tiff'"):
        read_dataset(tmp_path / "empty", format="tiff")
    with pytest.raises(DatasetError, match="image_name do not apply to format 'folders'"):
        read_dataset(tmp_path / "empty", format="folders", image_name="raw.tif")


# ---------------------------------------------------------------- folder pairs

def test_folders_known_answer(tmp_path):
    pixels = write_image(tmp_path / "images" / "a.png")
    write_mask(tmp_path / "masks" / "a.png", expected_labels())
    write_image(tmp_path / "images" / "b.tif", dtype=np.uint16)
    write_mask(tmp_path / "masks" / "b.tif", expected_labels()[::-1])
    assert detect_format(tmp_path) == "folders"
    dataset = read_dataset(tmp_path)
    assert dataset.names == ["a", "b"]
    sample = dataset.get("a")
    assert sample.image.shape == (H, W, 3) and sample.image.dtype == np.float32
    np.testing.assert_allclose(sample.image[..., 1], pixels / 255.0, atol=1e-6)
    np.testing.assert_array_equal(sample.labels, expected_labels())
    assert sample.labels.dtype == np.int32 and sample.n_cells == 3
    np.testing.assert_array_equal(dataset.get("b").labels, expected_labels()[::-1])


def test_folders_binary_mask_becomes_components(tmp_path):
    write_image(tmp_path / "images" / "a.png")
    binary = (expected_labels([(2, 2, 7, 6), (20, 10, 25, 15)]) > 0).astype(np.uint8) * 255
    (tmp_path / "masks").mkdir()
    Image.fromarray(binary).save(tmp_path / "masks" / "a.png")
    labels = read_dataset(tmp_path)[0].labels
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    np.testing.assert_array_equal(labels > 0, binary > 0)


def test_folders_pairing_errors(tmp_path):
    write_image(tmp_path / "images" / "a.png")
    write_image(tmp_path / "images" / "b.png")
    write_mask(tmp_path / "masks" / "a.png", expected_labels())
    with pytest.raises(DatasetError, match="image has no mask") as caught:
        read_dataset(tmp_path)
    assert "b.png" in str(caught.value)
    (tmp_path / "images" / "b.png").unlink()
    write_mask(tmp_path / "masks" / "c.png", expected_labels())
    with pytest.raises(DatasetError, match="mask has no image") as caught:
        read_dataset(tmp_path)
    assert "c.png" in str(caught.value)


def test_folders_content_errors_at_load(tmp_path):
    write_image(tmp_path / "images" / "a.png")
    write_mask(tmp_path / "masks" / "a.png", np.zeros((H + 1, W), np.int32))
    write_image(tmp_path / "images" / "b.png")
    (tmp_path / "masks" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    dataset = read_dataset(tmp_path)
    with pytest.raises(DatasetError, match=r"image is 30x20 \(WxH\) but its mask is 30x21") as caught:
        dataset.get("a")
    assert str(tmp_path / "masks" / "a.png") in str(caught.value)
    with pytest.raises(DatasetError, match="unreadable or truncated") as caught:
        dataset.get("b")
    assert "b.png" in str(caught.value)
    with pytest.raises(DatasetError):
        dataset.validate()


def test_folders_empty_subfolders(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DatasetError, match="dataset folder is empty"):
        read_dataset(tmp_path)


# ---------------------------------------------------------------- VIA

@pytest.mark.parametrize("wrapped", [False, True])
def test_via_v2_three_polygons(tmp_path, wrapped):
    path = via_v2(tmp_path, wrapped)
    assert detect_format(path) == "via" and detect_format(tmp_path) == "via"
    dataset = read_dataset(path)
    assert dataset.names == ["cells", "empty"] and dataset.format == "via"
    sample = dataset.get("cells")
    np.testing.assert_array_equal(sample.labels, expected_labels())
    assert sample.image.shape == (H, W, 3)
    assert sample.source == str(tmp_path / "cells.png")
    assert dataset.get("empty").n_cells == 0


def test_via_v3_three_polygons_match_v2(tmp_path):
    path = via_v3(tmp_path)
    assert detect_format(path) == "via"
    dataset = read_dataset(path)
    assert dataset.names == ["cells"]
    np.testing.assert_array_equal(dataset[0].labels, expected_labels())


def test_via_v3_other_area_shapes(tmp_path):
    extra = {
        "r": {"vid": "1", "xy": [2, 21, 12, 5, 4], "z": [], "av": {}},              # rectangle x, y, w, h
        "er": {"vid": "1", "xy": [8, 21, 2, 25, 0, 27, 3, 24, 5], "z": [], "av": {}},  # extreme rectangle
        "c": {"vid": "1", "xy": [3, 6.5, 14.5, 3], "z": [], "av": {}},               # circle cx, cy, r
        "ec": {"vid": "1", "xy": [9, 3, 13, 1, 15, 3, 17], "z": [], "av": {}},      # circle through 3 points: (3, 15), r 2
    }
    labels = read_dataset(via_v3(tmp_path, extra))[0].labels
    np.testing.assert_array_equal(labels[12:16, 21:26], 4)
    assert (labels == 4).sum() == 20
    np.testing.assert_array_equal(labels[0:5, 21:27], 5)
    assert (labels == 5).sum() == 30
    assert labels[14, 7] == 6 and labels[14, 5] == 6
    through_three_points = labels == 7
    assert through_three_points[15, 2] and abs(through_three_points.sum() - np.pi * 4) <= 3


def test_via_v2_rect_circle_ellipse(tmp_path):
    write_image(tmp_path / "a.png")
    regions = [
        {"shape_attributes": {"name": "rect", "x": 1, "y": 1, "width": 4, "height": 3}},
        {"shape_attributes": {"name": "circle", "cx": 15, "cy": 10, "r": 4}},
        {"shape_attributes": {"name": "ellipse", "cx": 25, "cy": 10, "rx": 2, "ry": 6, "theta": 0}},
    ]
    (tmp_path / "a.json").write_text(json.dumps({"a.png1": {"filename": "a.png", "size": 1, "regions": regions}}))
    labels = read_dataset(tmp_path / "a.json", format="via")[0].labels
    np.testing.assert_array_equal(labels[1:4, 1:5], 1)
    assert (labels == 1).sum() == 12
    assert abs((labels == 2).sum() - np.pi * 16) <= 4 and labels[10, 15] == 2
    ellipse = np.argwhere(labels == 3)
    assert abs(len(ellipse) - np.pi * 12) <= 4
    assert np.ptp(ellipse[:, 0]) > 2 * np.ptp(ellipse[:, 1])


def test_via_images_option(tmp_path):
    via_v2(tmp_path / "pictures")
    json_path = tmp_path / "pictures" / "via_region_data.json"
    moved = tmp_path / "annotations" / "via.json"
    moved.parent.mkdir()
    json_path.rename(moved)
    with pytest.raises(DatasetError, match="image 'cells.png' listed in the annotation file was not found") as caught:
        read_dataset(moved)
    assert str(moved) in str(caught.value)
    dataset = read_dataset(moved, images=tmp_path / "pictures")
    np.testing.assert_array_equal(dataset.get("cells").labels, expected_labels())


def test_via_bad_json_and_bad_shape(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"cells.png1": {"filename": "cells.png", "regions": [')
    with pytest.raises(DatasetError, match="not a valid VIA JSON") as caught:
        read_dataset(bad, format="via")
    assert str(bad) in str(caught.value)
    write_image(tmp_path / "a.png")
    shape = {"name": "polygon", "all_points_x": [1, 2, 3], "all_points_y": [1, 2]}
    (tmp_path / "b.json").write_text(json.dumps({"a.png1": {"filename": "a.png", "regions": [{"shape_attributes": shape}]}}))
    with pytest.raises(DatasetError, match="image 'a.png', region 0: bad 'polygon' shape"):
        read_dataset(tmp_path / "b.json", format="via")
    (tmp_path / "c.json").write_text(json.dumps({"a.png1": {"filename": "a.png", "regions": [{"shape_attributes": {"name": "blob"}}]}}))
    with pytest.raises(DatasetError, match="unknown region shape 'blob'"):
        read_dataset(tmp_path / "c.json", format="via")
    (tmp_path / "d.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(DatasetError, match="not a VIA JSON file"):
        read_dataset(tmp_path / "d.json", format="via")


def test_via_v3_unknown_shape_id(tmp_path):
    path = via_v3(tmp_path, {"x": {"vid": "1", "xy": [12, 1, 2], "z": [], "av": {}}})
    with pytest.raises(DatasetError, match="unknown region shape id 12"):
        read_dataset(path)


def test_via_truncated_image_fails_at_load(tmp_path):
    path = via_v2(tmp_path)
    (tmp_path / "cells.png").write_bytes((tmp_path / "cells.png").read_bytes()[:40])
    dataset = read_dataset(path)
    with pytest.raises(DatasetError, match="unreadable or truncated") as caught:
        dataset.get("cells")
    assert "cells.png" in str(caught.value)


# ---------------------------------------------------------------- CTC

def make_ctc(root: Path) -> dict[str, np.ndarray]:
    truth = {}
    for frame in range(3):
        write_image(root / "01" / f"t{frame:03d}.tif", dtype=np.uint16, seed=frame)
    for frame in (0, 2):
        labels = np.roll(expected_labels(), frame, axis=1)
        write_mask(root / "01_GT" / "SEG" / f"man_seg{frame:03d}.tif", labels)
        truth[f"01_t{frame:03d}"] = labels
    write_image(root / "02" / "t0000.tif", dtype=np.uint16)
    write_mask(root / "02_GT" / "SEG" / "man_seg0000.tif", expected_labels()[::-1])
    (root / "02_GT" / "TRA").mkdir()
    truth["02_t0000"] = expected_labels()[::-1]
    return truth


def test_ctc_known_answer(tmp_path):
    truth = make_ctc(tmp_path)
    assert detect_format(tmp_path) == "ctc"
    dataset = read_dataset(tmp_path)
    assert dataset.names == ["01_t000", "01_t002", "02_t0000"]
    for sample in dataset:
        np.testing.assert_array_equal(sample.labels, truth[sample.name])
        assert sample.image.shape == (H, W, 3)
    assert read_dataset(tmp_path, sequences="02").names == ["02_t0000"]


def test_ctc_mask_without_image(tmp_path):
    make_ctc(tmp_path)
    write_mask(tmp_path / "01_GT" / "SEG" / "man_seg007.tif", expected_labels())
    with pytest.raises(DatasetError, match="mask has no image") as caught:
        read_dataset(tmp_path, format="ctc")
    assert "man_seg007.tif" in str(caught.value)
    with pytest.raises(DatasetError, match="sequence folder '03/' not found"):
        read_dataset(tmp_path, format="ctc", sequences=["03"])


# ---------------------------------------------------------------- COCO

def rle_uncompressed(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: run lengths over the column-major pixels, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def make_coco(folder: Path, crowd: bool = False) -> tuple[Path, np.ndarray]:
    from pycocotools import mask as mask_utils

    write_image(folder / "images" / "cells.png")
    write_image(folder / "images" / "none.png", seed=3)
    x0, y0, x1, y1 = RECTS[0]
    polygon = [x0, y0, x1, y0, x1, y1, x0, y1]
    second = np.zeros((H, W), np.uint8)
    second[3:9, 10:16] = 1
    second[10, 20] = 1
    compressed = mask_utils.encode(np.asfortranarray(second))
    third = expected_labels([RECTS[2]]) > 0
    annotations = [
        {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [polygon]},
        {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": {"size": [H, W], "counts": compressed["counts"].decode()}},
        {"id": 13, "image_id": 1, "category_id": 2 if not crowd else 1, "iscrowd": int(crowd), "segmentation": rle_uncompressed(third)},
    ]
    coco = {
        "images": [{"id": 1, "file_name": "images/cells.png", "height": H, "width": W}, {"id": 2, "file_name": "images/none.png", "height": H, "width": W}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "debris"}],
    }
    path = folder / "instances.json"
    path.write_text(json.dumps(coco))
    labels = expected_labels()
    labels[10, 20] = 2
    return path, labels


def test_coco_polygon_and_rle(tmp_path):
    path, labels = make_coco(tmp_path)
    assert detect_format(path) == "coco" and detect_format(tmp_path) == "coco"
    dataset = read_dataset(path)
    assert dataset.names == ["cells", "none"] and dataset.format == "coco"
    np.testing.assert_array_equal(dataset.get("cells").labels, labels)
    assert dataset.get("none").n_cells == 0
    only_cells = read_dataset(path, category="cell").get("cells").labels
    expected = labels.copy()
    expected[expected == 3] = 0
    expected[6:9, 13:16] = 2
    np.testing.assert_array_equal(only_cells, expected)


def test_coco_crowd_modes(tmp_path):
    path, labels = make_coco(tmp_path, crowd=True)
    np.testing.assert_array_equal(read_dataset(path).get("cells").labels, labels)
    skipped = read_dataset(path, crowd="skip").get("cells").labels
    assert skipped.max() == 2 and not (skipped[6:11, 16:19]).any()
    with pytest.raises(DatasetError, match="crowd annotation"):
        read_dataset(path, crowd="error")


def test_coco_images_option_and_errors(tmp_path):
    path, _ = make_coco(tmp_path)
    coco = json.loads(path.read_text())
    for image in coco["images"]:
        image["file_name"] = Path(image["file_name"]).name
    elsewhere = tmp_path / "ann" / "coco.json"
    elsewhere.parent.mkdir()
    elsewhere.write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match="image 'cells.png' listed in the annotation file was not found"):
        read_dataset(elsewhere)
    assert read_dataset(elsewhere, images=tmp_path / "images").names == ["cells", "none"]
    coco["annotations"][0]["image_id"] = 9
    elsewhere.write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match="refers to image id 9"):
        read_dataset(elsewhere, images=tmp_path / "images")
    elsewhere.write_text(json.dumps(coco)[:-10])
    with pytest.raises(DatasetError, match="not a valid COCO JSON") as caught:
        read_dataset(elsewhere, format="coco")
    assert str(elsewhere) in str(caught.value)


def test_coco_size_mismatch_at_load(tmp_path):
    path, _ = make_coco(tmp_path)
    coco = json.loads(path.read_text())
    coco["images"][1]["height"] = H + 5
    path.write_text(json.dumps(coco))
    dataset = read_dataset(path)
    with pytest.raises(DatasetError, match=r"image is 30x20 \(WxH\) but its mask is 30x25"):
        dataset.get("none")
    with pytest.raises(DatasetError, match="RLE size is 30x20"):
        coco["images"][0]["height"] = H + 5
        path.write_text(json.dumps(coco))
        read_dataset(path).get("cells")


# ---------------------------------------------------------------- per-sample folders

def test_per_sample_named_files(tmp_path):
    for index, name in enumerate(["set1", "set2"]):
        write_image(tmp_path / name / "raw.tif", dtype=np.uint16, seed=index)
        write_mask(tmp_path / name / "instances_ids.png", np.roll(expected_labels(), index, axis=0))
        write_image(tmp_path / name / "preview.png", seed=9)
    dataset = read_dataset(tmp_path, image_name="raw.tif", mask_name="instances_ids.png")
    assert dataset.names == ["set1", "set2"] and dataset.format == "per_sample"
    np.testing.assert_array_equal(dataset.get("set2").labels, np.roll(expected_labels(), 1, axis=0))
    assert dataset.get("set1").source == str(tmp_path / "set1" / "raw.tif")
    with pytest.raises(DatasetError, match="cannot tell which file is the image"):
        read_dataset(tmp_path, format="per_sample")


def test_per_sample_autodetect(tmp_path):
    for name in ["a", "b"]:
        write_image(tmp_path / name / "image.png")
        write_mask(tmp_path / name / "mask.png", expected_labels())
    assert detect_format(tmp_path) == "per_sample"
    dataset = read_dataset(tmp_path)
    assert dataset.names == ["a", "b"] and dataset.format == "per_sample"
    np.testing.assert_array_equal(dataset[1].labels, expected_labels())


def test_per_sample_dsb2018(tmp_path):
    for name in ["0a1b", "ff00"]:
        rgba = np.random.default_rng(0).integers(0, 255, (H, W, 4)).astype(np.uint8)
        (tmp_path / name / "images").mkdir(parents=True)
        Image.fromarray(rgba, "RGBA").save(tmp_path / name / "images" / f"{name}.png")
        for index, rect in enumerate(RECTS):
            binary = (expected_labels([rect]) > 0).astype(np.uint8) * 255
            write_mask_binary = tmp_path / name / "masks" / f"m{index}.png"
            write_mask_binary.parent.mkdir(exist_ok=True)
            Image.fromarray(binary).save(write_mask_binary)
    assert detect_format(tmp_path) == "per_sample"
    dataset = read_dataset(tmp_path)
    assert dataset.names == ["0a1b", "ff00"]
    sample = dataset.get("ff00")
    np.testing.assert_array_equal(sample.labels, expected_labels())
    np.testing.assert_allclose(sample.image, rgba[..., :3] / 255.0, atol=1e-6)


def test_per_sample_errors(tmp_path):
    write_image(tmp_path / "a" / "image.png")
    write_mask(tmp_path / "a" / "mask.png", expected_labels())
    write_image(tmp_path / "b" / "image.png")
    with pytest.raises(DatasetError, match="image has no mask") as caught:
        read_dataset(tmp_path, format="per_sample")
    assert str(tmp_path / "b" / "image.png") in str(caught.value)
    (tmp_path / "b" / "image.png").unlink()
    write_mask(tmp_path / "b" / "labels.png", expected_labels())
    with pytest.raises(DatasetError, match="mask has no image") as caught:
        read_dataset(tmp_path, format="per_sample")
    assert "labels.png" in str(caught.value)
    (tmp_path / "b" / "labels.png").unlink()
    with pytest.raises(DatasetError, match="holds neither image nor mask"):
        read_dataset(tmp_path, format="per_sample")
    (tmp_path / "b").rmdir()
    (tmp_path / "a" / "masks").mkdir()
    Image.fromarray(np.full((H, W), 7, np.uint8)).save(tmp_path / "a" / "masks" / "x.png")
    dataset = read_dataset(tmp_path, format="per_sample", image_name="image.png", mask_name="masks")
    with pytest.raises(DatasetError, match="instance mask is not binary"):
        dataset[0]


# ---------------------------------------------------------------- real data

@pytest.mark.realdata
def test_usiigaci_through_per_sample_reader(usiigaci_root):
    from data.summary import summarize

    dataset = read_dataset(usiigaci_root / "train", format="per_sample", image_name="raw.tif", mask_name="instances_ids.png")
    assert len(dataset) == 45
    frame = summarize(dataset)
    assert set(frame["dtype"]) == {"uint16"} and set(frame["channels"]) == {1}
    assert frame["height"].between(1000, 1050).all() and frame["width"].between(1000, 1050).all()
    assert (frame["n_cells"] > 0).all()
    sample = dataset.get("set1")
    assert sample.image.dtype == np.float32 and sample.image.shape[2] == 3
    assert 0.0 <= sample.image.min() and sample.image.max() <= 1.0 and sample.n_cells > 0

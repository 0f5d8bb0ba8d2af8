"""torch_instseg.coco: RLE in numpy (checked against pycocotools), COCO building, loading and validation."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from data.errors import DatasetError
from data.synthetic import generate
from torch_instseg.coco import (
    counts_to_mask,
    dataset_to_coco,
    decode_rle,
    encode_rle,
    image_id_by_name,
    instances_to_results,
    labels_to_annotations,
    load_coco,
    load_results,
    mask_to_counts,
    results_meta,
    rle_area,
    rle_to_bbox,
    string_to_counts,
    strings_to_counts,
    write_coco,
    write_results,
)
from torch_instseg.errors import InstsegError


def _reference(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    masks = [np.zeros((5, 7), bool), np.ones((5, 7), bool), np.ones((1, 1), bool), np.zeros((1, 1), bool)]
    corner = np.zeros((6, 4), bool)
    corner[0, 0] = True
    masks.append(corner)
    last = np.zeros((6, 4), bool)
    last[-1, -1] = True
    masks.append(last)
    for _ in range(40):
        h, w = rng.integers(1, 30, 2)
        masks.append(rng.random((h, w)) < rng.random())
    big = np.zeros((400, 300), bool)
    big[50:390, 10:280] = True
    big[3, 2] = True
    masks.append(big)
    return masks


def test_encode_equals_pycocotools_and_round_trips():
    for mask in _masks():
        reference = _reference(mask)
        rle = encode_rle(mask)
        assert rle["counts"] == reference["counts"].decode()
        assert rle["size"] == list(reference["size"])
        assert np.array_equal(decode_rle(rle), mask)
        assert np.array_equal(decode_rle(reference), mask)  # bytes counts
        assert rle_area(rle) == int(mask_utils.area(reference))
        assert rle_to_bbox(rle) == mask_utils.toBbox(reference).tolist()


def test_uncompressed_counts_and_batch_decoding():
    mask = np.array([[0, 1, 1], [0, 1, 0]], bool)
    counts = mask_to_counts(mask)
    assert counts.tolist() == [2, 3, 1]  # column-major: 0 0 | 1 1 1 | 0
    assert np.array_equal(decode_rle({"size": [2, 3], "counts": [2, 3, 1]}), mask)
    texts = [encode_rle(m)["counts"] for m in _masks()[:10]]
    for values, mask in zip(strings_to_counts(texts), _masks()[:10]):
        assert np.array_equal(counts_to_mask(values, *mask.shape), mask)


@pytest.mark.parametrize("rle", [
    {"size": [2, 2], "counts": "a~"},                  # characters outside '0'..'o'
    {"size": [2, 2], "counts": "0`"},                  # truncated number
    {"size": [2, 2], "counts": [1, 1]},                # covers 2 of 4 pixels
    {"size": [2], "counts": "4"},                      # bad size
    {"size": [2, 2], "counts": 4},                     # counts not str/list
])
def test_bad_rle_is_a_dataset_error(rle):
    with pytest.raises(DatasetError):
        decode_rle(rle)


def test_string_to_counts_known_values():
    assert string_to_counts("4").tolist() == [4]
    assert string_to_counts(encode_rle(np.ones((3, 3), bool))["counts"]).tolist() == [0, 9]


def test_labels_to_annotations_known_answer():
    labels = np.array([[0, 2, 2, 0], [0, 2, 0, 5], [7, 0, 0, 5]], np.int32)
    anns = labels_to_annotations(labels, image_id=4, start_id=10)
    assert [a["id"] for a in anns] == [10, 11, 12]
    assert [a["area"] for a in anns] == [3, 2, 1]
    assert [a["bbox"] for a in anns] == [[1.0, 0.0, 2.0, 2.0], [3.0, 1.0, 1.0, 2.0], [0.0, 2.0, 1.0, 1.0]]
    for ann, label in zip(anns, (2, 5, 7)):
        assert ann["image_id"] == 4 and ann["category_id"] == 1 and ann["iscrowd"] == 0
        assert np.array_equal(decode_rle(ann["segmentation"]), labels == label)
        assert ann["segmentation"]["counts"] == _reference(labels == label)["counts"].decode()


def test_dataset_to_coco_structure():
    samples = generate(2, 32, "sparse", seed=3)
    gt = dataset_to_coco(samples)
    assert [im["id"] for im in gt["images"]] == [1, 2]
    assert [im["file_name"] for im in gt["images"]] == [s.name for s in samples]
    assert all(im["height"] == 32 and im["width"] == 32 for im in gt["images"])
    assert [a["id"] for a in gt["annotations"]] == list(range(1, len(gt["annotations"]) + 1))
    assert len(gt["annotations"]) == sum(s.n_cells for s in samples)
    assert gt["categories"] == [{"id": 1, "name": "cell"}]
    assert image_id_by_name(gt) == {samples[0].name: 1, samples[1].name: 2}
    first = [a for a in gt["annotations"] if a["image_id"] == 1]
    union = np.zeros((32, 32), bool)
    for ann in first:
        union |= decode_rle(ann["segmentation"])
    assert np.array_equal(union, samples[0].mask)


def test_instances_to_results_fields():
    masks = np.zeros((2, 4, 5), bool)
    masks[0, 1:3, 1:4] = True
    masks[1, 0, 0] = True
    results = instances_to_results(7, masks, np.array([0.9, 0.2]), extra={"sam_iou": [0.8, 0.7]})
    assert [r["score"] for r in results] == [0.9, 0.2]
    assert results[0]["bbox"] == [1.0, 1.0, 3.0, 2.0]
    assert results[1]["sam_iou"] == 0.7 and results[0]["image_id"] == 7 and results[0]["category_id"] == 1
    assert np.array_equal(decode_rle(results[0]["segmentation"]), masks[0])
    boxed = instances_to_results(7, masks, [0.9, 0.2], boxes=np.array([[1, 1, 4, 3], [0, 0, 1, 1]]))
    assert boxed[0]["bbox"] == [1.0, 1.0, 3.0, 2.0]
    with pytest.raises(DatasetError):
        instances_to_results(7, masks, [0.9])
    with pytest.raises(DatasetError):
        instances_to_results(7, masks, [0.9, 0.1], boxes=np.zeros((2, 3)))


def _gt() -> dict:
    labels = np.zeros((6, 8), np.int32)
    labels[1:3, 1:3] = 1
    labels[3:5, 4:7] = 2
    return {
        "images": [{"id": 1, "file_name": "a", "height": 6, "width": 8}],
        "annotations": labels_to_annotations(labels, 1),
        "categories": [{"id": 1, "name": "cell"}],
    }


def test_load_and_write_round_trip(tmp_path):
    gt = _gt()
    path = write_coco(tmp_path / "gt.json", gt)
    assert load_coco(path) == gt
    assert not list(tmp_path.glob("*.partial"))
    results = instances_to_results(1, np.ones((1, 6, 8), bool), [0.5])
    results_path = write_results(tmp_path / "maskrcnn.json", results, meta={"score_source": "maskrcnn_score"})
    assert load_results(results_path, gt) == results
    assert results_meta(results_path) == {"score_source": "maskrcnn_score"}
    assert (tmp_path / "maskrcnn.meta.json").is_file()
    assert load_results([], gt) == []


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ('{"images": []}', "annotations"),
])
def test_load_coco_rejects(tmp_path, content, problem):
    path = tmp_path / "gt.json"
    path.write_text(content)
    with pytest.raises(InstsegError, match=problem) as info:
        load_coco(path)
    assert str(path) in str(info.value)


def test_gt_annotation_on_unknown_image(tmp_path):
    gt = _gt()
    gt["annotations"][0]["image_id"] = 9
    path = write_coco(tmp_path / "gt.json", gt)
    with pytest.raises(InstsegError, match="unknown image id 9"):
        load_coco(path)


@pytest.mark.parametrize("edit, problem", [
    (lambda r: r.update(image_id=5), "image id 5"),
    (lambda r: r.update(segmentation=encode_rle(np.ones((8, 6), bool))), "does not match image 1"),
    (lambda r: r.pop("score"), "missing 'score'"),
    (lambda r: r.update(score=float("nan")), "finite"),
    (lambda r: r.update(segmentation={"size": [6, 8], "counts": "0"}), "cover 0 pixels"),
    (lambda r: r.update(category_id=3), "category_id 3"),
])
def test_load_results_rejects(tmp_path, edit, problem):
    results = instances_to_results(1, np.ones((2, 6, 8), bool), [0.5, 0.4])
    edit(results[1])
    path = tmp_path / "pred.json"
    path.write_text(json.dumps(results))
    with pytest.raises(InstsegError, match=problem) as info:
        load_results(path, _gt())
    assert str(path) in str(info.value) and "detection 1" in str(info.value)


def test_results_must_be_a_list(tmp_path):
    path = tmp_path / "pred.json"
    path.write_text('{"image_id": 1}')
    with pytest.raises(InstsegError, match="JSON list"):
        load_results(path, _gt())


def test_polygon_ground_truth_rasterised_like_cocoeval():
    from torch_instseg.coco import index_ground_truth

    polygon = [[1.0, 1.0, 6.0, 1.5, 5.0, 4.0, 1.5, 3.5]]
    gt = {"images": [{"id": 1, "file_name": "p", "height": 6, "width": 8}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": polygon, "area": 10, "iscrowd": 0}],
          "categories": [{"id": 1, "name": "cell"}]}
    counts = index_ground_truth(gt).instances[0].counts
    reference = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygon, 6, 8))).astype(bool)
    assert np.array_equal(counts_to_mask(counts, 6, 8), reference)


def test_the_data_layer_imports_nothing_above_it():
    """``data/`` (the codec, the readers, ``python -m data``) imports neither torch_instseg, keras_semseg, mscseg nor a framework."""
    import ast
    from pathlib import Path

    import data

    above = {"torch_instseg", "keras_semseg", "mscseg", "peers", "stats", "torch", "torchvision", "tensorflow"}
    found = []
    for path in sorted(Path(data.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            found += [f"{path.name}: {name}" for name in names if name.split(".")[0] in above]
    assert found == []

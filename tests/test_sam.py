"""SAM prompted by boxes: variants, the three prompt modes, batched decoding, bad input, a run over a dataset."""
from __future__ import annotations

import json

import numpy as np
import pytest

from data.dataset import in_memory
from data.errors import DatasetError
from data.synthetic import generate
from torch_instseg import sam as S
from torch_instseg.errors import InstsegError

torch = pytest.importorskip("torch")
pytest.importorskip("segment_anything")


@pytest.fixture(scope="module")
def sam():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = S.build_sam("vit_tiny", "none", device="cpu")
    yield model
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scene():
    sample = generate(1, 64, "sparse", seed=5)[0]
    from torch_instseg.maskrcnn import labels_to_instances

    masks, boxes = labels_to_instances(sample.labels)
    return sample, masks, boxes


def test_random_weights_are_marked_untrained(sam):
    assert sam.mscseg_info == {"variant": "vit_tiny", "checkpoint": "none", "untrained": True}
    assert sam.prompt_encoder.mask_input_size == (64, 64)


def test_three_prompt_modes_on_a_64px_image(sam, scene):
    sample, masks, boxes = scene
    assert len(boxes) >= 3
    probs = masks.astype(np.float32) * 0.9 + 0.05
    outputs = {}
    for mode in S.PROMPT_MODES:
        sam_masks, ious = S.sam_predict(sam, sample.image, boxes, mode, maskrcnn_masks=masks, maskrcnn_mask_probs=probs)
        assert sam_masks.shape == (len(boxes), 64, 64) and sam_masks.dtype == bool
        assert ious.shape == (len(boxes),) and np.isfinite(ious).all()
        outputs[mode] = sam_masks
    assert not np.array_equal(outputs["box"], outputs["box_mask"])
    with pytest.raises(InstsegError, match="box_point"):
        S.sam_predict(sam, sample.image, boxes, "box_point")
    with pytest.raises(InstsegError, match="unknown prompt mode"):
        S.sam_predict(sam, sample.image, boxes, "points")


def test_batched_decoder_equals_one_box_at_a_time(sam, scene):
    sample, masks, boxes = scene
    embedding = S.embed_image(sam, sample.image)
    probs = masks.astype(np.float32)
    for mode in S.PROMPT_MODES:
        batched, batched_iou = S.decode_prompts(sam, embedding, boxes, mode, masks, probs, batch_size=64)
        singles = [S.decode_prompts(sam, embedding, boxes[k:k + 1], mode, masks[k:k + 1], probs[k:k + 1], batch_size=1) for k in range(len(boxes))]
        np.testing.assert_array_equal(batched, np.concatenate([m for m, _ in singles]))
        np.testing.assert_allclose(batched_iou, np.concatenate([i for _, i in singles]), atol=1e-5)
        chunked, _ = S.decode_prompts(sam, embedding, boxes, mode, masks, probs, batch_size=2)
        np.testing.assert_array_equal(chunked, batched)


def test_boxes_are_clipped_and_empty_ones_skipped(sam, scene):
    sample, _, _ = scene
    boxes = np.array([[-10, -10, 20, 20], [0, 0, 20, 20], [70, 70, 90, 90], [30, 30, 30, 40], [np.nan, 0, 5, 5]])
    masks, ious = S.sam_predict(sam, sample.image, boxes)
    np.testing.assert_array_equal(masks[0], masks[1])
    assert np.isfinite(ious[:2]).all() and np.isnan(ious[2:]).all()
    assert not masks[2:].any()
    empty_masks, empty_ious = S.sam_predict(sam, sample.image, np.zeros((0, 4)))
    assert empty_masks.shape == (0, 64, 64) and empty_ious.shape == (0,)


def test_interior_point_is_farthest_from_the_edge():
    masks = np.zeros((2, 30, 40), bool)
    masks[0, 10:21, 5:36] = True
    points = S.interior_points(masks, np.array([[5, 10, 36, 21], [0, 0, 10, 20]], float))
    assert points[0, 1] == 15 and 10 <= points[0, 0] <= 30
    assert masks[0, int(points[0, 1]), int(points[0, 0])]
    np.testing.assert_array_equal(points[1], [5, 10])


def test_mask_prompt_transform_matches_sam_frame():
    probs = np.zeros((1, 64, 32), np.float32)
    probs[0, :32] = 1.0
    prompt = S.mask_prompts(probs, (64, 32), 16)
    assert prompt.shape == (1, 1, 16, 16)
    high, low = np.log((1 - S.MASK_PROMPT_EPS) / S.MASK_PROMPT_EPS), np.log(S.MASK_PROMPT_EPS / (1 - S.MASK_PROMPT_EPS))
    np.testing.assert_allclose(prompt[0, 0, :6, :8], high, rtol=1e-5)
    np.testing.assert_allclose(prompt[0, 0, 10:, :8], low, rtol=1e-5)
    np.testing.assert_allclose(prompt[0, 0, :, 8:], low, rtol=1e-5)  # padding to the right, as SAM pads its input


def test_vit_tiny_512_is_vit_tiny_on_512_px_inputs_and_its_checkpoints_are_told_apart(sam, tmp_path):
    wide = S.build_sam("vit_tiny_512", "none", device="cpu")
    assert wide.image_encoder.img_size == 512 and sam.image_encoder.img_size == 256
    assert wide.prompt_encoder.mask_input_size == (128, 128) and sam.prompt_encoder.mask_input_size == (64, 64)
    torch.save(wide.state_dict(), tmp_path / "wide.pth")
    torch.save(sam.state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(InstsegError, match="vit_tiny_512, not vit_tiny"):
        S.build_sam("vit_tiny", tmp_path / "wide.pth")
    with pytest.raises(InstsegError, match="vit_tiny, not vit_tiny_512"):
        S.build_sam("vit_tiny_512", tmp_path / "tiny.pth")
    assert S.build_sam("vit_tiny_512", tmp_path / "wide.pth", device="cpu").mscseg_info["untrained"] is False


def test_wrong_variant_and_missing_checkpoints(sam, tmp_path, monkeypatch):
    torch.save(sam.state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(InstsegError, match="vit_tiny, not vit_b"):
        S.build_sam("vit_b", tmp_path / "tiny.pth")
    torch.save({"foo": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(InstsegError, match="does not fit"):
        S.build_sam("vit_b", tmp_path / "other.pth")
    loaded = S.build_sam("vit_tiny", tmp_path / "tiny.pth", device="cpu")
    assert loaded.mscseg_info["untrained"] is False
    monkeypatch.setenv("MSCSEG_SAM_DIR", str(tmp_path / "sam"))
    with pytest.raises(InstsegError) as caught:
        S.build_sam("vit_h")
    message = str(caught.value)
    assert "sam_vit_h_4b8939.pth" in message and str(tmp_path / "sam") in message and "--sam-checkpoint none" in message
    with pytest.raises(InstsegError, match="unknown SAM variant"):
        S.build_sam("vit_x")


def _fake_maskrcnn(samples, gt, folder):
    """Mask R-CNN results made from the truth (scores descending), none for the last image."""
    from torch_instseg import coco
    from torch_instseg.maskrcnn import labels_to_instances

    results = []
    for image_id, sample in enumerate(samples[:-1], start=1):
        masks, boxes = labels_to_instances(sample.labels)
        scores = np.linspace(0.9, 0.5, len(masks))
        results.extend(coco.instances_to_results(image_id, masks, scores, boxes))
    path = folder / "maskrcnn.json"
    coco.write_coco(path, results)
    coco.write_coco(folder / "gt.json", gt)
    return path


def test_run_sam_writes_every_mode_and_handles_an_image_without_detections(sam, tmp_path):
    from torch_instseg import coco

    samples = generate(3, 64, "sparse", seed=8)
    dataset = in_memory(samples)
    gt = coco.dataset_to_coco(samples)
    maskrcnn_json = _fake_maskrcnn(samples, gt, tmp_path)
    paths = S.run_sam(dataset, dataset.names, maskrcnn_json, gt, tmp_path, sam=sam, score="maskrcnn")
    assert set(paths) == set(S.PROMPT_MODES)
    detections = coco.load_results(maskrcnn_json, gt)
    for mode, path in paths.items():
        results = coco.load_results(path, gt)
        meta = json.loads(coco.results_meta_path(path).read_text())
        assert meta["score_source"] == "maskrcnn" and meta["untrained"] is True and meta["variant"] == "vit_tiny"
        assert meta["images_without_detections"] == [samples[-1].name]
        assert all(r["image_id"] != 3 for r in results)
        assert all(r["score_source"] == "maskrcnn" and r["sam_untrained"] for r in results)
        assert sorted(r["score"] for r in results) == sorted(r["maskrcnn_score"] for r in results)
        assert len(results) == len(detections)
    with pytest.raises(DatasetError, match="exists"):
        S.run_sam(dataset, dataset.names, maskrcnn_json, gt, tmp_path, sam=sam, modes=["box"])
    paths = S.run_sam(dataset, dataset.names, maskrcnn_json, gt, tmp_path / "iou", sam=sam, modes=["box"], score="sam_iou")
    results = coco.load_results(paths["box"], gt)
    assert all(r["score"] == pytest.approx(r["sam_iou"]) for r in results)
    evaluate = pytest.importorskip("torch_instseg.evaluate")
    summary = evaluate.evaluate(gt, results, interpolation=11, max_dets=100)
    assert 0.0 <= summary["mAP"] <= 1.0
    only_undetected = coco.dataset_to_coco(samples[-1:])
    assert evaluate.evaluate(only_undetected, [], interpolation=11, max_dets=100)["mAP"] == 0.0


def test_cli_reports_missing_checkpoint_in_one_line(tmp_path, monkeypatch, capsys, synthetic_folder):
    monkeypatch.setenv("MSCSEG_SAM_DIR", str(tmp_path / "sam"))
    from data import read_dataset
    from data.split import make_split, write_split
    from torch_instseg import coco

    dataset = read_dataset(synthetic_folder)
    split = make_split(dataset.names, seed=0)
    write_split(tmp_path / "split.json", split)
    samples = list(dataset.subset(split["val"]))
    maskrcnn_json = _fake_maskrcnn(samples, coco.dataset_to_coco(samples), tmp_path)
    code = S.main(["--data", str(synthetic_folder), "--split", str(tmp_path / "split.json"), "--maskrcnn", str(maskrcnn_json), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "sam_vit_h_4b8939.pth" in err[0]
    assert not (tmp_path / "sam_box.json").exists()


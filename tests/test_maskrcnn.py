"""Mask R-CNN: instances from labels, aligned augmentation, a training step, inference, a tiny run with resume."""
from __future__ import annotations

import json

import numpy as np
import pytest

from data.dataset import in_memory
from data.errors import DatasetError
from data.lifecycle import RunFolderError
from data.sample import Sample
from data.synthetic import generate
from torch_instseg import maskrcnn as M
from torch_instseg import weights as W
from torch_instseg.errors import InstsegError

torch = pytest.importorskip("torch")

# cheap proposal/RoI counts so that a step on 64-128 px takes about a second on one CPU core
SMALL = {
    "box_batch_size_per_image": 32, "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 50,
}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_masks_to_boxes_known_answer():
    masks = np.zeros((3, 6, 8), bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 5, 7] = True
    boxes = M.masks_to_boxes(masks)
    np.testing.assert_array_equal(boxes, [[2, 1, 5, 3], [7, 5, 8, 6], [0, 0, 0, 0]])
    assert boxes.dtype == np.float32


def test_labels_to_instances_one_mask_per_id():
    labels = np.zeros((5, 5), np.int32)
    labels[0:2, 0:2] = 7
    labels[3:5, 1:4] = 3
    masks, boxes = M.labels_to_instances(labels)
    assert masks.shape == (2, 5, 5)
    assert masks[0].sum() == 6 and masks[1].sum() == 4  # ids in increasing order: 3, then 7
    np.testing.assert_array_equal(boxes, [[1, 3, 4, 5], [0, 0, 2, 2]])
    empty_masks, empty_boxes = M.labels_to_instances(np.zeros((4, 6), np.int32))
    assert empty_masks.shape == (0, 4, 6) and empty_boxes.shape == (0, 4)


def test_known_flips_and_rotation():
    array = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(M.apply_augmentation(array, [("hflip", 1)]), [[2, 1, 0], [5, 4, 3]])
    np.testing.assert_array_equal(M.apply_augmentation(array, [("vflip", 1)]), [[3, 4, 5], [0, 1, 2]])
    turned = M.apply_augmentation(array, [("rot90", 1)])
    np.testing.assert_array_equal(turned, [[2, 5], [1, 4], [0, 3]])
    image = np.zeros((2, 3, 3), np.float32)
    image[0, 2] = 1.0
    masks = np.zeros((1, 2, 3), bool)
    masks[0, 0, 2] = True
    rotated_image = M.apply_augmentation(image, [("rot90", 1)], (0, 1))
    rotated_masks = M.apply_augmentation(masks, [("rot90", 1)], (1, 2))
    assert rotated_image.shape == (3, 2, 3) and rotated_masks.shape == (1, 3, 2)
    assert rotated_image[0, 0, 0] == 1.0 and rotated_masks[0, 0, 0]
    np.testing.assert_array_equal(M.masks_to_boxes(rotated_masks), [[0, 0, 1, 1]])


def test_augmentation_keeps_image_masks_and_boxes_aligned():
    height, width = 12, 20
    masks = np.zeros((2, height, width), bool)
    masks[0, 1:4, 2:9] = True
    masks[1, 7:11, 14:19] = True
    image = np.zeros((height, width, 3), np.float32)
    image[..., 0] = masks[0]
    image[..., 1] = masks[1]
    seen_shapes = set()
    ops_seen = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        ops = M.random_augmentation(np.random.default_rng(seed))
        ops_seen.update(op for op, _ in ops)
        new_image, new_masks, new_boxes = M.augment(image, masks, rng)
        seen_shapes.add(new_image.shape[:2])
        assert new_masks.shape[1:] == new_image.shape[:2]
        np.testing.assert_array_equal(new_image[..., 0] > 0, new_masks[0])
        np.testing.assert_array_equal(new_image[..., 1] > 0, new_masks[1])
        np.testing.assert_array_equal(new_boxes, M.masks_to_boxes(new_masks))
        assert new_masks[0].sum() == masks[0].sum()
    assert seen_shapes == {(12, 20), (20, 12)}
    assert ops_seen == {"hflip", "vflip", "rot90"}


def test_training_set_targets_follow_the_augmented_image():
    samples = generate(2, 48, "sparse", seed=3)
    dataset = M.InstanceTrainingSet([s.image for s in samples], [s.labels for s in samples], {"hflip": 1.0, "vflip": 0.0, "rot90": 0.0})
    image, target = dataset[0]
    masks, _ = M.labels_to_instances(np.flip(samples[0].labels, axis=1))
    np.testing.assert_array_equal(target["masks"].numpy().astype(bool), masks)
    np.testing.assert_allclose(image.numpy(), np.flip(samples[0].image, axis=1).transpose(2, 0, 1))
    assert target["boxes"].shape == (samples[0].n_cells, 4) and bool((target["labels"] == 1).all())


@pytest.mark.slow
def test_training_step_and_inference_with_random_weights():
    torch.manual_seed(0)
    model = M.build_maskrcnn(None, min_size=128, max_size=128, detections_per_image=300, **SMALL)
    assert model.roi_heads.box_predictor.cls_score.out_features == 2
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 2
    assert model.roi_heads.detections_per_img == 300
    samples = generate(1, 128, "sparse", seed=1)
    empty = Sample(np.full((128, 128, 3), 0.5, np.float32), np.zeros((128, 128), np.int32), "empty")
    batch = M.collate([M.InstanceTrainingSet([s.image], [s.labels])[0] for s in (samples[0], empty)])
    model.train()
    losses = model(list(batch[0]), list(batch[1]))
    assert set(losses) == set(M.LOSS_COMPONENTS)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.roi_heads.box_predictor.cls_score.weight.grad is not None
    predictions = M.predict_instances(model, [samples[0].image, empty.image[:96]], score_threshold=0.0)
    for prediction, size in zip(predictions, [(128, 128), (96, 128)]):
        count = len(prediction["scores"])
        assert prediction["masks"].shape == (count,) + size and prediction["masks"].dtype == bool
        assert prediction["mask_probs"].dtype == np.float32 and prediction["boxes"].shape == (count, 4)
        assert np.all(np.diff(prediction["scores"]) <= 0)
        if count:
            assert 0.0 <= prediction["mask_probs"].min() and prediction["mask_probs"].max() <= 1.0
            np.testing.assert_array_equal(prediction["masks"], prediction["mask_probs"] > 0.5)
    resized = M.predict_instances(model, [samples[0].image[:100, :120]], score_threshold=0.0, image_size=64)[0]
    assert resized["masks"].shape[1:] == (100, 120)


def _tiny_dataset():
    sizes = [(64, 64), (80, 96), (96, 64), (64, 80)]
    samples = []
    for k, (height, width) in enumerate(sizes):
        base = generate(1, max(height, width), "sparse", seed=10 + k)[0]
        labels = base.labels[:height, :width]
        samples.append(Sample(base.image[:height, :width].copy(), labels.copy(), f"img{k}"))
    return in_memory(samples), {"train": ["img0", "img1", "img2"], "val": ["img3"], "seed": 0}


@pytest.mark.slow
def test_train_tiny_run_resume_and_overwrite(tmp_path):
    dataset, split = _tiny_dataset()
    out = tmp_path / "run"
    options = dict(image_size=None, min_size=64, max_size=128, weights="none", batch_size=2, quiet=True, model_options=SMALL,
                   device="cpu", split_path="split.json")
    record = M.train_maskrcnn(dataset, split, out, epochs=2, **options)
    assert record["status"] == "finished" and record["epochs_done"] == 2
    for name in ("run.json", "history.csv", "best.pt", "last.pt"):
        assert (out / name).is_file()
    import pandas as pd

    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    for column in ("epoch", "train_loss", "val_loss", "lr", "time_s", "train_loss_mask", "val_loss_classifier"):
        assert column in history.columns
    assert np.isfinite(history["val_loss"]).all()
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["lr"] == 3e-3 and run["settings"]["weight_decay"] == 5e-4
    assert run["settings"]["augmentation"] == {"hflip": 0.5, "vflip": 0.3, "rot90": 0.3}
    assert run["split"]["train"] == split["train"] and run["split"]["path"] == "split.json"
    assert run["best_epoch"] == int(history["val_loss"].idxmin()) + 1
    assert "torch" in run["versions"] and run["wall_time_s"] > 0

    with pytest.raises(RunFolderError, match="holds a finished maskrcnn_resnet50_fpn_v2 run"):
        M.train_maskrcnn(dataset, split, out, epochs=2, **options)
    with pytest.raises(RunFolderError, match="lr"):
        M.train_maskrcnn(dataset, split, out, epochs=3, resume=True, **{**options, "lr": 1e-4})

    record = M.train_maskrcnn(dataset, split, out, epochs=3, resume=True, **options)
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3] and record["epochs_done"] == 3
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 3

    saved = torch.load(out / "best.pt", weights_only=False)
    assert saved["epoch"] == json.loads((out / "run.json").read_text())["best_epoch"]
    model = M.build_maskrcnn(out / "best.pt", min_size=64, max_size=128, **SMALL)
    name = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(model.state_dict()[name], saved["model"][name])
    with pytest.raises(InstsegError, match="best"):
        M.load_model(out, "worst")

    from torch_instseg import coco

    gt = coco.dataset_to_coco([dataset.get("img3")])
    written = M.predict_to_coco(out, dataset, ["img3"], gt, tmp_path / "pred" / "maskrcnn.json", score_threshold=0.0)
    results = coco.load_results(written, gt)
    assert all(r["image_id"] == 1 and "bbox" in r for r in results)
    sidecar = np.load(M.probs_sidecar_path(written))
    assert sidecar["probs_1"].shape[0] == len(results) and max(sidecar["probs_1"].shape[1:], default=256) <= 256

    record = M.train_maskrcnn(dataset, split, out, epochs=1, overwrite=True, **options)
    assert list(pd.read_csv(out / "history.csv")["epoch"]) == [1] and record["epochs_done"] == 1


def test_offline_coco_weights_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, destination):
        raise OSError("network is unreachable")

    monkeypatch.setattr(W, "_download", offline)
    with pytest.raises(InstsegError) as caught:
        M.build_maskrcnn("coco")
    message = str(caught.value)
    assert W.COCO_WEIGHTS_FILE in message and str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "--weights none" in message and "\n" not in message


def test_cli_offline_weights_and_bad_split(tmp_path, monkeypatch, capsys, synthetic_folder):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(W, "_download", lambda url, destination: (_ for _ in ()).throw(OSError("offline")))
    code = M.main(["--data", str(synthetic_folder), "--split", str(tmp_path / "split.json"), "--out", str(tmp_path / "run"),
                   "--epochs", "1", "--image-size", "64", "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and W.COCO_WEIGHTS_FILE in err[0]
    assert not (tmp_path / "run" / "run.json").exists()
    (tmp_path / "bad.json").write_text('{"train": ["nope"], "val": []}')
    code = M.main(["--data", str(synthetic_folder), "--split", str(tmp_path / "bad.json"), "--out", str(tmp_path / "run2"),
                   "--weights", "none", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nope" in err[0]


def test_bad_weights_path_is_an_instseg_error(tmp_path):
    with pytest.raises(InstsegError, match="not found"):
        M.build_maskrcnn(tmp_path / "missing.pth")
    torch.save({"something": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(InstsegError, match="not a Mask R-CNN state dict"):
        M.build_maskrcnn(tmp_path / "other.pth")


def test_anchor_sizes_option_sets_one_size_per_fpn_level():
    model = M.build_maskrcnn("none", min_size=64, max_size=64, anchor_sizes=[16, 32, 64, 128, 256])
    generator = model.rpn.anchor_generator
    assert [tuple(sizes) for sizes in generator.sizes] == [(16.0,), (32.0,), (64.0,), (128.0,), (256.0,)]
    assert generator.num_anchors_per_location() == [3] * 5
    with pytest.raises(InstsegError, match="anchor_sizes: must be 5 positive sizes"):
        M.build_maskrcnn("none", anchor_sizes=[16, 32])
    with pytest.raises(InstsegError, match="anchor_sizes: must be 5 positive sizes"):
        M.build_maskrcnn("none", anchor_sizes=["big"] * 5)


def test_head_channels_narrow_the_box_and_mask_heads(tmp_path):
    model = M.build_maskrcnn("none", min_size=64, max_size=64, head_channels=16)
    box_convs = [m for m in model.roi_heads.box_head.modules() if isinstance(m, torch.nn.Conv2d)]
    mask_convs = [m for m in model.roi_heads.mask_head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in box_convs] == [16] * 4 and box_convs[0].in_channels == 256
    assert [c.out_channels for c in mask_convs] == [16] * 4
    assert model.roi_heads.box_predictor.cls_score.out_features == 2
    assert model.roi_heads.mask_predictor.conv5_mask.in_channels == 16
    torch.save(model.state_dict(), tmp_path / "narrow.pth")
    again = M.build_maskrcnn(tmp_path / "narrow.pth", min_size=64, max_size=64, head_channels=16)
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    with pytest.raises(InstsegError, match="do not fit"):
        M.build_maskrcnn(tmp_path / "narrow.pth", min_size=64, max_size=64)
    default = M.build_maskrcnn("none", min_size=64, max_size=64, head_channels=256)
    assert default.roi_heads.mask_predictor.conv5_mask.in_channels == 256


def test_head_channels_refused_with_coco_weights_and_bad_values():
    with pytest.raises(InstsegError, match="COCO heads have 256 channels"):
        M.build_maskrcnn("coco", head_channels=64, download=False)
    for bad in (0, -3, 2.5, "wide", True):
        with pytest.raises(InstsegError, match="head_channels: must be a positive whole number"):
            M.build_maskrcnn("none", head_channels=bad)


def test_warmup_then_cosine_known_answer():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.5)
    step = M.make_warmup(optimizer, total=2, start_iteration=0, decay_until=6, base_lr=1.0)
    seen = []
    for _ in range(7):
        step()
        seen.append(optimizer.param_groups[0]["lr"])
    np.testing.assert_allclose(seen, [0.001, 0.5005, 1.0, 0.5 * (1 + np.cos(np.pi / 4)), 0.5, 0.5 * (1 + np.cos(3 * np.pi / 4)), 0.0],
                               atol=1e-12)
    resumed = M.make_warmup(optimizer, total=2, start_iteration=4, decay_until=6, base_lr=1.0)
    resumed()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)


def test_plateau_schedule_leaves_the_lr_after_warmup():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.2)
    step = M.make_warmup(optimizer, total=1, start_iteration=0)
    step()
    step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2)
    optimizer.param_groups[0]["lr"] = 0.02
    step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02)


def test_unknown_lr_schedule_is_refused():
    with pytest.raises(InstsegError, match="lr_schedule: must be one of plateau, cosine"):
        M.MaskRCNNSettings(lr_schedule="step").checked()
    assert M.MaskRCNNSettings(lr_schedule="cosine").checked().to_record()["scheduler"].startswith("cosine")


@pytest.mark.parametrize("extra, expected", [
    (["--weights", "none", "--head-channels", "0"], "model_options.head_channels: must be a positive whole number"),
    (["--weights", "coco", "--head-channels", "64"], "the COCO heads have 256 channels"),
])
def test_cli_refuses_bad_heads_before_writing_anything(tmp_path, capsys, extra, expected):
    from data.synthetic import write_dataset

    write_dataset(tmp_path / "ds", n_images=4, size=64)
    code = M.main(["--data", str(tmp_path / "ds"), "--split", str(tmp_path / "split.json"), "--out", str(tmp_path / "run"),
                   "--epochs", "1", *extra])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: ") and expected in lines[-1]
    assert not (tmp_path / "split.json").exists() and not (tmp_path / "run").exists()

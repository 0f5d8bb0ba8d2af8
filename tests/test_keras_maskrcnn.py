"""Mask R-CNN (keras_semseg.models.maskrcnn): known answers for the box arithmetic, anchors,
ROIAlign and targets on tiny arrays, then build / forward / train step / weights on 64x64."""
from __future__ import annotations

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from keras_semseg.errors import SemsegError  # noqa: E402
from keras_semseg.models.maskrcnn import boxes as box_ops  # noqa: E402
from keras_semseg.models.maskrcnn.anchors import default_anchor_sizes, level_anchors, pyramid_anchors  # noqa: E402
from keras_semseg.models.maskrcnn.metrics import dice, instance_recall  # noqa: E402
from keras_semseg.models.maskrcnn.roi_align import assign_levels, paste_masks, paste_max, roi_align  # noqa: E402
from keras_semseg.models.maskrcnn.targets import (instance_boxes, mask_targets, roi_targets,  # noqa: E402
                                                  rpn_targets, sample_balanced)

TINY = dict(fpn_channels=16, box_head_dim=32, mask_head_channels=8, detections_per_image=8,
            rpn_post_nms_train=64, rpn_post_nms_test=32, rois_per_image=32)


# Anchors ---------------------------------------------------------------------------------

def test_default_anchor_sizes_scale_with_image_and_respect_stride():
    assert default_anchor_sizes(1024, 1024) == (32.0, 64.0, 128.0, 256.0, 512.0)
    assert default_anchor_sizes(128, 128) == (8.0, 16.0, 32.0, 64.0, 128.0)
    assert default_anchor_sizes(512, 256) == (16.0, 32.0, 64.0, 128.0, 256.0)


def test_level_anchors_known_values():
    anchors = level_anchors(1, 2, stride=4, size=8.0, ratios=(0.5, 1.0, 2.0)).numpy()
    h_half, w_half = 4 * math.sqrt(0.5), 4 / math.sqrt(0.5)
    expected = np.array([
        [2 - h_half, 2 - w_half, 2 + h_half, 2 + w_half],   # cell (0, 0), ratio 0.5 (wide)
        [-2, -2, 6, 6],                                     # cell (0, 0), ratio 1
        [2 - w_half, 2 - h_half, 2 + w_half, 2 + h_half],   # cell (0, 0), ratio 2 (tall)
        [2 - h_half, 6 - w_half, 2 + h_half, 6 + w_half],   # cell (0, 1), ratio 0.5
    ])
    assert anchors.shape == (6, 4)
    np.testing.assert_allclose(anchors[:4], expected, atol=1e-5)
    heights, widths = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    np.testing.assert_allclose(heights * widths, 64.0, rtol=1e-5)
    np.testing.assert_allclose(heights / widths, [0.5, 1.0, 2.0] * 2, rtol=1e-5)


def test_pyramid_anchor_count_matches_feature_maps():
    shapes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert pyramid_anchors(shapes, default_anchor_sizes(64, 64)).shape == (3 * (256 + 64 + 16 + 4 + 1), 4)


# Boxes -----------------------------------------------------------------------------------

def test_encode_known_values_and_round_trip():
    reference = np.array([[0.0, 0.0, 10.0, 10.0]], np.float32)
    box = np.array([[2.0, 0.0, 12.0, 20.0]], np.float32)
    deltas = box_ops.encode(box, reference).numpy()
    np.testing.assert_allclose(deltas, [[0.2, 0.5, 0.0, math.log(2.0)]], atol=1e-6)
    np.testing.assert_allclose(box_ops.encode(box, reference, (10, 10, 5, 5)).numpy(), [[2.0, 5.0, 0.0, 5 * math.log(2.0)]], atol=1e-5)
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 50, (20, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(1, 40, (20, 2))], 1).astype(np.float32)
    references = np.concatenate([corners + 3, corners + 3 + rng.uniform(1, 40, (20, 2))], 1).astype(np.float32)
    for weights in ((1, 1, 1, 1), (10, 10, 5, 5)):
        decoded = box_ops.decode(box_ops.encode(boxes, references, weights), references, weights).numpy()
        np.testing.assert_allclose(decoded, boxes, atol=1e-3)


def test_iou_known_values():
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1]], np.float32)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6], [0, 0, 0, 0]], np.float32)
    expected = np.array([[1 / 7, 1.0, 0.0, 0.0], [0.0, 0.25, 0.0, 0.0]])
    np.testing.assert_allclose(box_ops.iou(a, b).numpy(), expected, atol=1e-6)
    batched = box_ops.iou(np.stack([a, a]), np.stack([b, b])).numpy()
    assert batched.shape == (2, 2, 4)
    np.testing.assert_allclose(batched[1], expected, atol=1e-6)


# ROIAlign and pasting --------------------------------------------------------------------

def _ramp(height=4, width=4):
    """Feature map 1 x h x w x 1 with value 4 * row + col (bilinear sampling of it is exact)."""
    rows, cols = np.mgrid[0:height, 0:width]
    return (4.0 * rows + cols).astype(np.float32)[None, :, :, None]


def test_roi_align_hand_computed():
    features = _ramp()
    index = np.zeros(1, np.int32)
    # box [0, 0, 4, 4] at stride 1, 2x2 bins: bin centres at feature coords 0.5 and 2.5
    out = roi_align(features, np.array([[0, 0, 4, 4]], np.float32), index, 1, (2, 2), 1).numpy()
    np.testing.assert_allclose(out[0, ..., 0], [[2.5, 4.5], [10.5, 12.5]], atol=1e-5)
    out = roi_align(features, np.array([[0, 0, 4, 4]], np.float32), index, 1, (2, 2), 2).numpy()
    np.testing.assert_allclose(out[0, ..., 0], [[2.5, 4.5], [10.5, 12.5]], atol=1e-5)
    # stride 2: pixel box [2, 2, 6, 6] is feature box [0.5, 2.5], one bin centred at 1.5
    out = roi_align(features, np.array([[2, 2, 6, 6]], np.float32), index, 2, (1, 1), 1).numpy()
    np.testing.assert_allclose(out[0, 0, 0, 0], 4 * 1.5 + 1.5, atol=1e-5)
    # samples at -0.25 (within one cell of the edge -> edge value) and 0.25, per axis
    out = roi_align(features, np.array([[0, 0, 1, 1]], np.float32), index, 1, (1, 1), 2).numpy()
    np.testing.assert_allclose(out[0, 0, 0, 0], 4 * 0.125 + 0.125, atol=1e-5)
    # a box far outside the map reads zeros
    out = roi_align(features, np.array([[-20, -20, -10, -10]], np.float32), index, 1, (2, 2), 2).numpy()
    np.testing.assert_allclose(out, 0.0)


def test_roi_align_matches_torchvision():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    rng = np.random.default_rng(1)
    features = rng.normal(size=(2, 9, 11, 3)).astype(np.float32)
    boxes = np.array([[0, 0, 20, 30], [5.3, 7.1, 33.2, 40.9], [-3, -2, 10, 50], [30, 2, 36, 44]], np.float32)
    index = np.array([0, 1, 1, 0], np.int32)
    ours = roi_align(features, boxes, index, 4, (7, 5), 2).numpy()
    rois = torch.from_numpy(np.concatenate([index[:, None], boxes[:, [1, 0, 3, 2]]], 1).astype(np.float32))
    reference = torchvision.ops.roi_align(torch.from_numpy(features).permute(0, 3, 1, 2), rois, (7, 5), 0.25, 2, aligned=True)
    np.testing.assert_allclose(ours, reference.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_fpn_level_assignment():
    sides = np.array([224, 112, 56, 20, 448, 2000], np.float32)
    boxes = np.stack([np.zeros(6), np.zeros(6), sides, sides], 1).astype(np.float32)
    np.testing.assert_array_equal(assign_levels(boxes, 224.0).numpy(), [4, 3, 2, 2, 5, 5])


def test_paste_masks_hand_computed():
    ones = np.ones((1, 2, 2), np.float32)
    pasted = paste_masks(ones, np.array([[1, 1, 3, 3]], np.float32), 4, 4).numpy()[0]
    expected = np.zeros((4, 4))
    expected[1:3, 1:3] = 1
    np.testing.assert_allclose(pasted, expected)
    ramp = np.array([[[0, 1], [2, 3]]], np.float32)
    pasted = paste_masks(ramp, np.array([[0, 0, 4, 4]], np.float32), 4, 4).numpy()[0]
    weights = np.array([0.0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(pasted, 2 * weights[:, None] + weights[None, :], atol=1e-6)
    both = paste_max(np.stack([ones[0], 0.5 * ones[0]])[None], np.array([[[0, 0, 2, 2], [1, 1, 4, 4]]], np.float32),
                     np.array([[True, True]]), 4, 4).numpy()[0]
    assert both[0, 0] == 1.0 and both[1, 1] == 1.0 and both[3, 3] == 0.5 and both[0, 3] == 0.0


# Targets ---------------------------------------------------------------------------------

def _labels():
    labels = np.zeros((1, 8, 10), np.int32)
    labels[0, 1:3, 2:6] = 7
    labels[0, 5:8, 0:2] = 3
    return labels


def test_instance_boxes_renumber_and_boxes():
    renumbered, boxes, valid = (t.numpy() for t in instance_boxes(_labels(), max_instances=4))
    assert valid.tolist() == [[True, True, False, False]]
    np.testing.assert_array_equal(boxes[0, :2], [[5, 0, 8, 2], [1, 2, 3, 6]])
    assert set(np.unique(renumbered)) == {0, 1, 2}
    assert (renumbered[0][_labels()[0] == 3] == 1).all() and (renumbered[0][_labels()[0] == 7] == 2).all()
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_instances=1"):
        instance_boxes(_labels(), max_instances=1)


def test_sample_balanced_limits():
    positive = np.zeros((2, 50), bool)
    positive[0, :30] = True
    positive[1, :3] = True
    keep_positive, keep_negative = (t.numpy() for t in sample_balanced(positive, ~positive, 16, 0.25))
    assert keep_positive.sum(axis=1).tolist() == [4, 3]
    assert keep_negative.sum(axis=1).tolist() == [12, 13]
    assert not (keep_positive & ~positive).any() and not (keep_negative & positive).any()


def test_rpn_targets_positive_anchors_cover_instances():
    anchors = pyramid_anchors([(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)], default_anchor_sizes(64, 64))
    gt = np.array([[[10, 10, 26, 26], [40, 5, 48, 13], [0, 0, 0, 0]]], np.float32)
    valid = np.array([[True, True, False]])
    positive, negative, deltas = rpn_targets(anchors, gt, valid, 256, 0.5)
    positive, negative = positive.numpy()[0], negative.numpy()[0]
    assert 2 <= positive.sum() <= 128 and positive.sum() + negative.sum() == 256
    overlaps = box_ops.iou(anchors, gt[0, :2]).numpy()
    assert positive[np.argmax(overlaps, axis=0)].all()
    decoded = box_ops.decode(deltas[0], anchors).numpy()[positive]
    assert np.max(box_ops.iou(decoded, gt[0, :2]).numpy(), axis=1).min() > 0.99


def test_roi_targets_foreground_first_and_mask_targets():
    gt = np.array([[[10, 10, 26, 26], [40, 5, 48, 13]]], np.float32)
    proposals = np.array([[[11, 10, 26, 27], [0, 0, 5, 5], [30, 30, 60, 60], [0, 0, 0, 0]]], np.float32)
    targets = roi_targets(proposals, np.array([[True, True, True, False]]), gt, np.array([[True, True]]), 8, 0.5)
    foreground, valid = targets["foreground"].numpy()[0], targets["valid"].numpy()[0]
    assert foreground.tolist() == [True, True, True, False, False, False]  # 6 candidates < 8 rois
    assert valid.tolist() == [True] * 5 + [False]
    labels = np.zeros((1, 64, 64), np.int32)
    labels[0, 10:26, 10:26] = 1
    labels[0, 10:18, 10:18] = 2
    truth = mask_targets(labels, gt[0, :1], np.zeros(1, np.int32), np.ones(1, np.int32), 4).numpy()[0]
    expected = np.ones((4, 4))
    expected[:2, :2] = 0
    np.testing.assert_allclose(truth, expected)


def test_metrics_known_values():
    labels = np.zeros((4, 4), np.int32)
    labels[:2, :2] = 1
    labels[2:, 2:] = 2
    good = (labels == 1).astype(np.float32)
    half = np.zeros((4, 4), np.float32)
    half[2, 3] = 1  # IoU 1/4 with instance 2
    assert instance_recall(labels, np.stack([good, half])) == (1, 2)
    assert instance_recall(labels, np.stack([good, good])) == (1, 2)
    assert dice(good, labels > 0) == pytest.approx(2 * 4 / (4 + 8))
    assert dice(np.zeros((2, 2)), np.zeros((2, 2), bool)) == 1.0


# The model -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model():
    from keras_semseg.models.maskrcnn import build

    tf.keras.utils.set_random_seed(0)
    return build((64, 64, 3), None, **TINY)


def test_build_rejects_bad_settings():
    from keras_semseg.models.maskrcnn import build

    with pytest.raises(SemsegError, match="unknown Mask R-CNN setting.*rois_per_imag"):
        build((64, 64, 3), None, rois_per_imag=10)
    with pytest.raises(SemsegError, match="multiple of 32"):
        build((60, 64, 3), None)
    with pytest.raises(SemsegError, match="anchor_sizes"):
        build((64, 64, 3), None, anchor_sizes=(8, 16))


def test_encoder_weights_file_is_loaded_and_checked(tmp_path):
    from keras_semseg.models.maskrcnn import build

    resnet = tf.keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    path = tmp_path / "resnet50_notop.h5"
    resnet.save_weights(str(path))
    model = build((64, 64, 3), str(path), **TINY)
    kernel = model.backbone.get_layer("conv1_conv").kernel.numpy()
    np.testing.assert_array_equal(kernel, resnet.get_layer("conv1_conv").kernel.numpy())
    assert not model.backbone.get_layer("conv1_bn").trainable  # frozen batch norm when fine-tuning
    with pytest.raises(SemsegError, match="not found"):
        build((64, 64, 3), str(tmp_path / "missing.h5"), **TINY)
    (tmp_path / "junk.h5").write_text("not weights")
    with pytest.raises(SemsegError, match="not a Keras .h5 weights file"):
        build((64, 64, 3), str(tmp_path / "junk.h5"), **TINY)


def test_forward_shape_and_range(tiny_model):
    images = np.random.default_rng(0).uniform(size=(2, 64, 64, 3)).astype(np.float32)
    out = tiny_model.predict(images, batch_size=2, verbose=0)
    assert out.shape == (2, 64, 64, 1)
    np.testing.assert_allclose(tiny_model(images[:1], training=False).numpy(), out[:1], atol=1e-5)
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    odd = tiny_model(images[:1, :50, :45], training=False).numpy()
    assert odd.shape == (1, 50, 45, 1)
    found = tiny_model.detect(images[0])
    assert len(found) == 1 and set(found[0]) == {"boxes", "scores", "masks"}
    k = len(found[0]["scores"])
    assert found[0]["boxes"].shape == (k, 4) and found[0]["masks"].shape == (k, 64, 64)
    assert k <= TINY["detections_per_image"] and (found[0]["scores"] >= 0.05).all()
    assert (np.diff(found[0]["scores"]) <= 0).all()


def test_train_step_returns_finite_losses(tiny_model):
    from data.synthetic import generate

    samples = generate(2, 64, "sparse", seed=3)
    images = np.stack([s.image for s in samples])
    labels = np.stack([s.labels for s in samples])[..., None]
    tiny_model.compile(optimizer=tf.keras.optimizers.Adam())
    before = [w.numpy().copy() for w in tiny_model.box_head.trainable_weights]
    logs = tiny_model.train_step((tf.constant(images), tf.constant(labels)))
    logs = {name: float(value) for name, value in logs.items()}
    assert {"loss", "pixel_accuracy", "rpn_objectness_loss", "rpn_box_loss", "classifier_loss", "box_loss", "mask_loss"} <= set(logs)
    assert all(np.isfinite(value) for value in logs.values())
    parts = sum(logs[name] for name in ("rpn_objectness_loss", "rpn_box_loss", "classifier_loss", "box_loss", "mask_loss"))
    assert logs["loss"] == pytest.approx(parts, rel=1e-4)
    assert logs["mask_loss"] > 0 and 0.0 <= logs["pixel_accuracy"] <= 1.0
    assert any(not np.allclose(a, w.numpy()) for a, w in zip(before, tiny_model.box_head.trainable_weights))
    logs = {name: float(value) for name, value in tiny_model.test_step((tf.constant(images), tf.constant(labels))).items()}
    assert np.isfinite(logs["loss"]) and 0.0 <= logs["pixel_accuracy"] <= 1.0


def test_weights_round_trip_h5(tiny_model, tmp_path):
    from keras_semseg.models.maskrcnn import build, count_parameters

    path = tmp_path / "maskrcnn.h5"
    tiny_model.save_weights(str(path))
    other = build((64, 64, 3), None, **TINY)
    other.load_weights(str(path))
    images = np.random.default_rng(2).uniform(size=(1, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(other(images).numpy(), tiny_model(images).numpy(), atol=1e-5)
    counts = count_parameters(other)
    assert counts["total"] == sum(counts[part] for part in ("backbone_fpn", "rpn_head", "box_head", "mask_head"))


def test_plot_instances_writes_png_and_pdf(tmp_path):
    from data.synthetic import generate
    from keras_semseg.models.maskrcnn.plots import plot_instances

    samples = generate(2, 64, "sparse", seed=4)
    detections = []
    for sample in samples:
        ids = [i for i in np.unique(sample.labels) if i > 0]
        masks = np.stack([(sample.labels == i).astype(np.float32) for i in ids])
        rows = [np.nonzero(m.any(axis=1))[0] for m in masks]
        cols = [np.nonzero(m.any(axis=0))[0] for m in masks]
        boxes = np.array([[r[0], c[0], r[-1] + 1, c[-1] + 1] for r, c in zip(rows, cols)], np.float32)
        detections.append({"boxes": boxes, "scores": np.linspace(0.99, 0.5, len(ids)), "masks": masks})
    paths = plot_instances(samples, detections, tmp_path / "figs" / "instances")
    assert [p.name for p in paths] == ["instances.png", "instances.pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)
    with pytest.raises(SemsegError, match="2 samples but 1"):
        plot_instances(samples, detections[:1], tmp_path / "x")

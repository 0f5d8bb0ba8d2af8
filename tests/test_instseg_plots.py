"""The instance figure: drawn from COCO files, PNG and PDF, untrained SAM labelled."""
from __future__ import annotations

import json

import numpy as np
import pytest

from data.synthetic import generate
from torch_instseg import coco
from torch_instseg.errors import InstsegError
from torch_instseg.plots import instance_figure, overlay


def _results(samples, drop_last: bool):
    from torch_instseg.maskrcnn import labels_to_instances

    results = []
    for image_id, sample in enumerate(samples[:-1] if drop_last else samples, start=1):
        masks, boxes = labels_to_instances(sample.labels)
        results.extend(coco.instances_to_results(image_id, masks, np.linspace(0.95, 0.3, len(masks)), boxes))
    return results


def test_overlay_tints_only_the_masks():
    image = np.full((4, 4, 3), 0.5, np.float32)
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = True
    out = overlay(image, [mask])
    assert out.shape == (4, 4, 3)
    np.testing.assert_allclose(out[0, 0], 0.5)
    assert not np.allclose(out[1, 1], 0.5)


def test_instance_figure_writes_png_and_pdf(tmp_path):
    pytest.importorskip("matplotlib")
    samples = generate(4, 64, "sparse", seed=2)
    gt = coco.dataset_to_coco(samples)
    coco.write_results(tmp_path / "maskrcnn.json", _results(samples, drop_last=False))
    coco.write_results(tmp_path / "sam_box.json", _results(samples, drop_last=True), {"untrained": True, "variant": "vit_tiny"})
    coco.write_results(tmp_path / "sam_box_point.json", [], {"untrained": False, "variant": "vit_h"})
    written = instance_figure(
        samples, gt, {"maskrcnn": tmp_path / "maskrcnn.json", "sam_box": tmp_path / "sam_box.json", "sam_box_point": tmp_path / "sam_box_point.json"},
        tmp_path / "figures" / "instances", n_images=3,
    )
    assert [p.name for p in written] == ["instances.png", "instances.pdf"]
    assert all(p.stat().st_size > 1000 for p in written)
    from PIL import Image

    with Image.open(written[0]) as image:
        width, height = image.size
    assert width > height  # 5 columns x 3 rows
    assert not list((tmp_path / "figures").glob("*partial*"))


def test_instance_figure_needs_images_in_the_ground_truth(tmp_path):
    samples = generate(2, 32, "sparse", seed=1)
    gt = coco.dataset_to_coco(samples[:1])
    json_path = tmp_path / "maskrcnn.json"
    coco.write_results(json_path, [])
    with pytest.raises(InstsegError, match="nothing to draw"):
        instance_figure(samples[1:], gt, {"maskrcnn": json_path}, tmp_path / "fig")
    assert json.loads(json_path.read_text()) == []

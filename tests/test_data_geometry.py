"""data.geometry: a whole-image trainer's resize and its cells' areas, and the default minimum area derived from them."""
from __future__ import annotations

import numpy as np
import pytest

from data import Sample, in_memory
from data.geometry import cell_areas, default_min_area, training_geometry


def _sample(name: str, shape: tuple[int, int], boxes: list[tuple[int, int, int, int]]) -> Sample:
    labels = np.zeros(shape, np.int32)
    for value, (y, x, h, w) in enumerate(boxes, start=1):
        labels[y:y + h, x:x + w] = value
    return Sample(np.zeros(shape + (3,), np.float32), labels, name, "")


def test_cell_areas_skip_missing_labels():
    labels = np.array([[0, 1, 1], [4, 4, 4], [0, 0, 4]])
    assert cell_areas(labels).tolist() == [2, 4]


def test_training_geometry_known_answer():
    samples = [_sample("a", (100, 120), [(0, 0, 10, 10), (20, 20, 5, 4)]), _sample("b", (100, 120), [(50, 50, 2, 3)]),
               _sample("odd", (80, 80), [(0, 0, 8, 8)])]
    geometry = training_geometry(in_memory(samples), ["a", "b", "odd"], 64)
    assert (geometry["native_height"], geometry["native_width"]) == (100, 120)
    assert geometry["native_sizes"] == {"120x100": 2, "80x80": 1}
    assert geometry["scale_y"] == 0.64 and geometry["scale_x"] == pytest.approx(64 / 120)
    areas = np.array([100, 20, 6, 64])
    assert geometry["cell_area_px"]["cells"] == 4
    assert geometry["cell_area_px"]["p50"] == pytest.approx(np.percentile(areas, 50))
    assert geometry["cell_area_px"]["p1"] == pytest.approx(6 + 0.03 * 14)


def test_default_min_area_rescales_through_model_pixels():
    geometry = {"scale_y": 0.25, "scale_x": 0.25, "cell_area_px": {"cells": 10, "p1": 200.0}}
    assert default_min_area(geometry, 0.25, 0.25)[0] == 100
    assert default_min_area(geometry, 0.5, 0.5)[0] == 25        # new images shown 2x larger: their cells are 4x smaller
    assert default_min_area({"scale_y": 1, "scale_x": 1, "cell_area_px": {"cells": 0}}, 1, 1)[0] == 0

"""The synthetic MSC-like generator: densities, labels, reproducibility, written datasets."""
from __future__ import annotations

import numpy as np
import pytest

from data import DatasetError, read_dataset
from data.synthetic import DENSITIES, cells_per_image, generate, generate_sample, write_dataset


def test_density_means():
    sparse = [sample.n_cells for sample in generate(30, 64, "sparse", seed=0)]
    dense = [sample.n_cells for sample in generate(12, 96, "dense", seed=0)]
    assert 6.5 <= np.mean(sparse) <= 10.0
    assert 34.0 <= np.mean(dense) <= 46.0
    assert cells_per_image("medium") == DENSITIES["medium"] == 20.0 and cells_per_image("12") == 12.0
    with pytest.raises(DatasetError, match="unknown density 'crowded'"):
        cells_per_image("crowded")


def test_sample_type_and_label_count():
    sample = generate_sample(size=(48, 80), density="sparse", seed=2, n_cells=5, name="x")
    assert sample.image.shape == (48, 80, 3) and sample.image.dtype == np.float32
    assert 0.0 <= sample.image.min() and sample.image.max() <= 1.0
    assert sample.labels.shape == (48, 80) and sample.labels.dtype == np.int32
    ids = np.unique(sample.labels)
    np.testing.assert_array_equal(ids, np.arange(len(ids)))
    assert 4 <= sample.n_cells <= 5 and sample.name == "x"
    cells = sample.mask
    assert sample.image[..., 0][cells].mean() < sample.image[..., 0][~cells].mean() - 0.02
    with pytest.raises(DatasetError, match="at least 16x16"):
        generate_sample(size=8)


def test_reproducible_from_seed_and_seeds_differ():
    first, second = generate(3, 48, "sparse", seed=7), generate(3, 48, "sparse", seed=7)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.labels, b.labels)
    other = generate(3, 48, "sparse", seed=8)
    assert not np.array_equal(first[0].image, other[0].image)
    assert [s.name for s in first] == ["syn_0000", "syn_0001", "syn_0002"]
    assert not np.array_equal(first[0].labels, first[1].labels)


def test_write_dataset_round_trip_and_overwrite(tmp_path):
    write_dataset(tmp_path, n_images=3, size=32, density="sparse", seed=1, bit_depth=16)
    dataset = read_dataset(tmp_path)
    assert dataset.format == "folders" and dataset.names == ["syn_0000", "syn_0001", "syn_0002"]
    for written, made in zip(dataset, generate(3, 32, "sparse", seed=1)):
        np.testing.assert_array_equal(written.labels, made.labels)
    from data.imageio import image_info

    assert image_info(tmp_path / "images" / "syn_0000.png")["bit_depth"] == 16
    with pytest.raises(DatasetError, match="already holds a dataset"):
        write_dataset(tmp_path, n_images=2, size=32)
    write_dataset(tmp_path, n_images=2, size=32, overwrite=True)
    assert read_dataset(tmp_path).names == ["syn_0000", "syn_0001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "masks"]
    with pytest.raises(DatasetError, match="bit depth must be 8 or 16"):
        write_dataset(tmp_path / "other", n_images=1, size=32, bit_depth=12)
    with pytest.raises(DatasetError, match="unknown density"):
        write_dataset(tmp_path / "other", n_images=1, size=32, density="crowded")
    assert not (tmp_path / "other").exists()


def test_synthetic_folder_fixture(synthetic_folder):
    dataset = read_dataset(synthetic_folder)
    assert len(dataset) == 12 and dataset[0].image.shape == (64, 64, 3)

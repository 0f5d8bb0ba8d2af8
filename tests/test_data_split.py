"""Deterministic train/validation split, written once and reused."""
from __future__ import annotations

import json

import pytest

from data import DatasetError, load_or_make_split, make_split, read_split, write_split

NAMES = [f"img_{i:03d}" for i in range(50)]


def test_same_seed_same_split_whatever_the_order():
    first = make_split(NAMES, 0.2, seed=3)
    second = make_split(list(reversed(NAMES)), 0.2, seed=3)
    assert first == second
    assert make_split(NAMES, 0.2, seed=4)["val"] != first["val"]


def test_proportions_and_partition():
    for count, fraction, n_val in [(50, 0.2, 10), (45, 0.2, 9), (320, 0.2, 64), (7, 0.2, 1), (2, 0.2, 1), (10, 0.5, 5)]:
        names = [f"s{i}" for i in range(count)]
        split = make_split(names, fraction, seed=0, source="here")
        assert len(split["val"]) == n_val and len(split["train"]) == count - n_val
        assert sorted(split["train"] + split["val"]) == sorted(names)
        assert split["train"] == sorted(split["train"]) and split["seed"] == 0 and split["source"] == "here"


def test_bad_arguments():
    with pytest.raises(DatasetError, match="between 0 and 1"):
        make_split(NAMES, 1.0)
    with pytest.raises(DatasetError, match="at least 2 images"):
        make_split(["one"])
    with pytest.raises(DatasetError, match="unique"):
        make_split(["a", "a", "b"])


def test_existing_split_is_reused_never_regenerated(tmp_path):
    path = tmp_path / "split.json"
    made = load_or_make_split(path, NAMES, 0.2, seed=1)
    written = path.read_text()
    again = load_or_make_split(path, NAMES + ["img_new"], 0.5, seed=99)
    assert again == made and path.read_text() == written
    with pytest.raises(DatasetError, match="reused, not regenerated"):
        write_split(path, make_split(NAMES, 0.2, seed=2))
    write_split(path, make_split(NAMES, 0.2, seed=2), overwrite=True)
    assert read_split(path)["seed"] == 2
    assert not list(tmp_path.glob("*.partial"))


def test_split_file_naming_missing_images(tmp_path):
    path = tmp_path / "split.json"
    write_split(path, make_split(NAMES, 0.2, seed=0))
    with pytest.raises(DatasetError, match="missing from the dataset") as caught:
        load_or_make_split(path, NAMES[:-5])
    assert str(path) in str(caught.value)


def test_bad_split_files(tmp_path):
    with pytest.raises(DatasetError, match="split file not found"):
        read_split(tmp_path / "none.json")
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_split(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"train": ["x"]}))
    with pytest.raises(DatasetError, match='"train": \\[...\\], "val"'):
        read_split(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(json.dumps({"train": ["x", "y"], "val": ["y"]}))
    with pytest.raises(DatasetError, match="in both train and val: y"):
        read_split(tmp_path / "c.json")

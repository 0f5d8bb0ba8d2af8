"""Deterministic train/validation split, written once and reused by every later step."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import DatasetError


def make_split(names: Sequence[str], val_fraction: float = 0.2, seed: int = 0, source: str = "") -> dict:
    """``{"train": [...], "val": [...], "seed": N, "val_fraction": f, "source": ...}``.

    The same names (in any order) and seed always give the same split. At least one
    image goes to each side when there are two or more images.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"validation fraction must be between 0 and 1, got {val_fraction}")
    ordered = sorted(set(names))
    if len(ordered) != len(names):
        raise DatasetError("image names must be unique to make a split")
    if len(ordered) < 2:
        raise DatasetError(f"need at least 2 images to split, got {len(ordered)}", source or None)
    n_val = int(round(len(ordered) * val_fraction))
    n_val = min(max(n_val, 1), len(ordered) - 1)
    order = np.random.default_rng(seed).permutation(len(ordered))
    val = sorted(ordered[i] for i in order[:n_val])
    train = sorted(ordered[i] for i in order[n_val:])
    return {"train": train, "val": val, "seed": int(seed), "val_fraction": float(val_fraction), "source": str(source)}


def write_split(path: str | Path, split: dict, overwrite: bool = False) -> Path:
    """Write the split JSON; an existing file is kept unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise DatasetError("split file exists; it is reused, not regenerated (delete it or pass --overwrite to make a new one)", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(split, indent=2) + "\n")
    partial.replace(path)
    return path


def read_split(path: str | Path, available: Sequence[str] | None = None) -> dict:
    """Read a split JSON; with ``available``, every name it lists must be among them."""
    path = Path(path)
    try:
        split = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError("split file not found", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"split file is not valid JSON ({error})", path) from None
    if not isinstance(split, dict) or not isinstance(split.get("train"), list) or not isinstance(split.get("val"), list):
        raise DatasetError('split file must hold {"train": [...], "val": [...]}', path)
    overlap = sorted(set(split["train"]) & set(split["val"]))
    if overlap:
        raise DatasetError(f"images in both train and val: {', '.join(overlap[:10])}", path)
    if available is not None:
        known = set(available)
        missing = [name for name in split["train"] + split["val"] if name not in known]
        if missing:
            raise DatasetError(f"split names {len(missing)} image(s) missing from the dataset: {', '.join(missing[:10])}", path)
    return split


def load_or_make_split(
    path: str | Path, names: Sequence[str], val_fraction: float = 0.2, seed: int = 0, source: str = ""
) -> dict:
    """Reuse the split file at ``path`` if it exists (checked against ``names``), else make and write one."""
    path = Path(path)
    if path.exists():
        return read_split(path, names)
    split = make_split(names, val_fraction, seed, source)
    write_split(path, split)
    return split

"""Per-sample folders: ``<root>/<sample>/`` holds one image and its label image.

File names are options (``image_name="raw.tif"``, ``mask_name="instances_ids.png"``).
Without them a sample folder must hold exactly one image file whose name contains
'mask', 'label' or 'instance' (the mask) and exactly one other image file.

The Data Science Bowl 2018 layout is read too: ``<sample>/images/<sample>.png`` and
``<sample>/masks/*.png``, one binary mask per cell, merged into labels in file-name
order (mask k gets label k, later masks on top). A ``mask_name`` that names a folder
is read the same way. Names are the sample folder names.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..dataset import Dataset, Entry
from ..errors import DatasetError
from ..imageio import IMAGE_SUFFIXES, MASK_SUFFIXES, read_array, read_image, read_labels

MASK_WORDS = ("mask", "label", "instance")


def _is_mask_name(path: Path) -> bool:
    return any(word in path.stem.lower() for word in MASK_WORDS)


def _image_files(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    return [
        path for path in sorted(folder.iterdir())
        if path.is_file() and path.suffix.lower() in suffixes and not path.name.startswith(".")
    ]


def _sample_folders(root: Path) -> list[Path]:
    return [path for path in sorted(root.iterdir()) if path.is_dir() and not path.name.startswith((".", "__"))]


def _is_dsb(folder: Path) -> bool:
    return (folder / "images").is_dir() and (folder / "masks").is_dir()


def detect(path: str | Path) -> bool:
    path = Path(path)
    if not path.is_dir() or _is_dsb(path):
        return False
    samples = _sample_folders(path)
    if not samples:
        return False
    first = samples[0]
    if _is_dsb(first):
        return True
    files = _image_files(first)
    return len(files) >= 2 and any(_is_mask_name(p) for p in files)


def merge_instance_masks(paths: list[Path]) -> np.ndarray:
    """H x W int32 labels from one binary mask file per cell (mask k -> label k, later on top)."""
    labels = None
    for label, path in enumerate(paths, start=1):
        array = read_array(path)
        if array.ndim == 3:
            array = array[..., 0] if array.shape[-1] in (1, 3, 4) else array
        if array.ndim != 2:
            raise DatasetError(f"instance mask must be a 2-D image, got shape {array.shape}", path)
        values = set(np.unique(array).tolist())
        if not (values <= {0, 1} or values <= {0, 255} or values <= {False, True}):
            raise DatasetError(f"instance mask is not binary (values {sorted(values)[:6]}...); expected 0/1 or 0/255, one cell per file", path)
        if labels is None:
            labels = np.zeros(array.shape, np.int32)
        elif array.shape != labels.shape:
            raise DatasetError(f"instance mask is {array.shape[1]}x{array.shape[0]} (WxH) but {paths[0].name} is {labels.shape[1]}x{labels.shape[0]}", path)
        labels[array > 0] = label
    if labels is None:
        raise DatasetError("no instance masks to merge")
    return labels


def _dsb_sample(folder: Path) -> tuple[Path, list[Path]]:
    images = _image_files(folder / "images")
    own = [path for path in images if path.stem == folder.name]
    if own:
        images = own
    if len(images) != 1:
        found = ", ".join(p.name for p in images) or "none"
        raise DatasetError(f"expected one image in images/ (found: {found})", folder)
    masks = _image_files(folder / "masks", MASK_SUFFIXES)
    if not masks:
        raise DatasetError("image has no mask: the masks/ folder holds no mask files", images[0])
    return images[0], masks


def _named_sample(folder: Path, image_name: str | None, mask_name: str | None) -> tuple[Path, Path | list[Path]]:
    files = _image_files(folder)
    if mask_name is not None:
        mask: Path | None = folder / mask_name
        if not mask.exists():
            mask = None
    else:
        candidates = [path for path in files if _is_mask_name(path) and path.name != image_name]
        if len(candidates) > 1:
            raise DatasetError(
                f"cannot tell which file is the mask ({', '.join(p.name for p in candidates)}); pass --mask-name", folder
            )
        mask = candidates[0] if candidates else None
    if image_name is not None:
        image: Path | None = folder / image_name
        if not image.is_file():
            image = None
    else:
        others = [path for path in files if path != mask and (mask_name is not None or not _is_mask_name(path))]
        if len(others) > 1:
            raise DatasetError(
                f"cannot tell which file is the image ({', '.join(p.name for p in others)}); pass --image-name (and --mask-name)", folder
            )
        image = others[0] if others else None
    if image is None and mask is None:
        expected = f"{image_name or 'an image'} and {mask_name or 'a mask'}"
        raise DatasetError(f"sample folder holds neither image nor mask (expected {expected})", folder)
    if image is None:
        expected = f" '{image_name}'" if image_name else ""
        raise DatasetError(f"mask has no image{expected} in its sample folder", mask)
    if mask is None:
        expected = f" '{mask_name}'" if mask_name else " (a file named *mask*, *label* or *instance*; or pass --mask-name)"
        raise DatasetError(f"image has no mask{expected} in its sample folder", image)
    if mask.is_dir():
        masks = _image_files(mask, MASK_SUFFIXES)
        if not masks:
            raise DatasetError(f"image has no mask: the folder {mask.name}/ holds no mask files", image)
        return image, masks
    return image, mask


def read(path: str | Path, image_name: str | None = None, mask_name: str | None = None) -> Dataset:
    """One sample per sub-folder of ``path`` (see the module docstring for the layouts)."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError("per-sample dataset must be a folder of sample folders", root)
    folders = _sample_folders(root)
    if not folders:
        raise DatasetError("dataset folder has no sample folders", root)
    entries = []
    for folder in folders:
        if image_name is None and mask_name is None and _is_dsb(folder):
            image, mask = _dsb_sample(folder)
        else:
            image, mask = _named_sample(folder, image_name, mask_name)
        if isinstance(mask, list):
            load_labels = lambda paths=mask: merge_instance_masks(paths)  # noqa: E731
            mask_source = str(mask[0].parent)
        else:
            load_labels = lambda p=mask: read_labels(p)  # noqa: E731
            mask_source = str(mask)
        entries.append(Entry(folder.name, str(image), lambda p=image: read_image(p), load_labels, mask_source))
    return Dataset(entries, str(root), "per_sample")

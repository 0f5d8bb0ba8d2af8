"""Cell Tracking Challenge layout (2D): ``<root>/01/tNNN.tif`` + ``<root>/01_GT/SEG/man_segNNN.tif``.

Every sequence folder with digits for a name (``01``, ``02``, ...) that has a
``<seq>_GT/SEG`` folder is read; only frames with a SEG file are samples (the CTC
annotates a subset of frames). Frame numbers may have 3 or 4 digits; image and SEG are
matched by number. Names are ``<seq>_<image stem>``, e.g. ``01_t000``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from ..dataset import Dataset, Entry
from ..errors import DatasetError
from ..imageio import read_image, read_labels

SEQUENCE = re.compile(r"^\d+$")
FRAME = re.compile(r"^t(\d+)\.tiff?$", re.IGNORECASE)
SEG_FRAME = re.compile(r"^man_seg(\d+)\.tiff?$", re.IGNORECASE)


def _segmentation_folder(root: Path, sequence: str, truth: str) -> Path:
    return root / f"{sequence}_{truth}" / "SEG"


def detect(path: str | Path) -> bool:
    path = Path(path)
    if not path.is_dir():
        return False
    return any(
        child.is_dir() and SEQUENCE.match(child.name) and _segmentation_folder(path, child.name, "GT").is_dir()
        for child in path.iterdir()
    )


def _frames(folder: Path, pattern: re.Pattern) -> dict[int, Path]:
    frames: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        match = pattern.match(path.name)
        if match and path.is_file():
            number = int(match.group(1))
            if number in frames:
                raise DatasetError(f"two files for frame {number} ({frames[number].name} and {path.name})", folder)
            frames[number] = path
    return frames


def read(path: str | Path, sequences: str | Sequence[str] | None = None, truth: str = "GT") -> Dataset:
    """Frames with a manual segmentation from every sequence (or only ``sequences``, e.g. "01,02").

    ``truth``: "GT" (gold truth, default) or "ST" (silver truth) folders.
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError("CTC dataset must be a folder holding 01/ and 01_GT/SEG/", root)
    if isinstance(sequences, str):
        sequences = [name.strip() for name in sequences.split(",") if name.strip()]
    available = sorted(child.name for child in root.iterdir() if child.is_dir() and SEQUENCE.match(child.name))
    if sequences is None:
        chosen = [name for name in available if _segmentation_folder(root, name, truth).is_dir()]
        if not chosen:
            raise DatasetError(f"no CTC sequence with annotations: expected folders like 01/ and 01_{truth}/SEG/", root)
    else:
        chosen = list(sequences)
        for name in chosen:
            if name not in available:
                raise DatasetError(f"sequence folder '{name}/' not found (sequences here: {', '.join(available) or 'none'})", root)
            if not _segmentation_folder(root, name, truth).is_dir():
                raise DatasetError(f"sequence '{name}' has no {name}_{truth}/SEG/ folder", root)
    entries = []
    for sequence in chosen:
        seg_folder = _segmentation_folder(root, sequence, truth)
        images = _frames(root / sequence, FRAME)
        segmentations = _frames(seg_folder, SEG_FRAME)
        if not segmentations:
            raise DatasetError("no 2D segmentation files man_segNNN.tif (3D man_seg_NNN_ZZZ.tif files are not supported)", seg_folder)
        lonely = sorted(set(segmentations) - set(images))
        if lonely:
            first = segmentations[lonely[0]]
            raise DatasetError(f"mask has no image in {root / sequence} ({len(lonely)} SEG frame(s) without an image tNNN.tif: {', '.join(map(str, lonely[:10]))})", first)
        for number in sorted(segmentations):
            image_path, mask_path = images[number], segmentations[number]
            entries.append(
                Entry(
                    name=f"{sequence}_{image_path.stem}",
                    source=str(image_path),
                    load_image=lambda p=image_path: read_image(p),
                    load_labels=lambda p=mask_path: read_labels(p),
                    mask_source=str(mask_path),
                )
            )
    return Dataset(entries, str(root), "ctc")

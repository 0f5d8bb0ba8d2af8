"""The inputs of ``mscseg-predict``: the image files given (files, or folders searched with or without their
subfolders), annotation folders and files left out of a recursive search (CTC ``*_GT``/``*_ST``,
``man_seg*``/``man_track*``, ``masks``, ``labels``, ...) with the note that says so, unique image names (the
parent folder's name put in front of a shared stem), and the COCO image id of each image for ``--coco``.
``mscseg.predict`` re-exports every name here.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Sequence

from .errors import RunError

ANNOTATION_FOLDERS = ("*_GT", "*_ST", "masks", "mask", "labels", "annotations", "ground_truth", "groundtruth", "gt")
ANNOTATION_FILES = ("man_seg*", "man_track*", "mask*", "*_mask", "*_masks", "instances_ids")


def is_annotation(path: Path, root: Path) -> bool:
    """True for a file inside an annotation folder under ``root`` (CTC ``01_GT``/``01_ST``, ``masks``, ...) or named like one
    (CTC ``man_seg*``/``man_track*``, ``mask*``, ``*_mask``, ``instances_ids``); case-insensitive."""
    folders = [part.lower() for part in path.relative_to(root).parts[:-1]]
    stem = path.stem.lower()
    return (any(fnmatch.fnmatch(folder, pattern.lower()) for folder in folders for pattern in ANNOTATION_FOLDERS)
            or any(fnmatch.fnmatch(stem, pattern) for pattern in ANNOTATION_FILES))


def skipped_note(skipped: Sequence[Path]) -> str:
    folders = sorted({str(path.parent) for path in skipped})
    shown = ", ".join(folders[:3]) + (f" and {len(folders) - 3} more" if len(folders) > 3 else "")
    return f"note: skipped {len(skipped)} annotation file(s) (masks, labels, CTC *_GT/*_ST, man_seg/man_track) in {shown}"


def find_images(inputs: Sequence[str | Path], recursive: bool = False, skipped: list[Path] | None = None) -> dict[str, Path]:
    """``{name: path}`` of the image files given (files, or folders of images); names are unique.

    With ``recursive``, files in annotation folders or named like masks (``is_annotation``)
    are left out and appended to ``skipped``; files given by name are always taken.
    """
    from data.imageio import IMAGE_SUFFIXES

    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(p for p in item.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if recursive:
                annotations = [p for p in found if is_annotation(p, item)]
                found = [p for p in found if p not in set(annotations)]
                if skipped is not None:
                    skipped += annotations
            if not found:
                hint = "" if recursive else " (add --recursive to search its subfolders)"
                raise RunError(f"{item}: no image files ({', '.join(IMAGE_SUFFIXES)}){hint}")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise RunError(f"{item}: no such file or folder")
    stems: dict[str, list[Path]] = {}
    for path in paths:
        stems.setdefault(path.stem, []).append(path)
    named: dict[str, Path] = {}
    for stem, group in stems.items():
        for path in group:
            name = stem if len(group) == 1 else f"{path.parent.name}_{stem}"
            if name in named:
                raise RunError(f"{path}: two inputs would both be named '{name}' ({named[name]}); rename one")
            named[name] = path
    return dict(sorted(named.items()))


def coco_image_ids(named: dict[str, Path], gt_path: str | Path | None) -> dict[str, int]:
    """Image id per name: from a COCO ground truth's ``file_name`` (the name, the file stem or its folder's name), else 1..N."""
    if gt_path is None:
        return {name: position for position, name in enumerate(named, 1)}
    from torch_instseg.coco import image_id_by_name, load_coco

    by_name = image_id_by_name(load_coco(gt_path))
    ids = {}
    for name, path in named.items():
        found = [by_name[key] for key in (name, path.stem, path.parent.name) if key in by_name]
        if not found:
            raise RunError(f"{gt_path}: no image with file_name '{name}' (or '{path.stem}', '{path.parent.name}') for {path}")
        ids[name] = found[0]
    return ids

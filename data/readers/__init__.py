"""Dataset readers, one module per format, behind a name -> reader registry.

Every reader is ``read(path, **options) -> data.Dataset`` and raises ``data.DatasetError``
for bad input. ``read_dataset(path, format=None)`` detects the format when none is given.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from ..dataset import Dataset
from ..errors import DatasetError

FORMATS: dict[str, str] = {
    "folders": "folders",        # images/<stem>.* + masks/<stem>.*
    "via": "via",                # VGG Image Annotator JSON (v2 and v3)
    "ctc": "ctc",                # Cell Tracking Challenge (01/tNNN.tif + 01_GT/SEG/man_segNNN.tif)
    "coco": "coco",              # COCO instance JSON (polygons, RLE)
    "per_sample": "per_sample",  # <sample>/ with one image and a label image or a folder of masks
}


def available_formats() -> list[str]:
    return sorted(FORMATS)


def get_reader(name: str):
    if name not in FORMATS:
        raise DatasetError(f"unknown dataset format '{name}'; valid formats: {', '.join(available_formats())}")
    module = importlib.import_module(f"{__name__}.{FORMATS[name]}")
    return module.read


def reader_options(name: str) -> list[str]:
    """The keyword options a format's reader takes (besides the path)."""
    parameters = list(inspect.signature(get_reader(name)).parameters.values())[1:]
    return [parameter.name for parameter in parameters if parameter.kind is not inspect.Parameter.VAR_KEYWORD]


def detect_format(path: str | Path) -> str:
    """Guess the format of a dataset folder or file; ``DatasetError`` when nothing fits."""
    path = Path(path)
    if not path.exists():
        raise DatasetError("dataset path does not exist", path)
    for name in FORMATS:
        module = importlib.import_module(f"{__name__}.{FORMATS[name]}")
        detect = getattr(module, "detect", None)
        if detect is not None and detect(path):
            return name
    if path.is_dir() and not any(path.iterdir()):
        raise DatasetError("dataset folder is empty", path)
    raise DatasetError(
        "cannot tell the dataset format; pass --format with one of: " + ", ".join(available_formats()), path
    )


def read_dataset(path: str | Path, format: str | None = None, **options: Any) -> Dataset:
    """Read any supported dataset into a lazily loaded ``Dataset``.

    Without ``format`` the format is the only one whose reader takes all ``options``
    (e.g. ``image_name`` means per_sample), else it is detected from the files.
    """
    if not Path(path).exists():
        raise DatasetError("dataset path does not exist", path)
    if format is None and options:
        fitting = [name for name in available_formats() if set(options) <= set(reader_options(name))]
        format = fitting[0] if len(fitting) == 1 else None
    format = format or detect_format(path)
    reader = get_reader(format)
    accepted = reader_options(format)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetError(
            f"option(s) {', '.join(unknown)} do not apply to format '{format}'; its options: {', '.join(accepted) or 'none'}",
            path,
        )
    dataset = reader(path, **options)
    if len(dataset) == 0:
        raise DatasetError(f"no samples found (format '{format}')", path)
    return dataset

"""Safe output writing shared by every package: atomic files, no silent overwrites."""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import DatasetError


class OutputExistsError(DatasetError):
    """A finished output is in the way and ``overwrite`` was not asked for."""


def partial_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".partial")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write to ``<name>.partial`` then rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    partial.write_text(text)
    os.replace(partial, path)
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_csv(path: str | Path, frame: Any, float_format: str | None = None) -> Path:
    """A pandas DataFrame as CSV without the index column, atomically."""
    return atomic_write_text(path, frame.to_csv(index=False, float_format=float_format))


def check_can_write(path: str | Path, overwrite: bool = False) -> Path:
    """Raise ``OutputExistsError`` if ``path`` exists (a file, or a non-empty folder) and not ``overwrite``."""
    path = Path(path)
    exists = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if exists and not overwrite:
        raise OutputExistsError("output already exists; pass --overwrite to replace it (nothing was written)", path)
    return path


@contextmanager
def staged_folders(root: str | Path, names: tuple[str, ...] = ("images", "masks")) -> Iterator[dict[str, Path]]:
    """Fill ``<root>/<name>.partial/`` folders; on success each replaces ``<root>/<name>/``.

    On any error the partial folders are removed and the existing ones are left as
    they were, so a reader never sees half a dataset. Other content of ``root`` is kept.
    """
    root = Path(root)
    created = not root.exists()
    staged = {name: root / f"{name}.partial" for name in names}
    for folder in staged.values():
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    try:
        yield staged
    except BaseException:
        for folder in staged.values():
            shutil.rmtree(folder, ignore_errors=True)
        if created and root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        raise
    for name, folder in staged.items():
        final = root / name
        if final.exists():
            old = root / f"{name}.old"
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
            folder.rename(final)
            shutil.rmtree(old)
        else:
            folder.rename(final)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

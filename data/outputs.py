"""Safe output writing shared by every package: atomic files, no silent overwrites."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import DatasetError, MscsegError
from .lock import has_content, remove_empty as _remove_empty


class OutputExistsError(DatasetError):
    """A finished output is in the way and ``overwrite`` was not asked for."""


def partial_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".partial")


def replace_atomically(path: str | Path, write: Callable[[Path], Any], partial: str | Path | None = None) -> Path:
    """Call ``write(partial)`` (default ``<name>.partial``), then rename it to ``path``.

    When the write fails, the partial file is removed and ``path`` is left as it was; an
    ``OSError`` (a full disk, say) is raised again naming ``path``, so the message says
    which output could not be written.
    """
    path = Path(path)
    partial = partial_path(path) if partial is None else Path(partial)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            partial.unlink()
        if isinstance(error, OSError) and not isinstance(error, MscsegError):
            raise named_os_error(error, path) from None
        raise
    return path


def named_os_error(error: OSError, path: str | Path) -> OSError:
    """``error`` with ``path`` as its file name (the output being written), same errno and message."""
    return OSError(error.errno, error.strerror or str(error), str(path))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write to ``<name>.partial`` then rename, so a reader never sees half a file."""
    return replace_atomically(path, lambda partial: partial.write_text(text))


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_csv(path: str | Path, frame: Any, float_format: str | None = None) -> Path:
    """A pandas DataFrame as CSV without the index column, atomically."""
    return atomic_write_text(path, frame.to_csv(index=False, float_format=float_format))


def check_can_write(path: str | Path, overwrite: bool = False) -> Path:
    """Raise ``OutputExistsError`` if ``path`` exists (a file, or a non-empty folder) and not ``overwrite``."""
    path = Path(path)
    exists = path.is_file() or (path.is_dir() and has_content(path))
    if exists and not overwrite:
        raise OutputExistsError("output already exists; pass --overwrite to replace it (nothing was written)", path)
    return path


def check_output_folder(path: str | Path) -> Path:
    """Raise ``DatasetError`` when ``path`` (or its first existing parent) is a file or is not writable."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            if not candidate.is_dir():
                what = "output folder" if candidate == path else "a parent of the output folder"
                raise DatasetError(f"{what} is a file, not a folder (nothing was written)", candidate)
            if not os.access(candidate, os.W_OK | os.X_OK):
                raise DatasetError("output folder is not writable (nothing was written)", candidate)
            break
    return path


@contextmanager
def staged_outputs(out_dir: str | Path) -> Iterator[Path]:
    """Write a set of outputs into a hidden folder inside ``out_dir``, then move them into place together.

    Each file is written into the yielded folder under its final name (sub-folders
    allowed). When the block succeeds, each one replaces ``out_dir/<name>``; when it
    fails, nothing in ``out_dir`` changes and no staging file is left behind (a new
    ``out_dir`` is removed again).
    """
    out_dir = check_output_folder(out_dir)
    created = next((p for p in reversed((out_dir, *out_dir.parents)) if not p.exists()), None)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        yield stage
        files = sorted(p for p in stage.rglob("*") if p.is_file() and not p.name.endswith(".partial"))
        targets = [out_dir / p.relative_to(stage) for p in files]
        for target in targets:
            if target.is_dir():
                raise DatasetError("output is a folder in the way of a file (nothing was written)", target)
        for source, target in zip(files, targets):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
    except BaseException as error:
        shutil.rmtree(stage, ignore_errors=True)
        if created is not None:
            _remove_empty(out_dir, created)
        if isinstance(error, OSError) and not isinstance(error, MscsegError):
            raise named_os_error(error, _final_name(error.filename, stage, out_dir)) from None
        raise
    shutil.rmtree(stage, ignore_errors=True)


def _final_name(filename: Any, stage: Path, out_dir: Path) -> Path:
    """Where a file written into ``stage`` was going (``out_dir`` when the error names no file)."""
    if filename is None:
        return out_dir
    path = Path(os.fsdecode(filename))
    try:
        relative = path.relative_to(stage)
    except ValueError:
        return path
    if relative.name.endswith(".partial"):
        relative = relative.with_name(relative.name[: -len(".partial")])
    return out_dir / relative


@contextmanager
def staged_folders(root: str | Path, names: tuple[str, ...] = ("images", "masks")) -> Iterator[dict[str, Path]]:
    """Fill ``<root>/<name>.partial/`` folders; on success each replaces ``<root>/<name>/``.

    On any error the partial folders are removed and the existing ones are left as
    they were, so a reader never sees half a dataset. Other content of ``root`` is kept.
    """
    root = Path(root)
    created = not root.exists()
    staged = {name: root / f"{name}.partial" for name in names}
    for name, folder in staged.items():
        for stale in (folder, root / f"{name}.old"):
            if stale.exists():
                shutil.rmtree(stale)
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

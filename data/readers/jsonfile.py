"""JSON annotation files shared by the VIA and COCO readers: sniffing, finding, loading."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ..errors import DatasetError


def json_head(path: Path, size: int = 65536) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read(size).decode("utf-8", errors="ignore")
    except OSError:
        return ""


def detect_json(path: Path, looks_like: Callable[[Path], bool]) -> bool:
    """A JSON file that ``looks_like`` accepts, or a folder holding exactly one."""
    if path.is_file():
        return path.suffix.lower() == ".json" and looks_like(path)
    return path.is_dir() and len(_matching_files(path, looks_like)) == 1


def resolve_json(path: str | Path, looks_like: Callable[[Path], bool], kind: str) -> Path:
    """The annotation file itself: ``path``, or the one ``kind`` JSON file in the folder ``path``."""
    json_path = Path(path)
    if json_path.is_dir():
        candidates = _matching_files(json_path, looks_like)
        if len(candidates) != 1:
            found = ", ".join(p.name for p in candidates) or "none"
            raise DatasetError(f"expected exactly one {kind} JSON file in the folder (found: {found}); pass the file itself", json_path)
        json_path = candidates[0]
    return json_path


def _matching_files(folder: Path, looks_like: Callable[[Path], bool]) -> list[Path]:
    return [path for path in sorted(folder.glob("*.json")) if looks_like(path)]


def load_json(path: Path, kind: str) -> Any:
    """Parsed JSON; ``DatasetError`` naming the file when it is not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise DatasetError(f"{kind} file not found", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"not a valid {kind} JSON file ({error})", path) from None


def find_image(file_name: str, json_path: Path, images: str | Path | None, extra: tuple[str, ...] = ()) -> Path:
    """The image a JSON file refers to: in ``images`` (when given), else beside the JSON file."""
    folders = [] if images is None else [Path(images) if Path(images).is_absolute() or Path(images).exists() else json_path.parent / images]
    folders.append(json_path.parent)
    names = [file_name, Path(file_name).name, *extra]
    for folder in folders:
        for name in names:
            if name and (folder / name).is_file():
                return folder / name
    for name in extra:
        if name and Path(name).is_absolute() and Path(name).is_file():
            return Path(name)
    where = " or ".join(str(folder) for folder in folders)
    raise DatasetError(f"image '{file_name}' listed in the annotation file was not found in {where} (pass --images FOLDER)", json_path)

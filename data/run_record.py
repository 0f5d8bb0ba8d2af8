"""One run record for every trainer (Keras models, Mask R-CNN, SAM fine-tuning).

A run folder holds ``run.json`` (this record) and ``history.csv`` (one row per
epoch). The report and the resume checks read only this layout.
"""
from __future__ import annotations

import contextlib
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import MscsegError
from .outputs import write_csv, write_json

RUN_JSON = "run.json"
GEOMETRY_KEYS = ("native_height", "native_width", "scale_y", "scale_x")
HISTORY_CSV = "history.csv"
VERSION_PACKAGES = (
    "mscseg", "numpy", "scipy", "pandas", "scikit-image", "scikit-posthocs", "matplotlib",
    "tensorflow", "tensorflow-cpu", "keras", "tf-keras", "segmentation-models", "torch", "torchvision",
    "segment-anything", "pycocotools", "tifffile", "imagecodecs", "pillow",
)


def library_versions() -> dict[str, str]:
    """Python and installed package versions, from package metadata (no framework is imported)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@dataclass
class RunRecord:
    """What ``run.json`` holds. ``trainer`` is 'keras', 'maskrcnn' or 'sam_finetune'.

    ``status`` is 'running', 'finished', 'stopped: <why>' or 'failed: <why>'; losses
    are the validation loss that picks the best checkpoint; times in seconds.
    """

    trainer: str
    model: str
    settings: dict[str, Any]
    split: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    epochs: int = 0
    epochs_done: int = 0
    best_epoch: int = 0
    best_loss: float | None = None
    started: str = field(default_factory=now)
    updated: str = field(default_factory=now)
    wall_time_s: float = 0.0
    epoch_time_s_mean: float | None = None
    versions: dict[str, str] = field(default_factory=library_versions)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def geometry(self) -> dict[str, Any] | None:
        """How training resized its images and how large its cells were (``data.geometry``).

        None when not recorded, or when the entry lacks the native size or a scale (a hand-edited or foreign record):
        prediction then falls back to scale 1 and says so, instead of failing on a missing key.
        """
        geometry = self.details.get("geometry")
        if not isinstance(geometry, Mapping) or not all(key in geometry for key in GEOMETRY_KEYS):
            return None
        return dict(geometry)

    @classmethod
    def from_dict(cls, content: Mapping[str, Any], path: str | Path | None = None) -> "RunRecord":
        known = {name for name in cls.__dataclass_fields__}
        missing = [name for name in ("trainer", "model", "settings") if name not in content]
        if missing:
            raise MscsegError(f"not a run record (missing {', '.join(missing)})", path)
        return cls(**{key: value for key, value in content.items() if key in known})

    def progress(self, epochs_done: int, best_epoch: int, best_loss: float, wall_time_s: float,
                 epoch_times_s: Iterable[float] = (), status: str | None = None) -> "RunRecord":
        """Update the counters after an epoch (``best_loss`` may be inf: stored as None)."""
        times = [float(t) for t in epoch_times_s]
        self.epochs_done = int(epochs_done)
        self.best_epoch = int(best_epoch)
        self.best_loss = float(best_loss) if math.isfinite(best_loss) else None
        self.wall_time_s = round(float(wall_time_s), 3)
        self.epoch_time_s_mean = round(sum(times) / len(times), 3) if times else None
        if status is not None:
            self.status = status
        self.updated = now()
        return self

    def write(self, run_dir: str | Path, history: list[dict] | None = None) -> Path:
        """Write ``run.json`` (and ``history.csv`` when ``history`` is given), each atomically."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if history is not None:
            import pandas as pd

            write_csv(run_dir / HISTORY_CSV, pd.DataFrame(history))
        return write_json(run_dir / RUN_JSON, self.to_dict())


def read_record(run_dir: str | Path) -> RunRecord:
    """The record in ``run_dir/run.json``; ``MscsegError`` naming the file if it is missing or broken."""
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        raise MscsegError("not a run folder (run.json missing)", path)
    try:
        content = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise MscsegError(f"run.json is not valid JSON ({error})", path) from None
    if not isinstance(content, dict):
        raise MscsegError("run.json does not hold an object", path)
    return RunRecord.from_dict(content, path)


def check_resume(previous: RunRecord, settings: Mapping[str, Any], must_match: Iterable[str],
                 split: Mapping[str, Any], path: str | Path) -> None:
    """Refuse a resume whose settings in ``must_match`` or whose train/val split changed."""
    old = previous.settings
    differ = [f"{key}={old.get(key)!r} (now {settings.get(key)!r})" for key in must_match if old.get(key) != settings.get(key)]
    if differ:
        raise MscsegError(f"cannot resume with other settings: {', '.join(differ)}; pass the same ones, "
                          "or start over with --overwrite", path)
    if any(previous.split.get(part) != split.get(part) for part in ("train", "val")):
        raise MscsegError("the split differs from the one this run was trained on; resume with the same split", path)

"""Every path of a results folder, in one place (ARCHITECTURE.md, "Contracts between steps").

The runner, the steps, the report and predict build result paths only through ``Layout``::

    results/<run>/
      config.json  split.json  report.html
      data/<study>/ (synthetic data)  data/summary_<study>.csv
      semantic/<model>/  run.json, history.csv, best/last weights, probs/<stem>.npy
      semantic/masks/  semantic/sweep/  semantic/stats/
      instance/split.json  instance/maskrcnn/  instance/sam_finetune/  instance/<peer>/ (cellpose, stardist)
      instance/predictions/<method>.json (+ <method>.meta.json; <peer>.absent.json when a peer's package is missing)
      instance/eval/<method>/<N>point/
      instance/instance_table.csv  instance/stats/
      figures/<stem>.png|pdf  logs/<step>.log  .stamps/<step>.json
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data.run_record import HISTORY_CSV, RUN_JSON

STUDIES = ("semantic", "instance")
SWEEP_TABLES = ("per_image", "summary", "optimal", "table1")
FIGURE_FORMATS = ("png", "pdf")
SEMANTIC_FIGURES = ("fig1", "fig2", "fig3", "fig4")
INSTANCE_FIGURE = "instance"


@dataclass(frozen=True)
class Layout:
    """Paths of one results folder ``root``."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of_semantic_run(cls, run_dir: str | Path) -> "Layout":
        """The layout holding the semantic training run ``<root>/semantic/<model>/``."""
        return cls(Path(run_dir).parent.parent)

    # ------------------------------------------------------------ run-wide files
    @property
    def config_json(self) -> Path:
        return self.root / "config.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, step: str) -> Path:
        return self.logs / f"{step}.log"

    @property
    def stamps(self) -> Path:
        return self.root / ".stamps"

    def stamp(self, step: str) -> Path:
        return self.stamps / f"{step}.json"

    # ------------------------------------------------------------ data and split
    @property
    def data(self) -> Path:
        return self.root / "data"

    def synthetic_data(self, study: str) -> Path:
        return self.data / study

    def data_summary(self, study: str) -> Path:
        return self.data / f"summary_{study}.csv"

    def split_json(self, study: str) -> Path:
        return self.root / "split.json" if study == "semantic" else self.instance / "split.json"

    # ------------------------------------------------------------ semantic study
    @property
    def semantic(self) -> Path:
        return self.root / "semantic"

    def semantic_model(self, model: str) -> Path:
        return self.semantic / model

    def probs(self, model: str) -> Path:
        return self.semantic_model(model) / "probs"

    @property
    def semantic_masks(self) -> Path:
        return self.semantic / "masks"

    @property
    def sweep(self) -> Path:
        return self.semantic / "sweep"

    def sweep_table(self, name: str) -> Path:
        """``per_image``, ``summary``, ``optimal`` or ``table1`` CSV of the threshold sweep."""
        if name not in SWEEP_TABLES:
            raise ValueError(f"unknown sweep table '{name}'; tables: {', '.join(SWEEP_TABLES)}")
        return self.sweep / f"{name}.csv"

    @property
    def semantic_stats(self) -> Path:
        return self.semantic / "stats"

    def stats(self, study: str) -> Path:
        """The statistics folder of ``study`` (what ``stats.analyse`` writes)."""
        return self.semantic_stats if study == "semantic" else self.instance_stats

    def stats_table(self, study: str, name: str) -> Path:
        """``tests``, ``summary``, ``values``, ``<test>_<metric>`` ... CSV of a study's statistics."""
        return self.stats(study) / f"{name}.csv"

    def stats_notes(self, study: str) -> Path:
        return self.stats(study) / "notes.txt"

    # ------------------------------------------------------------ instance study
    @property
    def instance(self) -> Path:
        return self.root / "instance"

    @property
    def maskrcnn(self) -> Path:
        return self.instance / "maskrcnn"

    @property
    def sam_finetune(self) -> Path:
        return self.instance / "sam_finetune"

    def peer_run(self, peer: str) -> Path:
        """The training run folder of the peer ``peer`` (``instance/cellpose/``, ``instance/stardist/``)."""
        return self.instance / peer

    @property
    def predictions(self) -> Path:
        return self.instance / "predictions"

    def prediction_absent(self, method: str) -> Path:
        """``<method>.absent.json``: why a method has no results (its package cannot be imported here)."""
        return self.predictions / f"{method}.absent.json"

    def prediction(self, method: str) -> Path:
        """COCO results of ``method`` (``gt`` is the ground truth)."""
        return self.predictions / f"{method}.json"

    def prediction_meta(self, method: str) -> Path:
        return self.predictions / f"{method}.meta.json"

    @property
    def evaluations(self) -> Path:
        return self.instance / "eval"

    def evaluation(self, method: str, interpolation: int) -> Path:
        return self.evaluations / method / f"{interpolation}point"

    def evaluation_per_image(self, method: str, interpolation: int) -> Path:
        return self.evaluation(method, interpolation) / "per_image.csv"

    @property
    def instance_table(self) -> Path:
        return self.instance / "instance_table.csv"

    @property
    def instance_stats(self) -> Path:
        return self.instance / "stats"

    # ------------------------------------------------------------ figures
    @property
    def figures(self) -> Path:
        return self.root / "figures"

    def figure_stem(self, stem: str) -> Path:
        """Where a plotting function writes ``<stem>.png`` and ``<stem>.pdf``."""
        return self.figures / stem

    def figure(self, stem: str, fmt: str = "png") -> Path:
        return self.figures / f"{stem}.{fmt}"

    def figure_files(self, stems: tuple[str, ...]) -> list[Path]:
        return [self.figure(stem, fmt) for stem in stems for fmt in FIGURE_FORMATS]


def run_json(run_dir: str | Path) -> Path:
    """``run.json`` of a training run folder (``semantic/<model>/``, ``instance/maskrcnn/``, ...)."""
    return Path(run_dir) / RUN_JSON


def history_csv(run_dir: str | Path) -> Path:
    return Path(run_dir) / HISTORY_CSV

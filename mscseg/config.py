"""Run settings: a YAML or JSON file -> one validated ``Settings`` object.

A config file is a mapping with ``name`` (the results folder's name; default the
file's stem), ``description`` and the sections ``semantic``, ``instance`` and
``stats`` (every key optional). The training settings of a section are the package's
own settings dataclass (``keras_semseg.settings.TrainRecipe``,
``torch_instseg.settings.MaskRCNNSettings``, ``FinetuneSettings``, and each peer's ``SETTINGS``
class for ``instance.peers.<name>``): their defaults (the papers' values) and checks; a section
adds only what the run needs besides. It may
start from a preset with ``base: paper`` (or ``small``, ``tiny``, or a path to
another config file) and change only some keys; mappings are merged key by key,
except ``dataset`` and ``max_dets``, which are replaced whole; the base's ``name``
is not inherited.

Datasets are given per study, either as a folder or file
(``dataset: {path: ..., format: ..., options: {...}}``; ``format`` is detected
when left out, ``options`` go to the reader) or as synthetic data made by the
project (``dataset: {synthetic: {n_images, size, density, seed}}``). Relative
paths are read from the current directory; ``~`` and ``$VARS`` are expanded.

Every problem is a ``RunError`` with one line naming the file, the key and the
fix (unknown keys list the valid ones); the checks report every bad value at once.
The peers' sections are made in ``mscseg.config_peers`` and a mapping becomes typed settings in
``mscseg.config_build``; both are re-exported here.
"""
from __future__ import annotations

import json
import os
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data.settings import Problem, setting
from keras_semseg.registry import MODELS
from keras_semseg.settings import TrainRecipe
from keras_semseg.sweep import METRICS as SWEEP_METRICS
from stats.posthoc import POSTHOC_TESTS as POSTHOC_REGISTRY
from torch_instseg.names import INTERPOLATIONS, PROMPT_MODES, PROMPT_SOURCES, SCORE_SOURCES, TRAINABLE_PARTS
from torch_instseg.sam import SAM_VARIANTS as SAM_VARIANT_REGISTRY
from torch_instseg.settings import FinetuneSettings, MaskRCNNSettings, normalize_checkpoint, untrained_start

from .config_build import _convert, _error, _label, _suggest, _type_name, build  # noqa: F401  (re-exported)
from .config_peers import (  # noqa: F401  (re-exported: mscseg.config is the public module)
    _PEER_SECTIONS, PEER_ENABLED_HELP, PEER_NAMES, PeersConfig, _peer_field, _PeerModuleMissing, enabled_peers, peer_section,
    peer_settings_class, random_start,
)
from .devices import DEVICES_HELP, devices_ok, devices_problem
from .errors import RunError

PRESET_DIR = Path(__file__).resolve().parent / "configs"
SEMANTIC_MODELS = tuple(MODELS)
SEMANTIC_METRICS = SWEEP_METRICS
SAM_MODES = PROMPT_MODES
SAM_SCORES = SCORE_SOURCES
SAM_VARIANTS = tuple(SAM_VARIANT_REGISTRY)
SAM_TRAINABLE = TRAINABLE_PARTS
SAM_PROMPT_SOURCES = PROMPT_SOURCES
DENSITY_NAMES = ("sparse", "medium", "dense")
POSTHOC_TESTS = tuple(POSTHOC_REGISTRY)
def _per_model(setting: str) -> Any:
    """A config key mapping each model name to a value of the training settings' field ``setting``."""
    return field(default_factory=dict, metadata={"per_model": setting})


class Problems(list):
    """Every problem found in a config, each as ``dotted.key: problem`` (reported together, one line)."""

    def require(self, ok: bool, where: str, key: str, problem: str) -> bool:
        if not ok:
            self.append(_label(where, key, problem))
        return ok

    def add(self, where: str, found: typing.Iterable[Problem]) -> None:
        """The problems a package's ``problems()`` returned, their field names under ``where``."""
        for key, problem in found:
            self.append(_label(where, key, problem))


@dataclass
class SyntheticData:
    """Synthetic micrographs written by ``data.synthetic.write_dataset`` into the results folder."""

    n_images: int = 40
    size: int = 128
    density: str | float = "medium"
    seed: int = 0

    def check(self, where: str, problems: Problems) -> None:
        problems.require(self.n_images >= 2, where, "n_images", f"needs at least 2 images to split, got {self.n_images}")
        problems.require(self.size >= 32, where, "size", f"must be at least 32 pixels, got {self.size}")
        if isinstance(self.density, str):
            try:
                float(self.density)
            except ValueError:
                problems.require(self.density in DENSITY_NAMES, where, "density",
                                 f"'{self.density}' is not one of {', '.join(DENSITY_NAMES)} or a number of cells per image")
        else:
            problems.require(self.density > 0, where, "density", f"must be positive, got {self.density}")


@dataclass
class DatasetConfig:
    """Where a study's images come from: ``path`` (+ ``format``, reader ``options``) or ``synthetic``."""

    path: str | None = None
    format: str | None = None
    options: dict = field(default_factory=dict)
    synthetic: SyntheticData | None = None

    def check(self, where: str, problems: Problems) -> None:
        if not problems.require((self.path is None) != (self.synthetic is None), where, "",
                                "give exactly one of 'path' (a dataset folder or file) or 'synthetic' ({n_images, size, density, seed})"):
            return
        if self.synthetic is not None:
            problems.require(self.format is None and not self.options, where, "format",
                             "'format' and 'options' apply to a dataset 'path', not to synthetic data")
            self.synthetic.check(f"{where}.synthetic", problems)
        else:
            self.path = os.path.expandvars(os.path.expanduser(self.path))

    @property
    def label(self) -> str:
        if self.synthetic is not None:
            s = self.synthetic
            return f"synthetic ({s.n_images} images, {s.size}x{s.size} px, {s.density} density, seed {s.seed})"
        return f"{self.path}" + (f" ({self.format})" if self.format else "")


@dataclass
class SplitConfig:
    """Train/validation split of a study's dataset (``data.split.make_split``)."""

    val_fraction: float = 0.2
    seed: int = 0

    def check(self, where: str, problems: Problems) -> None:
        problems.require(0.0 < self.val_fraction < 1.0, where, "val_fraction", f"must be between 0 and 1, got {self.val_fraction}")


@dataclass
class SemanticConfig(TrainRecipe):
    """Study A: four Keras models, threshold sweep, statistics, Figures 1-4.

    The training recipe (image_size ... eval_weights) is ``keras_semseg.settings.TrainRecipe``:
    its defaults and checks are the trainer's own. ``model_options`` and
    ``steps_per_epoch_by_model`` give a model its own ``model_options`` / ``steps_per_epoch``.
    """

    enabled: bool = True
    dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(synthetic=SyntheticData(density="medium")))
    split: SplitConfig = field(default_factory=SplitConfig)
    models: list[str] = field(default_factory=lambda: list(SEMANTIC_MODELS))
    model_options: dict = _per_model("model_options")
    steps_per_epoch_by_model: dict = _per_model("steps_per_epoch")
    metrics: list[str] = field(default_factory=lambda: list(SEMANTIC_METRICS))
    figure_images: int = 3
    devices: int | str = setting("auto", DEVICES_HELP.format(what="GPUs of each semantic training step (MirroredStrategy)",
                                                              one="one GPU"), stamped_at_default=False)

    def check(self, where: str, problems: Problems) -> None:
        self.dataset.check(f"{where}.dataset", problems)
        self.split.check(f"{where}.split", problems)
        problems.add(where, TrainRecipe.problems(self))
        problems.require(len(self.models) > 0, where, "models", f"list at least one of {', '.join(SEMANTIC_MODELS)}")
        problems.require(devices_ok(self.devices), where, "devices", devices_problem(self.devices))
        for model in self.models:
            problems.require(model in SEMANTIC_MODELS, where, "models", f"unknown model '{model}'{_suggest(model, SEMANTIC_MODELS)}; valid: {', '.join(SEMANTIC_MODELS)}")
        problems.require(len(set(self.models)) == len(self.models), where, "models", "a model is listed twice")
        for name, steps in self.steps_per_epoch_by_model.items():
            problems.require(name in SEMANTIC_MODELS, where, "steps_per_epoch_by_model", f"unknown model '{name}'; valid: {', '.join(SEMANTIC_MODELS)}")
            problems.require(isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1, where,
                             f"steps_per_epoch_by_model.{name}", f"must be a positive whole number, got {steps!r}")
        for name, options in self.model_options.items():
            problems.require(name in SEMANTIC_MODELS, where, "model_options", f"unknown model '{name}'; valid: {', '.join(SEMANTIC_MODELS)}")
            problems.require(isinstance(options, dict), where, f"model_options.{name}", "must be a mapping of option: value")
        for metric in self.metrics:
            problems.require(metric in SEMANTIC_METRICS, where, "metrics", f"unknown metric '{metric}'{_suggest(metric, SEMANTIC_METRICS)}; valid: {', '.join(SEMANTIC_METRICS)}")
        problems.require(self.figure_images >= 1, where, "figure_images", f"must be at least 1, got {self.figure_images}")


@dataclass
class SamConfig:
    """SAM prompted with Mask R-CNN's boxes (no fine-tuning).

    checkpoint: a file (or a folder holding the variant's released file); ``default``: the
    variant's file in ``$MSCSEG_SAM_DIR`` (default ``~/.cache/mscseg/sam``); ``none``: random,
    untrained weights (demo only; labelled as such everywhere).
    """

    variant: str = "vit_h"
    checkpoint: str | None = None
    modes: list[str] = field(default_factory=lambda: list(SAM_MODES))
    score: str = "maskrcnn"

    def check(self, where: str, problems: Problems) -> None:
        _check_modes(self.modes, where, problems)
        problems.require(len(set(self.modes)) == len(self.modes), where, "modes", "a mode is listed twice")
        problems.require(self.variant in SAM_VARIANTS, where, "variant", f"unknown SAM variant '{self.variant}'{_suggest(self.variant, SAM_VARIANTS)}; valid: {', '.join(SAM_VARIANTS)} (vit_tiny: small random encoder for demos)")
        problems.require(self.score in SAM_SCORES, where, "score", f"must be one of {', '.join(SAM_SCORES)} (the score that ranks SAM masks), got '{self.score}'")
        self.checkpoint = normalize_checkpoint(self.checkpoint)


@dataclass
class SamFinetuneConfig(FinetuneSettings):
    """SAM fine-tuned on the training split (``torch_instseg.sam_finetune``), rows ``sam_ft_<mode>``.

    Every training setting is ``torch_instseg.settings.FinetuneSettings`` (its defaults and
    checks). modes: the prompt modes of the rows; prompt_sources: ``maskrcnn`` (the Mask R-CNN
    boxes, as the zero-shot rows) and ``gt`` (ground-truth boxes: SAM's mask quality apart
    from detector misses).
    """

    enabled: bool = True
    modes: list[str] = field(default_factory=lambda: list(SAM_MODES))
    prompt_sources: list[str] = field(default_factory=lambda: list(SAM_PROMPT_SOURCES))

    def check(self, where: str, problems: Problems) -> None:
        problems.add(where, FinetuneSettings.problems(self))
        _check_modes(self.modes, where, problems)
        for source in self.prompt_sources:
            problems.require(source in SAM_PROMPT_SOURCES, where, "prompt_sources", f"unknown prompt source '{source}'; valid: {', '.join(SAM_PROMPT_SOURCES)}")
        self.checkpoint = normalize_checkpoint(self.checkpoint)


def _check_modes(modes: list[str], where: str, problems: Problems) -> None:
    problems.require(len(modes) > 0, where, "modes", f"list at least one of {', '.join(SAM_MODES)}")
    for mode in modes:
        problems.require(mode in SAM_MODES, where, "modes", f"unknown prompt mode '{mode}'{_suggest(mode, SAM_MODES)}; valid: {', '.join(SAM_MODES)}")


@dataclass
class EvaluationConfig:
    """Instance evaluation conventions: AP interpolation (11 = the paper's, 101 = pycocotools) and detection cap per image."""

    interpolations: list[int] = field(default_factory=lambda: list(INTERPOLATIONS))
    max_dets: dict = field(default_factory=lambda: {11: 300, 101: 100})

    def check(self, where: str, problems: Problems) -> None:
        problems.require(len(self.interpolations) > 0, where, "interpolations", f"list at least one of {', '.join(map(str, INTERPOLATIONS))}")
        caps = {}
        for name, cap in self.max_dets.items():
            try:
                key = int(str(name).removesuffix("point"))
            except ValueError:
                key = None
            known = problems.require(key in INTERPOLATIONS, where, "max_dets", f"unknown interpolation '{name}'; valid: {', '.join(map(str, INTERPOLATIONS))}")
            whole = problems.require(isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1, where, f"max_dets.{name}", f"must be a positive whole number, got {cap!r}")
            if known and whole:
                caps[key] = cap
        self.max_dets = caps
        for name in self.interpolations:
            if problems.require(name in INTERPOLATIONS, where, "interpolations", f"unknown interpolation {name}; valid: {', '.join(map(str, INTERPOLATIONS))} (recall points)"):
                problems.require(name in self.max_dets, where, "max_dets", f"give the detection cap for {name} (e.g. max_dets: {{{name}: 100}})")
        problems.require(len(set(self.interpolations)) == len(self.interpolations), where, "interpolations", "an interpolation is listed twice")


@dataclass
class InstanceConfig(MaskRCNNSettings):
    """Study B: Mask R-CNN (torchvision) vs SAM prompted with its boxes.

    The Mask R-CNN training settings (image_size ... lr_schedule, model_options) are
    ``torch_instseg.settings.MaskRCNNSettings``: its defaults and checks, the builder's
    refusal of a model option included.
    """

    enabled: bool = True
    dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(synthetic=SyntheticData(density="dense")))
    split: SplitConfig = field(default_factory=SplitConfig)
    score_threshold: float = 0.05
    device: str = "auto"
    devices: int | str = setting(1, DEVICES_HELP.format(what="processes of the Mask R-CNN training step (torchrun, one per GPU)",
                                                         one="the paper's"), stamped_at_default=False)
    sam: SamConfig = field(default_factory=SamConfig)
    sam_finetune: SamFinetuneConfig = field(default_factory=SamFinetuneConfig)
    peers: PeersConfig = field(default_factory=PeersConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    figure_images: int = 3

    def check(self, where: str, problems: Problems) -> None:
        self.dataset.check(f"{where}.dataset", problems)
        self.split.check(f"{where}.split", problems)
        problems.add(where, MaskRCNNSettings.problems(self))
        problems.require(0.0 <= self.score_threshold < 1.0, where, "score_threshold",
                         f"must be at least 0 and below 1 (the Mask R-CNN score a detection needs to be kept), got {self.score_threshold}")
        problems.require(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), where, "device",
                         f"must be auto, cpu, cuda or cuda:N, got '{self.device}'")
        problems.require(devices_ok(self.devices), where, "devices", devices_problem(self.devices))
        self.sam.check(f"{where}.sam", problems)
        self.sam_finetune.check(f"{where}.sam_finetune", problems)
        self.peers.check(f"{where}.peers", problems)
        self.evaluation.check(f"{where}.evaluation", problems)
        problems.require(self.figure_images >= 1, where, "figure_images", f"must be at least 1, got {self.figure_images}")


@dataclass
class StatsConfig:
    """Statistics over per-image scores: the paper's post hoc test (Dunn-Bonferroni) and a paired one."""

    posthoc: str = "dunn"
    alpha: float = 0.05

    def check(self, where: str, problems: Problems) -> None:
        problems.require(self.posthoc in POSTHOC_TESTS, where, "posthoc", f"must be one of {', '.join(POSTHOC_TESTS)}, got '{self.posthoc}'")
        problems.require(0.0 < self.alpha < 1.0, where, "alpha", f"must be between 0 and 1, got {self.alpha}")


@dataclass
class Settings:
    """Every setting of one run of both studies (``config.json`` in the results folder)."""

    name: str = "run"
    description: str = ""
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    instance: InstanceConfig = field(default_factory=InstanceConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    source: str = ""

    def check(self, where: str = "") -> None:
        """``RunError`` listing every problem of these settings, each with its dotted key, in one line."""
        problems = Problems()
        problems.require(bool(self.name) and all(c.isalnum() or c in "-_." for c in self.name), where, "name",
                         f"must be a non-empty name of letters, digits, '-', '_' or '.', got '{self.name}'")
        self.semantic.check("semantic", problems)
        self.instance.check("instance", problems)
        self.stats.check("stats", problems)
        problems.require(self.semantic.enabled or self.instance.enabled, where, "enabled", "both studies are disabled; nothing to run")
        if problems:
            raise RunError("; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def untrained(self) -> list[str]:
        """Human-readable list of the parts that run without pretrained weights (for the report's banner)."""
        parts = []
        if self.semantic.enabled and self.semantic.encoder_weights is None:
            parts.append("semantic encoders randomly initialised (no ImageNet weights)")
        if self.instance.enabled and self.instance.weights is None:
            parts.append("Mask R-CNN randomly initialised (no COCO weights)")
        sam = self.instance.sam
        if self.instance.enabled and untrained_start(sam.variant, sam.checkpoint):
            parts.append(f"SAM {sam.variant} with random, untrained weights (no checkpoint)")
        finetune = self.instance.sam_finetune
        if self.instance.enabled and finetune.enabled and untrained_start(finetune.variant, finetune.checkpoint):
            parts.append(f"SAM {finetune.variant} fine-tuned from random weights (no checkpoint; its encoder gives random features)")
        for name in enabled_peers(self.instance) if self.instance.enabled else []:
            section = getattr(self.instance.peers, name)
            if not getattr(section, "missing_module", False) and random_start(section):
                parts.append(f"{name} trained from random weights (no released model)")
        return parts

    @property
    def synthetic(self) -> bool:
        return any(
            study.enabled and study.dataset.synthetic is not None for study in (self.semantic, self.instance)
        )


def _read_mapping(path: Path) -> dict:
    if not path.is_file():
        raise RunError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RunError(f"{path}: not a text file; a config is a YAML or JSON text file") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as error:  # noqa: BLE001 - any parser failure is bad input
        detail = " ".join(str(error).split())
        raise RunError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} ({detail})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RunError(f"{path}: a config file must be a mapping of section: settings, got {type(data).__name__}")
    return data


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in ("dataset", "max_dets", "options"):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def preset_path(name: str) -> Path:
    """The packaged preset ``name`` (paper, small, tiny)."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise RunError(f"unknown preset '{name}'{_suggest(name, available_presets())}; presets: {', '.join(available_presets())}")
    return path


def available_presets() -> list[str]:
    return sorted(path.stem for path in PRESET_DIR.glob("*.yaml"))


def _resolve_mapping(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path.resolve() in seen:
        raise RunError(f"{path}: 'base' refers back to itself")
    data = _read_mapping(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise RunError(f"{path}: base: must be a preset name ({', '.join(available_presets())}) or a config file path")
    if base.endswith((".yaml", ".yml", ".json")):
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
    else:
        base_path = preset_path(base)
    inherited = _resolve_mapping(base_path, seen + (path.resolve(),))
    inherited.pop("name", None)
    return _merge(inherited, data)


def from_mapping(data: dict, name: str = "run", source: str = "") -> Settings:
    """Validated settings from an already-parsed mapping (``base`` not allowed here)."""
    data = dict(data)
    data.setdefault("name", name)
    where = source
    try:
        settings = build(Settings, data)
        settings.check()
    except RunError as error:
        raise RunError(f"{where}: {error}" if where else str(error)) from None
    settings.source = source
    return settings


def load_config(path: str | Path | None = None) -> Settings:
    """Settings from a YAML/JSON file or a preset name; ``None`` is the ``small`` preset."""
    if path is None:
        path = preset_path("small")
    path = Path(path)
    if not path.suffix and not path.exists() and (PRESET_DIR / f"{path.name}.yaml").is_file():
        path = preset_path(path.name)
    data = _resolve_mapping(path)
    return from_mapping(data, name=path.stem, source=str(path))


def check_inputs(settings: Settings) -> None:
    """Check that every dataset path and the SAM checkpoint named in the settings exist (before any work)."""
    for study_name in ("semantic", "instance"):
        study = getattr(settings, study_name)
        if study.enabled and study.dataset.path is not None and not Path(study.dataset.path).exists():
            raise RunError(
                f"{settings.source or 'config'}: {study_name}.dataset.path: {study.dataset.path} does not exist; "
                "put the dataset there or change the path (or use 'synthetic: {n_images: 40}' for generated data)"
            )
    sam = settings.instance.sam
    if settings.instance.enabled and sam.checkpoint not in (None, "default") and not Path(sam.checkpoint).exists():
        raise RunError(
            f"{settings.source or 'config'}: instance.sam.checkpoint: {sam.checkpoint} not found; download the SAM "
            f"'{sam.variant}' checkpoint into {Path(sam.checkpoint).parent} or set 'checkpoint: none' to run SAM untrained (demo only)"
        )

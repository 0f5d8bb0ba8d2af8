"""Run settings: a YAML or JSON file -> one validated ``Settings`` object.

A config file is a mapping with ``name`` (the results folder's name; default the
file's stem), ``description`` and the sections ``semantic``, ``instance`` and
``stats`` (every key optional; defaults below are the paper's settings). It may
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
fix (unknown keys list the valid ones).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from keras_semseg.registry import MODELS
from keras_semseg.sweep import METRICS as SWEEP_METRICS
from stats.posthoc import POSTHOC_TESTS as POSTHOC_REGISTRY
from torch_instseg.names import INTERPOLATIONS, PROMPT_MODES, PROMPT_SOURCES, SCORE_SOURCES, TRAINABLE_PARTS
from torch_instseg.sam import SAM_VARIANTS as SAM_VARIANT_REGISTRY

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
LR_SCHEDULES = ("constant", "cosine")
INSTANCE_LR_SCHEDULES = ("plateau", "cosine")


@dataclass
class SyntheticData:
    """Synthetic micrographs written by ``data.synthetic.write_dataset`` into the results folder."""

    n_images: int = 40
    size: int = 128
    density: str | float = "medium"
    seed: int = 0

    def check(self, where: str) -> None:
        _require(self.n_images >= 2, where, "n_images", f"needs at least 2 images to split, got {self.n_images}")
        _require(self.size >= 32, where, "size", f"must be at least 32 pixels, got {self.size}")
        if isinstance(self.density, str):
            try:
                float(self.density)
            except ValueError:
                _require(self.density in DENSITY_NAMES, where, "density",
                         f"'{self.density}' is not one of {', '.join(DENSITY_NAMES)} or a number of cells per image")
        else:
            _require(self.density > 0, where, "density", f"must be positive, got {self.density}")


@dataclass
class DatasetConfig:
    """Where a study's images come from: ``path`` (+ ``format``, reader ``options``) or ``synthetic``."""

    path: str | None = None
    format: str | None = None
    options: dict = field(default_factory=dict)
    synthetic: SyntheticData | None = None

    def check(self, where: str) -> None:
        if (self.path is None) == (self.synthetic is None):
            raise _error(where, "", "give exactly one of 'path' (a dataset folder or file) or 'synthetic' ({n_images, size, density, seed})")
        if self.synthetic is not None:
            _require(self.format is None and not self.options, where, "format",
                     "'format' and 'options' apply to a dataset 'path', not to synthetic data")
            self.synthetic.check(f"{where}.synthetic")
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

    def check(self, where: str) -> None:
        _require(0.0 < self.val_fraction < 1.0, where, "val_fraction", f"must be between 0 and 1, got {self.val_fraction}")


@dataclass
class SemanticConfig:
    """Study A: four Keras models, threshold sweep, statistics, Figures 1-4."""

    enabled: bool = True
    dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(synthetic=SyntheticData(density="medium")))
    split: SplitConfig = field(default_factory=SplitConfig)
    models: list[str] = field(default_factory=lambda: list(SEMANTIC_MODELS))
    image_size: int = 512
    epochs: int = 100
    batch_size: int = 8
    encoder_weights: str | None = "imagenet"
    augment: bool = True
    mixed_precision: bool = False
    seed: int = 0
    model_options: dict = field(default_factory=dict)
    steps_per_epoch: int | None = None
    steps_per_epoch_by_model: dict = field(default_factory=dict)
    lr_schedule: str = "constant"
    batchnorm_momentum: float | None = None
    eval_weights: str = "best"
    metrics: list[str] = field(default_factory=lambda: list(SEMANTIC_METRICS))
    figure_images: int = 3

    def check(self, where: str) -> None:
        self.dataset.check(f"{where}.dataset")
        self.split.check(f"{where}.split")
        _require(len(self.models) > 0, where, "models", f"list at least one of {', '.join(SEMANTIC_MODELS)}")
        for model in self.models:
            _require(model in SEMANTIC_MODELS, where, "models", f"unknown model '{model}'{_suggest(model, SEMANTIC_MODELS)}; valid: {', '.join(SEMANTIC_MODELS)}")
        _require(len(set(self.models)) == len(self.models), where, "models", "a model is listed twice")
        _require(self.image_size >= 32 and self.image_size % 32 == 0, where, "image_size",
                 f"must be a multiple of 32 and at least 32 (the encoders downsample 5 times), got {self.image_size}")
        _require(self.epochs >= 1, where, "epochs", f"must be at least 1, got {self.epochs}")
        _require(self.batch_size >= 1, where, "batch_size", f"must be at least 1, got {self.batch_size}")
        _require(self.steps_per_epoch is None or self.steps_per_epoch >= 1, where, "steps_per_epoch",
                 f"must be at least 1 or none (one pass over the training images), got {self.steps_per_epoch}")
        for name, steps in self.steps_per_epoch_by_model.items():
            _require(name in SEMANTIC_MODELS, where, "steps_per_epoch_by_model", f"unknown model '{name}'; valid: {', '.join(SEMANTIC_MODELS)}")
            _require(isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1, where,
                     f"steps_per_epoch_by_model.{name}", f"must be a positive whole number, got {steps!r}")
        _require(self.lr_schedule in LR_SCHEDULES, where, "lr_schedule",
                 f"must be one of {', '.join(LR_SCHEDULES)} (constant: the paper's plain Adam), got '{self.lr_schedule}'")
        _require(self.batchnorm_momentum is None or 0.0 <= self.batchnorm_momentum < 1.0, where, "batchnorm_momentum",
                 f"must be in [0, 1) or none (Keras's 0.99), got {self.batchnorm_momentum}")
        _require(self.eval_weights in ("best", "last"), where, "eval_weights",
                 f"must be best (lowest validation loss, the default) or last (the final epoch), got '{self.eval_weights}'")
        _require(self.encoder_weights in (None, "imagenet"), where, "encoder_weights",
                 f"must be 'imagenet' or none (random initialisation), got '{self.encoder_weights}'")
        for name, options in self.model_options.items():
            _require(name in SEMANTIC_MODELS, where, "model_options", f"unknown model '{name}'; valid: {', '.join(SEMANTIC_MODELS)}")
            _require(isinstance(options, dict), where, f"model_options.{name}", "must be a mapping of option: value")
        for metric in self.metrics:
            _require(metric in SEMANTIC_METRICS, where, "metrics", f"unknown metric '{metric}'{_suggest(metric, SEMANTIC_METRICS)}; valid: {', '.join(SEMANTIC_METRICS)}")
        _require(self.figure_images >= 1, where, "figure_images", f"must be at least 1, got {self.figure_images}")


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

    def check(self, where: str) -> None:
        _require(len(self.modes) > 0, where, "modes", f"list at least one of {', '.join(SAM_MODES)}")
        for mode in self.modes:
            _require(mode in SAM_MODES, where, "modes", f"unknown prompt mode '{mode}'{_suggest(mode, SAM_MODES)}; valid: {', '.join(SAM_MODES)}")
        _require(len(set(self.modes)) == len(self.modes), where, "modes", "a mode is listed twice")
        _require(self.variant in SAM_VARIANTS, where, "variant", f"unknown SAM variant '{self.variant}'{_suggest(self.variant, SAM_VARIANTS)}; valid: {', '.join(SAM_VARIANTS)} (vit_tiny: small random encoder for demos)")
        _require(self.score in SAM_SCORES, where, "score", f"must be one of {', '.join(SAM_SCORES)} (the score that ranks SAM masks), got '{self.score}'")
        if self.checkpoint is not None and self.checkpoint.strip().lower() in ("none", "null", ""):
            self.checkpoint = None
        if self.checkpoint is not None:
            self.checkpoint = os.path.expandvars(os.path.expanduser(self.checkpoint))


@dataclass
class SamFinetuneConfig:
    """SAM fine-tuned on the training split (``torch_instseg.sam_finetune``), rows ``sam_ft_<mode>``.

    trainable: ``decoder``, ``decoder+prompt`` (image encoder frozen; each embedding computed
    once) or ``all`` (a GPU job). checkpoint: the starting weights, as ``sam.checkpoint`` (a file
    or folder; ``default``: the released file in ``$MSCSEG_SAM_DIR``; ``none``: random weights).
    focal_weight: null = 20 (the SAM paper's) from a checkpoint, 0 (Dice alone) from random
    weights. prompt_sources: ``maskrcnn`` (the Mask R-CNN boxes, as the zero-shot rows) and
    ``gt`` (ground-truth boxes: SAM's mask quality apart from detector misses).
    """

    enabled: bool = True
    variant: str = "vit_h"
    checkpoint: str | None = None
    trainable: str = "decoder+prompt"
    epochs: int = 50
    lr: float = 0.0001
    weight_decay: float = 0.0001
    prompts_per_image: int = 25
    iterations: int = 7
    positive_points: int = 1
    negative_points: int = 1
    point_probability: float = 0.5
    mask_prompt_probability: float = 0.0
    focal_weight: float | None = None
    dice_weight: float = 1.0
    seed: int = 0
    max_minutes: float | None = None
    modes: list[str] = field(default_factory=lambda: list(SAM_MODES))
    prompt_sources: list[str] = field(default_factory=lambda: list(SAM_PROMPT_SOURCES))

    def check(self, where: str) -> None:
        _require(self.variant in SAM_VARIANTS, where, "variant", f"unknown SAM variant '{self.variant}'{_suggest(self.variant, SAM_VARIANTS)}; valid: {', '.join(SAM_VARIANTS)}")
        _require(self.trainable in SAM_TRAINABLE, where, "trainable", f"must be one of {', '.join(SAM_TRAINABLE)}, got '{self.trainable}'")
        _require(self.epochs >= 1, where, "epochs", f"must be at least 1, got {self.epochs}")
        _require(self.lr > 0, where, "lr", f"must be positive, got {self.lr}")
        _require(self.weight_decay >= 0, where, "weight_decay", f"must be zero or positive, got {self.weight_decay}")
        _require(self.prompts_per_image >= 1, where, "prompts_per_image", f"must be at least 1, got {self.prompts_per_image}")
        for key in ("iterations", "positive_points", "negative_points"):
            _require(getattr(self, key) >= 0, where, key, f"must be zero or more, got {getattr(self, key)}")
        for key in ("point_probability", "mask_prompt_probability"):
            _require(0.0 <= getattr(self, key) <= 1.0, where, key, f"must be between 0 and 1, got {getattr(self, key)}")
        _require(self.focal_weight is None or self.focal_weight >= 0, where, "focal_weight", f"must be zero or positive (or null: automatic), got {self.focal_weight}")
        _require(self.dice_weight >= 0, where, "dice_weight", f"must be zero or positive, got {self.dice_weight}")
        _require(self.max_minutes is None or self.max_minutes > 0, where, "max_minutes", f"must be positive (or null), got {self.max_minutes}")
        _require(len(self.modes) > 0, where, "modes", f"list at least one of {', '.join(SAM_MODES)}")
        for mode in self.modes:
            _require(mode in SAM_MODES, where, "modes", f"unknown prompt mode '{mode}'{_suggest(mode, SAM_MODES)}; valid: {', '.join(SAM_MODES)}")
        for source in self.prompt_sources:
            _require(source in SAM_PROMPT_SOURCES, where, "prompt_sources", f"unknown prompt source '{source}'; valid: {', '.join(SAM_PROMPT_SOURCES)}")
        if self.checkpoint is not None and self.checkpoint.strip().lower() in ("none", "null", ""):
            self.checkpoint = None
        if self.checkpoint is not None:
            self.checkpoint = os.path.expandvars(os.path.expanduser(self.checkpoint))

    def finetune_settings(self) -> dict[str, Any]:
        """The keyword settings of ``torch_instseg.sam_finetune.FinetuneSettings`` (checkpoint None -> 'none', 'default' -> None)."""
        skip = ("enabled", "modes", "prompt_sources")
        settings = {key: value for key, value in asdict(self).items() if key not in skip}
        settings["checkpoint"] = "none" if self.checkpoint is None else (None if self.checkpoint == "default" else self.checkpoint)
        return settings


@dataclass
class EvaluationConfig:
    """Instance evaluation conventions: AP interpolation (11 = the paper's, 101 = pycocotools) and detection cap per image."""

    interpolations: list[int] = field(default_factory=lambda: list(INTERPOLATIONS))
    max_dets: dict = field(default_factory=lambda: {11: 300, 101: 100})

    def check(self, where: str) -> None:
        _require(len(self.interpolations) > 0, where, "interpolations", f"list at least one of {', '.join(map(str, INTERPOLATIONS))}")
        caps = {}
        for name, cap in self.max_dets.items():
            try:
                key = int(str(name).removesuffix("point"))
            except ValueError:
                key = None
            _require(key in INTERPOLATIONS, where, "max_dets", f"unknown interpolation '{name}'; valid: {', '.join(map(str, INTERPOLATIONS))}")
            _require(isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1, where, f"max_dets.{name}", f"must be a positive whole number, got {cap!r}")
            caps[key] = cap
        self.max_dets = caps
        for name in self.interpolations:
            _require(name in INTERPOLATIONS, where, "interpolations", f"unknown interpolation {name}; valid: {', '.join(map(str, INTERPOLATIONS))} (recall points)")
            _require(name in self.max_dets, where, "max_dets", f"give the detection cap for {name} (e.g. max_dets: {{{name}: 100}})")
        _require(len(set(self.interpolations)) == len(self.interpolations), where, "interpolations", "an interpolation is listed twice")


@dataclass
class InstanceConfig:
    """Study B: Mask R-CNN (torchvision) vs SAM prompted with its boxes."""

    enabled: bool = True
    dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(synthetic=SyntheticData(density="dense")))
    split: SplitConfig = field(default_factory=SplitConfig)
    image_size: int = 512
    epochs: int = 50
    batch_size: int = 2
    lr: float = 0.003
    weight_decay: float = 0.0005
    weights: str | None = "coco"
    detections_per_image: int = 300
    score_threshold: float = 0.05
    device: str = "auto"
    seed: int = 0
    model_options: dict = field(default_factory=dict)
    lr_schedule: str = "plateau"
    sam: SamConfig = field(default_factory=SamConfig)
    sam_finetune: SamFinetuneConfig = field(default_factory=SamFinetuneConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    figure_images: int = 3

    def check(self, where: str) -> None:
        self.dataset.check(f"{where}.dataset")
        self.split.check(f"{where}.split")
        _require(self.image_size >= 32, where, "image_size", f"must be at least 32, got {self.image_size}")
        _require(self.epochs >= 1, where, "epochs", f"must be at least 1, got {self.epochs}")
        _require(self.batch_size >= 1, where, "batch_size", f"must be at least 1, got {self.batch_size}")
        _require(self.lr > 0, where, "lr", f"must be positive, got {self.lr}")
        _require(self.weight_decay >= 0, where, "weight_decay", f"must be zero or positive, got {self.weight_decay}")
        _require(self.lr_schedule in INSTANCE_LR_SCHEDULES, where, "lr_schedule",
                 f"must be one of {', '.join(INSTANCE_LR_SCHEDULES)} (plateau: the paper's), got '{self.lr_schedule}'")
        _require(self.weights in (None, "coco"), where, "weights", f"must be 'coco' or none (random initialisation), got '{self.weights}'")
        _require(self.detections_per_image >= 1, where, "detections_per_image", f"must be at least 1, got {self.detections_per_image}")
        _require(0.0 <= self.score_threshold < 1.0, where, "score_threshold",
                 f"must be at least 0 and below 1 (the Mask R-CNN score a detection needs to be kept), got {self.score_threshold}")
        _require(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), where, "device",
                 f"must be auto, cpu, cuda or cuda:N, got '{self.device}'")
        self.sam.check(f"{where}.sam")
        self.sam_finetune.check(f"{where}.sam_finetune")
        self.evaluation.check(f"{where}.evaluation")
        _require(self.figure_images >= 1, where, "figure_images", f"must be at least 1, got {self.figure_images}")


@dataclass
class StatsConfig:
    """Statistics over per-image scores: the paper's post hoc test (Dunn-Bonferroni) and a paired one."""

    posthoc: str = "dunn"
    alpha: float = 0.05

    def check(self, where: str) -> None:
        _require(self.posthoc in POSTHOC_TESTS, where, "posthoc", f"must be one of {', '.join(POSTHOC_TESTS)}, got '{self.posthoc}'")
        _require(0.0 < self.alpha < 1.0, where, "alpha", f"must be between 0 and 1, got {self.alpha}")


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
        _require(bool(self.name) and all(c.isalnum() or c in "-_." for c in self.name), where, "name",
                 f"must be a non-empty name of letters, digits, '-', '_' or '.', got '{self.name}'")
        self.semantic.check("semantic")
        self.instance.check("instance")
        self.stats.check("stats")
        _require(self.semantic.enabled or self.instance.enabled, where, "enabled", "both studies are disabled; nothing to run")

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
        if self.instance.enabled and self.instance.sam.checkpoint is None:
            parts.append(f"SAM {self.instance.sam.variant} with random, untrained weights (no checkpoint)")
        finetune = self.instance.sam_finetune
        if self.instance.enabled and finetune.enabled and finetune.checkpoint is None:
            parts.append(f"SAM {finetune.variant} fine-tuned from random weights (no checkpoint; its encoder gives random features)")
        return parts

    @property
    def synthetic(self) -> bool:
        return any(
            study.enabled and study.dataset.synthetic is not None for study in (self.semantic, self.instance)
        )


def _error(where: str, key: str, problem: str) -> RunError:
    label = ".".join(part for part in (where, key) if part)
    return RunError(f"{label}: {problem}" if label else problem)


def _require(ok: bool, where: str, key: str, problem: str) -> None:
    if not ok:
        raise _error(where, key, problem)


def _suggest(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(annotation: Any) -> str:
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "a text value", list: "a list", dict: "a mapping"}
    if annotation in names:
        return names[annotation]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is list:
        return "a list"
    if typing.get_origin(annotation) is dict:
        return "a mapping"
    if args:
        return " or ".join(_type_name(a) for a in args) + (" or none" if type(None) in typing.get_args(annotation) else "")
    return getattr(annotation, "__name__", str(annotation))


def _convert(value: Any, annotation: Any, where: str, key: str) -> Any:
    """``value`` as ``annotation`` (int, float, bool, str, list[str], dict, unions, dataclasses)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        options = typing.get_args(annotation)
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            if type(None) in options:
                return None
            raise _error(where, key, f"must be {_type_name(annotation)}, got none")
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where, key)
            except RunError:
                continue
        raise _error(where, key, f"must be {_type_name(annotation)}, got {value!r}")
    if dataclasses.is_dataclass(annotation):
        return build(annotation, value, f"{where}.{key}" if where else key)
    if origin is list or annotation is list:
        if not isinstance(value, list):
            raise _error(where, key, f"must be a list, got {value!r}")
        (item_type,) = typing.get_args(annotation) or (Any,)
        return [value_ if item_type is Any else _convert(value_, item_type, where, key) for value_ in value]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise _error(where, key, f"must be a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _error(where, key, f"must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _error(where, key, f"must be a whole number, got {value!r}")
    if annotation is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise _error(where, key, f"must be a number, got {value!r}")
        if not math.isfinite(number):
            raise _error(where, key, f"must be a finite number, got {value!r}")
        return number
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _error(where, key, f"must be a text value, got {value!r}")
    return value


def build(cls: type, data: Any, where: str = "") -> Any:
    """An instance of dataclass ``cls`` from a mapping; unknown keys and wrong types are ``RunError``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _error(where, "", f"must be a mapping of key: value, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    values = {}
    for key, value in data.items():
        if key not in known:
            raise _error(where, str(key), f"unknown key{_suggest(str(key), known)}; valid keys here: {', '.join(known)}")
        values[key] = _convert(value, hints[key], where, key)
    return cls(**values)


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

"""The run's steps, each declared once: inputs, outputs, the settings it reads, its action, its framework.

A step's stamp is a hash of exactly the settings it declares (``reads``, dotted names such as
``semantic.epochs``) and of its inputs' stamps, so changing any setting a step reads marks
that step and every step after it stale. An action gets the settings through a view that
holds only the declared names: reading any other setting is an ``UndeclaredSetting`` error.

The declaration itself (``Step``, ``Context``, ``SettingsView``, the stamps) is ``mscseg.step_spec``;
its names are re-exported here.

``mscseg.run`` decides which step runs (and runs a TensorFlow or torch step in a
subprocess of its own, ``python -m mscseg.step``); an action only does the work. The
pieces (keras_semseg, torch_instseg, stats) are imported inside each action.

Adding a step is one ``Step(...)`` in ``build_steps`` and its action, for example::

    Step("instance_sam_finetune", inputs=("split",), outputs=lambda lay: [lay.sam_finetune],
         reads=("instance.sam.variant", "instance.sam.finetune"), action=instance_sam_finetune_step,
         framework=Framework.TORCH, resumable=True)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from data.settings import field_names
from keras_semseg.settings import TrainRecipe, TrainSettings
from torch_instseg.settings import FinetuneSettings, MaskRCNNSettings, build_sam_checkpoint

from .config import PEER_NAMES, Settings, enabled_peers
from .errors import RunError
from .layout import INSTANCE_FIGURE, SEMANTIC_FIGURES, Layout
from .step_spec import (  # noqa: F401  (re-exported: mscseg.steps is the public module)
    _MISSING, Context, Framework, SettingsView, Step, UndeclaredSetting, _hash, _int_key, plain, setting_value, settings_hash,
    stamp_hashes, successors,
)

PRIMARY_INTERPOLATION = 11


# ---------------------------------------------------------------- declarations

def enabled_studies(settings: Settings) -> list[str]:
    return [name for name in ("semantic", "instance") if getattr(settings, name).enabled]


def finetuned_sam_methods(instance: Any) -> list[str]:
    """The rows of the fine-tuned SAM: ``sam_ft_<mode>`` (Mask R-CNN boxes) and ``sam_ft_gt_<mode>`` (ground-truth boxes)."""
    from torch_instseg.names import GT_PROMPT_MODES, sam_method

    finetune = instance.sam_finetune
    if not finetune.enabled:
        return []
    return [sam_method(mode, "sam_ft", source) for source in finetune.prompt_sources for mode in finetune.modes
            if source == "maskrcnn" or mode in GT_PROMPT_MODES]


def instance_methods(instance: Any) -> list[str]:
    """Every method of the instance table: Mask R-CNN, zero-shot SAM per prompt mode, the fine-tuned SAM, then the
    enabled peers (``cellpose``, ``stardist``)."""
    from torch_instseg.names import MASKRCNN_METHOD, sam_method

    return ([MASKRCNN_METHOD] + [sam_method(mode) for mode in instance.sam.modes] + finetuned_sam_methods(instance)
            + enabled_peers(instance))


def absent_methods(layout: Layout, methods: Sequence[str]) -> dict[str, str]:
    """``{method: why}`` for the methods whose step wrote ``<method>.absent.json`` (a peer whose package is missing)."""
    absent = {}
    for method in methods:
        path = layout.prediction_absent(method)
        if path.is_file() and not layout.prediction(method).is_file():
            try:
                absent[method] = str(json.loads(path.read_text()).get("reason", "no reason recorded"))
            except ValueError:
                absent[method] = f"{path.name} is not valid JSON"
    return absent


def build_steps(settings: Settings) -> list[Step]:
    """The ordered steps for these settings (a disabled study has none)."""
    studies = enabled_studies(settings)
    steps = [
        Step("data", (), lambda lay: [lay.data], tuple(f"{s}.dataset" for s in studies), data_step),
        Step("split", ("data",), lambda lay: [lay.split_json(s) for s in studies],
             tuple(f"{s}.{key}" for s in studies for key in ("split", "dataset")), split_step),
    ]
    if settings.semantic.enabled:
        steps += _semantic_steps(settings)
    if settings.instance.enabled:
        steps += _instance_steps(settings)
    steps.append(Step("report", tuple(step.name for step in steps), lambda lay: [lay.report],
                      REPORT_READS, report_step, derived=True))
    return steps


REPORT_READS = ("name", "description", "semantic", "instance", "stats")  # its settings section shows them all
SEMANTIC_TRAINING = field_names(TrainRecipe)
INSTANCE_TRAINING = field_names(MaskRCNNSettings) + ("device",)


def settings_of(cls: type, section: Any, **values: Any) -> Any:
    """The settings dataclass ``cls`` filled from a config section (or its view): each field read by name, ``values`` first."""
    return cls(**{name: values[name] if name in values else getattr(section, name) for name in field_names(cls)})


def _semantic_steps(settings: Settings) -> list[Step]:
    models = list(settings.semantic.models)
    trains = [
        Step(f"semantic_train_{model}", ("split",), lambda lay, model=model: [lay.semantic_model(model)],
             tuple(f"semantic.{key}" for key in SEMANTIC_TRAINING)
             + (f"semantic.model_options.{model}", f"semantic.steps_per_epoch_by_model.{model}", "semantic.devices"),
             lambda ctx, model=model: semantic_train_step(ctx, model), Framework.TENSORFLOW, resumable=True,
             devices="semantic.devices")
        for model in models
    ]
    return trains + [
        Step("semantic_sweep", tuple(step.name for step in trains), lambda lay: [lay.semantic_masks, lay.sweep],
             ("semantic.models",), semantic_sweep_step),
        Step("semantic_stats", ("semantic_sweep",), lambda lay: [lay.semantic_stats],
             ("semantic.metrics", "stats.posthoc"), semantic_stats_step),
        Step("semantic_figures", ("semantic_sweep", "semantic_stats"), lambda lay: lay.figure_files(SEMANTIC_FIGURES),
             ("semantic.models", "semantic.metrics", "semantic.figure_images", "stats.posthoc"), semantic_figures_step),
    ]


FINETUNE_ROWS = ("instance.sam_finetune.enabled", "instance.sam_finetune.modes", "instance.sam_finetune.prompt_sources")
PEER_ROWS = tuple(f"instance.peers.{name}.enabled" for name in PEER_NAMES)  # a disabled peer's is not stamped
PEER_FRAMEWORKS = {"cellpose": Framework.TORCH, "stardist": Framework.TENSORFLOW}


def _instance_steps(settings: Settings) -> list[Step]:
    modes = list(settings.instance.sam.modes)
    finetuned = finetuned_sam_methods(settings.instance)
    peer_names = enabled_peers(settings.instance)
    methods = ("instance.sam.modes",) + FINETUNE_ROWS + PEER_ROWS
    sam_steps = (("instance_sam",) + (("instance_sam_finetune",) if finetuned else ())
                 + tuple(f"instance_peer_{name}" for name in peer_names))
    steps = [
        Step("instance_train", ("split",), lambda lay: [lay.maskrcnn],
             tuple(f"instance.{key}" for key in INSTANCE_TRAINING) + ("instance.devices",), instance_train_step,
             Framework.TORCH, resumable=True, devices="instance.devices"),
        Step("instance_predict", ("instance_train",), lambda lay: [lay.prediction("gt"), lay.prediction("maskrcnn")],
             ("instance.device", "instance.score_threshold"), instance_predict_step, Framework.TORCH),
        Step("instance_sam", ("instance_predict",), lambda lay: [lay.prediction(f"sam_{mode}") for mode in modes],
             ("instance.sam.variant", "instance.sam.checkpoint", "instance.sam.modes", "instance.sam.score",
              "instance.device"), instance_sam_step, Framework.TORCH),
    ]
    if finetuned:
        steps.append(Step("instance_sam_finetune", ("split", "instance_predict"),
                          lambda lay: [lay.sam_finetune] + [lay.prediction(method) for method in finetuned],
                          ("instance.sam_finetune", "instance.sam.score", "instance.device"),
                          instance_sam_finetune_step, Framework.TORCH, resumable=True))
    for name in peer_names:
        steps.append(Step(f"instance_peer_{name}", ("split", "instance_predict"), lambda lay, name=name: peer_outputs(lay, name),
                          (f"instance.peers.{name}", "instance.device", "instance.evaluation.max_dets"),
                          lambda ctx, name=name: instance_peer_step(ctx, name), PEER_FRAMEWORKS[name], resumable=True))
    return steps + [
        Step("instance_eval", ("instance_predict",) + sam_steps, lambda lay: [lay.evaluations],
             methods + ("instance.evaluation",), instance_eval_step),
        Step("instance_table", ("instance_predict",) + sam_steps, lambda lay: [lay.instance_table],
             methods + ("instance.evaluation",), instance_table_step),
        Step("instance_stats", ("instance_eval",), lambda lay: [lay.instance_stats],
             methods + ("instance.evaluation.interpolations", "stats.posthoc"), instance_stats_step),
        Step("instance_figures", ("instance_predict",) + sam_steps, lambda lay: lay.figure_files((INSTANCE_FIGURE,)),
             methods + ("instance.figure_images",), instance_figures_step),
    ]


# ---------------------------------------------------------------- data and split

def _studies(ctx: Context) -> list[str]:
    return [name for name in ("semantic", "instance") if name in {d.split(".")[0] for d in ctx.settings._declared}]


def data_step(ctx: Context) -> None:
    """Write the synthetic datasets (if any), then read every study's dataset once and summarise it."""
    from data.outputs import write_csv
    from data.summary import summarize
    from data.synthetic import write_dataset

    for study in _studies(ctx):
        spec = ctx.settings[study].dataset
        if spec.synthetic is not None:
            s = spec.synthetic
            density: str | float = s.density
            if isinstance(density, str) and density not in ("sparse", "medium", "dense"):
                density = float(density)
            folder = ctx.layout.synthetic_data(study)
            print(f"{study}: writing {s.n_images} synthetic images ({s.size} px, {s.density}) to {folder}")
            write_dataset(folder, n_images=s.n_images, size=s.size, density=density, seed=s.seed, overwrite=True)
        dataset = ctx.dataset(study)
        print(f"{study}: {len(dataset)} images from {dataset.root} ({dataset.format})")
        frame = summarize(dataset)
        write_csv(ctx.layout.data_summary(study), frame)
        print(f"{study}: {int(frame['n_cells'].sum())} cells, {frame['n_cells'].mean():.1f} per image")


def split_step(ctx: Context) -> None:
    """``split.json`` (semantic) and ``instance/split.json``: train/validation names, reused by every later step."""
    from data.split import load_or_make_split

    for study in _studies(ctx):
        config = ctx.settings[study]
        path = ctx.layout.split_json(study)
        split = load_or_make_split(path, ctx.dataset(study).names, config.split.val_fraction, config.split.seed,
                                   source=config.dataset.label)
        print(f"{study}: {len(split['train'])} train, {len(split['val'])} validation images -> {path}")


# ---------------------------------------------------------------- semantic study

def semantic_train_step(ctx: Context, model: str) -> None:
    from keras_semseg.train import train_model

    s = ctx.settings.semantic
    settings = settings_of(TrainSettings, s, model=model, model_options=dict(s.model_options.get(model, {})),
                           steps_per_epoch=s.steps_per_epoch_by_model.get(model) or s.steps_per_epoch)
    result = train_model(model, ctx.dataset("semantic"), ctx.split("semantic"), ctx.layout.semantic_model(model),
                         settings=settings, resume=ctx.resume, overwrite=ctx.overwrite, quiet=True,
                         split_path=str(ctx.layout.split_json("semantic")))
    print(f"{model}: status {result.get('status')}, best epoch {result.get('best_epoch')}")


def write_validation_masks(ctx: Context, study: str, folder: Path) -> list[str]:
    """The validation masks as 16-bit label PNGs ``<stem>.png`` (what the sweep reads)."""
    from data.imageio import write_labels

    names = ctx.split(study)["val"]
    dataset = ctx.dataset(study)
    for name in names:
        labels = dataset.get(name).labels
        write_labels(folder / (f"{name}.png" if labels.max() < 65536 else f"{name}.tif"), labels)
    return names


def semantic_sweep_step(ctx: Context) -> None:
    from keras_semseg.sweep import run_sweep

    layout = ctx.layout
    names = write_validation_masks(ctx, "semantic", layout.semantic_masks)
    print(f"{len(names)} validation masks -> {layout.semantic_masks}")
    for model in ctx.settings.semantic.models:
        tables = run_sweep(layout.probs(model), layout.semantic_masks, model, layout.sweep, overwrite=ctx.overwrite,
                           images=names)
        row = tables["table1"][tables["table1"]["model"] == model].iloc[0]
        print(f"{model}: Dice {row['dice_mean']:.3f} at threshold {row['threshold']:.2f}")


def semantic_stats_step(ctx: Context) -> None:
    import pandas as pd
    from stats import analyse

    layout = ctx.layout
    per_image = pd.read_csv(layout.sweep_table("per_image"), dtype={"model": str, "image": str})
    result = analyse(per_image, list(ctx.settings.semantic.metrics), layout.semantic_stats,
                     posthoc=ctx.settings.stats.posthoc, at_optimal=layout.sweep_table("optimal"), overwrite=ctx.overwrite)
    print(result["tests"].to_string(index=False))


def semantic_figures_step(ctx: Context) -> None:
    from keras_semseg.plots import figure1, figure2, figure4
    from stats.plots import figure3

    from .layout import history_csv

    s, layout = ctx.settings.semantic, ctx.layout
    models = list(s.models)
    figure1({m: history_csv(layout.semantic_model(m)) for m in models}, layout.figure_stem(SEMANTIC_FIGURES[0]), overwrite=ctx.overwrite)
    figure2(layout.sweep_table("summary"), layout.sweep_table("optimal"), layout.figure_stem(SEMANTIC_FIGURES[1]), overwrite=ctx.overwrite)
    figure3(layout.stats_table("semantic", "values"), layout.semantic_stats, list(s.metrics), layout.figure_stem(SEMANTIC_FIGURES[2]),
            test=ctx.settings.stats.posthoc, overwrite=ctx.overwrite)
    names = ctx.split("semantic")["val"][: s.figure_images]
    figure4(ctx.samples("semantic", names), {m: layout.probs(m) for m in models}, layout.sweep_table("table1"),
            layout.figure_stem(SEMANTIC_FIGURES[3]), n_images=s.figure_images, overwrite=ctx.overwrite)
    print(f"figures 1-4 -> {layout.figures}")


# ---------------------------------------------------------------- instance study

def _device(device: str) -> str | None:
    """The config's device for torch (None = the pieces' own choice: CUDA when present)."""
    return None if device == "auto" else device


def instance_train_step(ctx: Context) -> None:
    from torch_instseg.maskrcnn import train_maskrcnn

    i = ctx.settings.instance
    result = train_maskrcnn(ctx.dataset("instance"), ctx.split("instance"), ctx.layout.maskrcnn,
                            settings_of(MaskRCNNSettings, i, model_options=dict(i.model_options)), resume=ctx.resume,
                            overwrite=ctx.overwrite, device=_device(i.device), quiet=True,
                            split_path=str(ctx.layout.split_json("instance")))
    print(f"maskrcnn: status {result.get('status')}, best epoch {result.get('best_epoch')}")


def _ground_truth(ctx: Context) -> dict:
    return json.loads(ctx.layout.prediction("gt").read_text())


def instance_predict_step(ctx: Context) -> None:
    from torch_instseg.coco import dataset_to_coco, write_coco
    from torch_instseg.maskrcnn import predict_to_coco

    names = ctx.split("instance")["val"]
    gt = dataset_to_coco(ctx.samples("instance", names))
    write_coco(ctx.layout.prediction("gt"), gt)
    predict_to_coco(ctx.layout.maskrcnn, ctx.dataset("instance"), names, gt, ctx.layout.prediction("maskrcnn"),
                    device=_device(ctx.settings.instance.device), overwrite=ctx.overwrite,
                    score_threshold=ctx.settings.instance.score_threshold)
    print(f"{len(names)} validation images: gt.json, maskrcnn.json -> {ctx.layout.predictions}")


def instance_sam_step(ctx: Context) -> None:
    from torch_instseg.sam import run_sam

    sam = ctx.settings.instance.sam
    names = ctx.split("instance")["val"]
    run_sam(ctx.dataset("instance"), names, ctx.layout.prediction("maskrcnn"), _ground_truth(ctx), ctx.layout.predictions,
            variant=sam.variant, checkpoint=build_sam_checkpoint(sam.checkpoint), modes=tuple(sam.modes), score=sam.score,
            device=_device(ctx.settings.instance.device), overwrite=ctx.overwrite)
    print(f"SAM {sam.variant} ({', '.join(sam.modes)}) -> {ctx.layout.predictions}")


def instance_sam_finetune_step(ctx: Context) -> None:
    """Fine-tune SAM on the instance training split, then write ``sam_ft_<mode>.json`` / ``sam_ft_gt_<mode>.json``."""
    from torch_instseg.sam_finetune import finetune_and_predict

    finetune = ctx.settings.instance.sam_finetune
    result = finetune_and_predict(
        settings_of(FinetuneSettings, finetune), ctx.dataset("instance"), ctx.split("instance"), ctx.layout.sam_finetune,
        ctx.layout.predictions, modes=tuple(finetune.modes), score=ctx.settings.instance.sam.score,
        prompt_sources=tuple(finetune.prompt_sources), device=_device(ctx.settings.instance.device),
        resume=ctx.resume, overwrite=ctx.overwrite, quiet=True, split_path=str(ctx.layout.split_json("instance")),
    )
    record = result.record
    print(f"SAM {finetune.variant} fine-tuned ({finetune.trainable}): {record.get('status')}, best epoch "
          f"{record.get('best_epoch')} (validation loss {record.get('best_loss')}) -> {ctx.layout.sam_finetune}")


def peer_outputs(layout: Layout, name: str) -> list[Path]:
    """What the step of peer ``name`` writes: its run folder, its COCO results and their sidecar, or the absent marker."""
    return [layout.peer_run(name), layout.prediction(name), layout.prediction_meta(name), layout.prediction_absent(name)]


def _peer_missing(name: str, error: ModuleNotFoundError) -> bool:
    return error.name == f"peers.{name}"


def instance_peer_step(ctx: Context, name: str) -> None:
    """Train the peer ``name`` on the instance split (``peers.<name>.train``: run.json, history.csv, weights;
    resumable), then write its COCO results on the validation images with the evaluation's detection cap.

    A peer whose package cannot be imported here (``PeerUnavailable``) does not fail the run: the step
    writes ``<name>.absent.json`` with the reason and says so in one line; every table marks the row absent.
    """
    import peers
    from data.lifecycle import RunControl
    from data.outputs import write_json

    layout, instance = ctx.layout, ctx.settings.instance
    try:
        module = peers.peer_module(name)
        settings = settings_of(module.SETTINGS, getattr(instance.peers, name))
        split = ctx.split("instance")
        record = module.train(settings, ctx.dataset("instance"), split, layout.peer_run(name),
                              RunControl(resume=ctx.resume, overwrite=ctx.overwrite, quiet=True,
                                         split_path=str(layout.split_json("instance"))))
        module.predict_to_coco(layout.peer_run(name), ctx.dataset("instance"), split["val"], layout.prediction("gt"),
                               layout.prediction(name), device=_device(instance.device), overwrite=True,
                               max_detections=max(instance.evaluation.max_dets.values()), quiet=True)
    except (peers.PeerUnavailable, ModuleNotFoundError) as error:
        if isinstance(error, ModuleNotFoundError) and not _peer_missing(name, error):
            raise
        reason = error.problem if isinstance(error, peers.PeerUnavailable) else f"peers/{name}.py is not in this installation"
        write_json(layout.prediction_absent(name), {"method": name, "reason": reason, "package": peers.PACKAGES[name]})
        print(f"{name}: absent ({reason}); its rows are marked absent in the tables, tests and report")
        return
    layout.prediction_absent(name).unlink(missing_ok=True)
    print(f"{name}: status {record.get('status')}, best epoch {record.get('best_epoch')} -> {layout.peer_run(name)}; "
          f"{len(split['val'])} validation images -> {layout.prediction(name)}")


def _present(ctx: Context) -> tuple[list[str], dict[str, str]]:
    """(the instance methods with results, ``{method: why}`` of those marked absent), each absent one said in a line."""
    methods = instance_methods(ctx.settings.instance)
    absent = absent_methods(ctx.layout, methods)
    for method, reason in absent.items():
        print(f"{method}: absent ({reason})")
    return [method for method in methods if method not in absent], absent


def instance_eval_step(ctx: Context) -> None:
    from torch_instseg.evaluate import run_evaluation

    evaluation = ctx.settings.instance.evaluation
    for method in _present(ctx)[0]:
        for interpolation in evaluation.interpolations:
            out = ctx.layout.evaluation(method, interpolation)
            run_evaluation(ctx.layout.prediction("gt"), ctx.layout.prediction(method), out, interpolation=interpolation,
                           max_dets=evaluation.max_dets[interpolation], overwrite=ctx.overwrite)
            print(f"{method} / {interpolation} -> {out}")


def instance_table_step(ctx: Context) -> None:
    import pandas as pd
    from data.outputs import write_csv
    from torch_instseg.evaluate import instance_table

    evaluation = ctx.settings.instance.evaluation
    gt = _ground_truth(ctx)
    present, absent = _present(ctx)
    results = {method: ctx.layout.prediction(method) for method in present}
    frames = []
    for interpolation in evaluation.interpolations:
        frame = instance_table(gt, results, max_dets=evaluation.max_dets[interpolation], interpolation=interpolation)
        if "interpolation" not in frame.columns:
            frame.insert(0, "interpolation", interpolation)
        if absent:
            frame["absent"] = ""
            rows = pd.DataFrame({"method": list(absent), "interpolation": interpolation,
                                 "max_dets": evaluation.max_dets[interpolation], "absent": list(absent.values())})
            frame = pd.concat([frame, rows], ignore_index=True)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    write_csv(ctx.layout.instance_table, table)
    print(table.to_string(index=False))


def instance_per_image(ctx: Context, interpolation: int):
    """Per-image AP of every method (columns model, image, ap), images named by file stem."""
    import pandas as pd

    gt = _ground_truth(ctx)
    stems = {image["id"]: Path(image["file_name"]).stem for image in gt.get("images", [])}
    parts = []
    for method in _present(ctx)[0]:
        frame = pd.read_csv(ctx.layout.evaluation_per_image(method, interpolation))
        if "image" not in frame.columns:
            frame["image"] = frame["image_id"].map(stems)
        parts.append(pd.DataFrame({"model": method, "image": frame["image"].astype(str), "ap": frame["ap"]}))
    return pd.concat(parts, ignore_index=True)


def instance_stats_step(ctx: Context) -> None:
    from data.outputs import write_csv
    from stats import analyse

    interpolations = list(ctx.settings.instance.evaluation.interpolations)
    interpolation = PRIMARY_INTERPOLATION if PRIMARY_INTERPOLATION in interpolations else interpolations[0]
    frame = instance_per_image(ctx, interpolation)
    if frame["image"].nunique() < 3:
        raise RunError(f"instance statistics need at least 3 validation images, got {frame['image'].nunique()}; "
                       "raise instance.split.val_fraction or the number of images")
    ctx.layout.instance_stats.mkdir(parents=True, exist_ok=True)
    write_csv(ctx.layout.stats_table("instance", "per_image_ap"), frame.assign(interpolation=interpolation))
    absent = absent_methods(ctx.layout, instance_methods(ctx.settings.instance))
    notes = [f"{method}: absent, not in the tests ({reason})" for method, reason in absent.items()]
    result = analyse(frame, ["ap"], ctx.layout.instance_stats, posthoc=ctx.settings.stats.posthoc, overwrite=True,
                     notes=notes)
    print(f"per-image AP ({interpolation}):")
    print(result["tests"].to_string(index=False))


def instance_figures_step(ctx: Context) -> None:
    from torch_instseg.plots import instance_figure

    i = ctx.settings.instance
    names = ctx.split("instance")["val"][: i.figure_images]
    results = {method: ctx.layout.prediction(method) for method in _present(ctx)[0]}
    instance_figure(ctx.samples("instance", names), _ground_truth(ctx), results, ctx.layout.figure_stem(INSTANCE_FIGURE),
                    n_images=i.figure_images)
    print(f"instance figure -> {ctx.layout.figures}")


# ---------------------------------------------------------------- report

def report_step(ctx: Context) -> None:
    from .report import write_report

    path = write_report(ctx.layout.root)
    print(f"report -> {path}")

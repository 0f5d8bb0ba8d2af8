"""The actions of the run's steps: each calls the pieces' Python functions and writes the layout's files.

``mscseg.run`` decides which step runs and captures its output; an action only does the work.
The pieces (keras_semseg, torch_instseg, stats) are imported inside each action.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .errors import RunError
from .run import Context

PRIMARY_INTERPOLATION = 11


def _studies(ctx: Context) -> list[str]:
    return [name for name in ("semantic", "instance") if getattr(ctx.settings, name).enabled]


# ---------------------------------------------------------------- data and split

def data_step(ctx: Context) -> None:
    """Write the synthetic datasets (if any), then read every study's dataset once and summarise it."""
    from data.outputs import write_csv
    from data.summary import summarize
    from data.synthetic import write_dataset

    for study in _studies(ctx):
        spec = getattr(ctx.settings, study).dataset
        if spec.synthetic is not None:
            s = spec.synthetic
            density: str | float = s.density
            if isinstance(density, str) and density not in ("sparse", "medium", "dense"):
                density = float(density)
            folder = ctx.layout.data / study
            print(f"{study}: writing {s.n_images} synthetic images ({s.size} px, {s.density}) to {folder}")
            write_dataset(folder, n_images=s.n_images, size=s.size, density=density, seed=s.seed, overwrite=True)
        dataset = ctx.dataset(study)
        print(f"{study}: {len(dataset)} images from {dataset.root} ({dataset.format})")
        frame = summarize(dataset)
        write_csv(ctx.layout.data / f"summary_{study}.csv", frame)
        print(f"{study}: {int(frame['n_cells'].sum())} cells, {frame['n_cells'].mean():.1f} per image")


def split_step(ctx: Context) -> None:
    """``split.json`` (semantic) and ``instance/split.json``: train/validation names, reused by every later step."""
    from data.split import load_or_make_split

    for study in _studies(ctx):
        config = getattr(ctx.settings, study)
        path = ctx.layout.split_json(study)
        split = load_or_make_split(path, ctx.dataset(study).names, config.split.val_fraction, config.split.seed,
                                   source=config.dataset.label)
        print(f"{study}: {len(split['train'])} train, {len(split['val'])} validation images -> {path}")


# ---------------------------------------------------------------- semantic study

def semantic_train_step(ctx: Context, model: str) -> None:
    from keras_semseg.train import train_model

    s = ctx.settings.semantic
    result = train_model(
        model, ctx.dataset("semantic"), ctx.split("semantic"), ctx.layout.semantic_model(model),
        image_size=s.image_size, epochs=s.epochs, batch_size=s.batch_size, encoder_weights=s.encoder_weights,
        augment=s.augment, resume=ctx.resume, overwrite=ctx.overwrite, quiet=True,
        mixed_precision=s.mixed_precision, seed=s.seed, split_path=str(ctx.layout.split_json("semantic")),
        model_options=dict(s.model_options.get(model, {})),
    )
    print(f"{model}: {result}")


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

    names = write_validation_masks(ctx, "semantic", ctx.layout.semantic_masks)
    print(f"{len(names)} validation masks -> {ctx.layout.semantic_masks}")
    for model in ctx.settings.semantic.models:
        tables = run_sweep(ctx.layout.semantic_model(model) / "probs", ctx.layout.semantic_masks, model,
                           ctx.layout.sweep, overwrite=ctx.overwrite, images=names)
        row = tables["table1"][tables["table1"]["model"] == model].iloc[0]
        print(f"{model}: Dice {row['dice_mean']:.3f} at threshold {row['threshold']:.2f}")


def semantic_stats_step(ctx: Context) -> None:
    from stats import analyse

    per_image = pd.read_csv(ctx.layout.sweep / "per_image.csv", dtype={"model": str, "image": str})
    result = analyse(per_image, list(ctx.settings.semantic.metrics), ctx.layout.semantic_stats,
                     posthoc=ctx.settings.stats.posthoc, at_optimal=ctx.layout.sweep / "optimal.csv",
                     overwrite=ctx.overwrite)
    print(result["tests"].to_string(index=False))


def semantic_figures_step(ctx: Context) -> None:
    from keras_semseg.plots import figure1, figure2, figure4
    from stats.plots import figure3

    s, layout = ctx.settings.semantic, ctx.layout
    figures = layout.figures
    figure1({m: layout.semantic_model(m) / "history.csv" for m in s.models}, figures / "fig1", overwrite=ctx.overwrite)
    figure2(layout.sweep / "summary.csv", layout.sweep / "optimal.csv", figures / "fig2", overwrite=ctx.overwrite)
    figure3(layout.semantic_stats / "values.csv", layout.semantic_stats, list(s.metrics), figures / "fig3",
            test=ctx.settings.stats.posthoc, overwrite=ctx.overwrite)
    names = ctx.split("semantic")["val"][: s.figure_images]
    figure4(ctx.samples("semantic", names), {m: layout.semantic_model(m) / "probs" for m in s.models},
            layout.sweep / "table1.csv", figures / "fig4", n_images=s.figure_images, overwrite=ctx.overwrite)
    print(f"figures 1-4 -> {figures}")


# ---------------------------------------------------------------- instance study

def instance_train_step(ctx: Context) -> None:
    from torch_instseg.maskrcnn import train_maskrcnn

    i = ctx.settings.instance
    result = train_maskrcnn(
        ctx.dataset("instance"), ctx.split("instance"), ctx.layout.maskrcnn,
        image_size=i.image_size, epochs=i.epochs, batch_size=i.batch_size, lr=i.lr, weight_decay=i.weight_decay,
        weights=i.weights, detections_per_image=i.detections_per_image, resume=ctx.resume, overwrite=ctx.overwrite,
        device=_device(i.device), seed=i.seed, quiet=True, split_path=str(ctx.layout.split_json("instance")),
    )
    print(f"maskrcnn: {result}")


def _device(device: str) -> str | None:
    """The config's device for torch (None = the pieces' own choice: CUDA when present)."""
    return None if device == "auto" else device


def _ground_truth(ctx: Context) -> dict:
    import json

    return json.loads(ctx.layout.prediction("gt").read_text())


def instance_predict_step(ctx: Context) -> None:
    from torch_instseg.coco import dataset_to_coco, write_coco
    from torch_instseg.maskrcnn import predict_to_coco

    names = ctx.split("instance")["val"]
    gt = dataset_to_coco(ctx.samples("instance", names))
    write_coco(ctx.layout.prediction("gt"), gt)
    i = ctx.settings.instance
    predict_to_coco(ctx.layout.maskrcnn, ctx.dataset("instance"), names, gt, ctx.layout.prediction("maskrcnn"),
                    device=_device(i.device), overwrite=ctx.overwrite)
    print(f"{len(names)} validation images: gt.json, maskrcnn.json -> {ctx.layout.predictions}")


def instance_sam_step(ctx: Context) -> None:
    from torch_instseg.sam import run_sam

    sam = ctx.settings.instance.sam
    names = ctx.split("instance")["val"]
    run_sam(ctx.dataset("instance"), names, ctx.layout.prediction("maskrcnn"), _ground_truth(ctx), ctx.layout.predictions,
            variant=sam.variant, checkpoint=sam_checkpoint(sam.checkpoint), modes=tuple(sam.modes), score=sam.score,
            device=_device(ctx.settings.instance.device), overwrite=ctx.overwrite)
    print(f"SAM {sam.variant} ({', '.join(sam.modes)}) -> {ctx.layout.predictions}")


def sam_checkpoint(configured: str | None) -> str | None:
    """The config's checkpoint as torch_instseg.sam takes it: none -> "none" (random), default -> None (its default folder)."""
    if configured is None:
        return "none"
    return None if configured == "default" else configured


def instance_methods(ctx: Context) -> list[str]:
    return ["maskrcnn"] + [f"sam_{mode}" for mode in ctx.settings.instance.sam.modes]


def instance_eval_step(ctx: Context) -> None:
    from torch_instseg.evaluate import run_evaluation

    evaluation = ctx.settings.instance.evaluation
    for method in instance_methods(ctx):
        for interpolation in evaluation.interpolations:
            out = ctx.layout.evaluation(method, interpolation)
            run_evaluation(ctx.layout.prediction("gt"), ctx.layout.prediction(method), out, interpolation=interpolation,
                           max_dets=evaluation.max_dets[interpolation], overwrite=ctx.overwrite)
            print(f"{method} / {interpolation} -> {out}")


def instance_table_step(ctx: Context) -> None:
    from data.outputs import write_csv
    from torch_instseg.evaluate import instance_table

    evaluation = ctx.settings.instance.evaluation
    gt = _ground_truth(ctx)
    results = {method: ctx.layout.prediction(method) for method in instance_methods(ctx)}
    frames = []
    for interpolation in evaluation.interpolations:
        frame = instance_table(gt, results, max_dets=evaluation.max_dets[interpolation], interpolation=interpolation)
        if "interpolation" not in frame.columns:
            frame.insert(0, "interpolation", interpolation)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    write_csv(ctx.layout.instance_table, table)
    print(table.to_string(index=False))


def instance_per_image(ctx: Context, interpolation: str) -> pd.DataFrame:
    """Per-image AP of every method (columns model, image, ap), images named by file stem."""
    gt = _ground_truth(ctx)
    stems = {image["id"]: Path(image["file_name"]).stem for image in gt.get("images", [])}
    parts = []
    for method in instance_methods(ctx):
        path = ctx.layout.evaluation(method, interpolation) / "per_image.csv"
        frame = pd.read_csv(path)
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
    write_csv(ctx.layout.instance_stats / "per_image_ap.csv", frame.assign(interpolation=interpolation))
    result = analyse(frame, ["ap"], ctx.layout.instance_stats, posthoc=ctx.settings.stats.posthoc, overwrite=True)
    print(f"per-image AP ({interpolation}):")
    print(result["tests"].to_string(index=False))


def instance_figures_step(ctx: Context) -> None:
    from torch_instseg.plots import instance_figure

    i = ctx.settings.instance
    names = ctx.split("instance")["val"][: i.figure_images]
    results = {method: ctx.layout.prediction(method) for method in instance_methods(ctx)}
    instance_figure(ctx.samples("instance", names), _ground_truth(ctx), results, ctx.layout.figures / "instance",
                    n_images=i.figure_images)
    print(f"instance figure -> {ctx.layout.figures}")


# ---------------------------------------------------------------- report

def report_step(ctx: Context) -> None:
    from .report import write_report

    path = write_report(ctx.layout.root)
    print(f"report -> {path}")

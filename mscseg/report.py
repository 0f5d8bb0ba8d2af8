"""One self-contained ``report.html`` of a results folder, made only from the files the steps wrote.

Figures are embedded as base64 PNG, so the file can be mailed or opened anywhere; the
CSV links are relative to the results folder. Parts that have not run yet are named as
missing. ``python -m mscseg.report RESULTS_DIR`` remakes it without rerunning anything.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from data.cli import make_parser, run_cli
from keras_semseg.registry import MODEL_LABELS
from keras_semseg.sweep import METRIC_LABELS as SWEEP_METRIC_LABELS, METRIC_SHORT
from torch_instseg.names import METHOD_LABELS, sam_method

from .errors import RunError
if TYPE_CHECKING:
    from data.run_record import RunRecord

from .layout import INSTANCE_FIGURE, SEMANTIC_FIGURES, STUDIES, Layout

PEER_LABELS = {"cellpose": "Cellpose", "stardist": "StarDist"}
PEER_GROUP, PAPER_GROUP = "peers", "the papers' methods"
MASKRCNN_SCORE = "Mask R-CNN's class confidence of the detection (torchvision box score)"

PUBLISHED_DIR = Path(__file__).resolve().parent / "published"
METRIC_LABELS = {**SWEEP_METRIC_LABELS, "ap": "AP"}
FIGURES = (
    (SEMANTIC_FIGURES[0], "Figure 1 (semantic)", "Loss and pixel accuracy per epoch, training and validation, per model."),
    (SEMANTIC_FIGURES[1], "Figure 2 (semantic)", "Mean metric over the validation images against the threshold (band: +-1 sd); optimum marked."),
    (SEMANTIC_FIGURES[2], "Figure 3 (semantic)", "Per-image scores at each model's optimal threshold with post hoc significance brackets."),
    (SEMANTIC_FIGURES[3], "Figure 4 (semantic)", "Validation images, ground truth, and each model's mask at its Dice-optimal threshold."),
    (INSTANCE_FIGURE, "Instance figure", "Micrograph, ground truth, Mask R-CNN and SAM masks per validation image."),
)

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px;background:#fff;min-height:100vh}
h1{margin:0 0 4px;font-size:28px} h2{margin-top:40px;border-bottom:2px solid #dde3ea;padding-bottom:4px}
h3{margin-top:26px;color:#33415c} .muted{color:#66707f;font-size:13px}
.banner{background:#fff4d6;border:2px solid #e0a800;border-radius:6px;padding:12px 16px;margin:16px 0;font-size:15px}
.banner b{color:#8a5a00} .ok{color:#1b7a35} .bad{color:#b3261e}
table{border-collapse:collapse;margin:10px 0 18px;font-size:13px}
th,td{border:1px solid #d5dbe3;padding:4px 8px;text-align:right} th{background:#eef2f7}
td:first-child,th:first-child{text-align:left} tr:nth-child(even) td{background:#fafbfc}
figure{margin:14px 0 28px} figure img{max-width:100%;border:1px solid #dde3ea}
figcaption{font-size:13px;color:#4a5568;margin-top:4px}
pre{background:#f3f5f8;padding:10px;overflow-x:auto;font-size:12px;border-radius:4px}
.cols{display:flex;gap:28px;flex-wrap:wrap;align-items:flex-start} nav a{margin-right:14px}
"""


# ---------------------------------------------------------------- small helpers

def _e(text: Any) -> str:
    return html.escape(str(text))


def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        return None


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _format(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        if value != value:
            return "n/a"
        if abs(value) >= 1000 or value == int(value) and abs(value) >= 100:
            return f"{value:.0f}"
        if value != 0 and abs(value) < 10 ** -digits:
            return f"{value:.1e}"
        return f"{value:.{digits}f}"
    return str(value)


def table_html(frame: pd.DataFrame, digits: int = 3, labels: dict[str, str] | None = None) -> str:
    """A DataFrame as an HTML table (no index), floats rounded to ``digits``."""
    labels = labels or {}
    head = "".join(f"<th>{_e(labels.get(str(c), c))}</th>" for c in frame.columns)
    rows = []
    text_columns = [not pd.api.types.is_numeric_dtype(frame[c]) or bool(frame[c].isna().all()) for c in frame.columns]
    for record in frame.itertuples(index=False):
        cells = ["" if is_text and isinstance(v, float) and v != v else _format(v, digits) for v, is_text in zip(record, text_columns)]
        rows.append("<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _missing(what: str) -> str:
    return f'<p class="muted">{_e(what)}: not produced yet (the step has not run or is not available).</p>'


def image_html(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _mean_sd(mean: Any, sd: Any) -> str:
    try:
        return f"{float(mean):.3f} ± {float(sd):.3f}"
    except (TypeError, ValueError):
        return "n/a"


# ---------------------------------------------------------------- sections

def _banner(settings: dict) -> str:
    parts = []
    semantic, instance = settings.get("semantic", {}), settings.get("instance", {})
    if semantic.get("enabled", True) and semantic.get("encoder_weights") in (None, "none"):
        parts.append("the semantic models start from random weights (no ImageNet encoders)")
    if instance.get("enabled", True) and instance.get("weights") in (None, "none"):
        parts.append("Mask R-CNN starts from random weights (no COCO weights)")
    sam = instance.get("sam", {})
    if instance.get("enabled", True) and sam.get("checkpoint") in (None, "none"):
        parts.append(f"the zero-shot SAM ({_e(sam.get('variant', '?'))}) has random, untrained weights")
    finetune = instance.get("sam_finetune", {})
    if instance.get("enabled", True) and finetune.get("enabled") and finetune.get("checkpoint") in (None, "none"):
        parts.append(f"the fine-tuned SAM ({_e(finetune.get('variant', '?'))}) started from random weights and only its "
                     "decoder learned, on random image features")
    random_peers = [PEER_LABELS.get(name, name) for name, peer in (instance.get("peers") or {}).items()
                    if instance.get("enabled", True) and peer.get("enabled") and str(peer.get("weights")).lower() in ("none", "null", "")]
    if random_peers:
        parts.append(f"{' and '.join(random_peers)} {'start' if len(random_peers) > 1 else 'starts'} from random weights "
                     "(no released model)")
    synthetic = [name for name, study in (("semantic", semantic), ("instance", instance))
                 if study.get("enabled", True) and (study.get("dataset") or {}).get("synthetic")]
    if synthetic:
        parts.append(f"the {' and '.join(synthetic)} data are synthetic images made by the project")
    if not parts:
        return ""
    if not synthetic:
        return (
            '<div class="banner" id="random-weights-banner"><b>Real micrographs, networks from random weights.</b> In this run '
            + "; ".join(parts)
            + ". Every network learned these images from scratch, under the training budget in the settings below: the "
            "tables compare the methods on equal terms, not the papers' pretrained models (configs/paper.yaml).</div>"
        )
    return (
        '<div class="banner" id="demo-banner"><b>Demonstration run, not a reproduction.</b> In this run '
        + "; ".join(parts)
        + ". The numbers below show that every step works and how far each network gets on these images in a few "
        "minutes of training; they say nothing about how the models perform on real micrographs. Compare with the "
        "papers only after a run with configs/paper.yaml.</div>"
    )


def _status_section(layout: Layout, steps: list[str]) -> str:
    root = layout.root
    if not steps:
        steps = [p.stem for p in sorted(layout.stamps.glob("*.json"))]
    if not steps:
        return _missing("step status")
    rows = []
    for name in steps:
        stamp = _read_json(layout.stamp(name)) or {}
        status = stamp.get("status", "not run")
        if name == "report":
            status = "this page"
        css = "ok" if status in ("done", "this page") else "bad"
        log = stamp.get("log", "")
        wall = stamp.get("wall_s")
        when = _seconds(float(wall)) if wall is not None else ""
        link = f"<a href='{_e(log)}'>{_e(log)}</a>" if log and (root / log).is_file() else ""
        rows.append(
            f"<tr><td>{_e(name)}</td><td class='{css}'>{_e(status)}</td><td>{_e(when)}</td>"
            f"<td>{_e(stamp.get('finished', ''))}</td><td>{link}</td></tr>"
        )
    return ("<table><thead><tr><th>step</th><th>status</th><th>wall time</th><th>finished</th><th>log</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _seconds(value: float) -> str:
    if value < 0.1:
        return "< 0.1 s"
    if value < 120:
        return f"{value:.1f} s"
    minutes, seconds = divmod(int(round(value)), 60)
    return f"{minutes} min {seconds:02d} s"


def _settings_section(config: dict) -> str:
    settings = config.get("settings", {})
    versions = config.get("versions", {})
    try:
        import yaml

        text = yaml.safe_dump(settings, sort_keys=False, default_flow_style=False)
    except Exception:  # noqa: BLE001 - fall back to JSON when YAML is unavailable
        text = json.dumps(settings, indent=2)
    version_table = table_html(pd.DataFrame({"library": list(versions), "version": list(versions.values())}))
    command = " ".join(config.get("command", []))
    return (f"<h3>Library versions</h3>{version_table}<h3>Command</h3><pre>{_e(command)}</pre>"
            f"<h3>Settings (config.json)</h3><pre>{_e(text)}</pre>")


def _data_section(layout: Layout) -> str:
    parts = []
    for study in STUDIES:
        frame = _read_csv(layout.data_summary(study))
        split = _read_json(layout.split_json(study))
        if frame is None:
            continue
        sizes = sorted({f"{w}x{h}" for w, h in zip(frame["width"], frame["height"])})
        line = (f"<b>{study}</b>: {len(frame)} images ({', '.join(sizes[:4])}{' ...' if len(sizes) > 4 else ''} px), "
                f"{frame['n_cells'].mean():.1f} cells per image (min {frame['n_cells'].min()}, max {frame['n_cells'].max()}), "
                f"cell area fraction {frame['cell_fraction'].mean():.3f}")
        if split:
            line += f"; split: {len(split.get('train', []))} train / {len(split.get('val', []))} validation (seed {split.get('seed')})"
        if split and split.get("source"):
            line += f"; source: {_e(split['source'])}"
        parts.append(f"<p>{line}</p>")
    return "".join(parts) or _missing("data summary")


def table1_comparison(ours: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Table 1 of this run beside the paper's: one row per model, 'mean ± sd' per metric and source."""
    rows = []
    models = list(dict.fromkeys(list(ours["model"]) + [m for m in published["model"] if m in set(ours["model"])]))
    for model in models:
        row: dict[str, Any] = {"model": MODEL_LABELS.get(model, model)}
        mine = ours[ours["model"] == model]
        paper = published[published["model"] == model]
        for metric, short in METRIC_SHORT.items():
            row[f"{short} (this run)"] = _mean_sd(mine[f"{metric}_mean"].iloc[0], mine[f"{metric}_std"].iloc[0]) if len(mine) else "n/a"
            row[f"{short} (paper)"] = _mean_sd(paper[f"{metric}_mean"].iloc[0], paper[f"{metric}_std"].iloc[0]) if len(paper) else "n/a"
        row["threshold (this run)"] = f"{float(mine['threshold'].iloc[0]):.2f}" if len(mine) else "n/a"
        row["threshold (paper)"] = f"{float(paper['threshold'].iloc[0]):.2f}" if len(paper) else "n/a"
        rows.append(row)
    return pd.DataFrame(rows)


def _read_run(run_dir: Path) -> RunRecord | None:
    """The run record of a training run folder (None when missing or unreadable)."""
    from data.errors import MscsegError
    from data.run_record import read_record

    try:
        return read_record(run_dir)
    except MscsegError:
        return None


def _training_times(layout: Layout, models: list[str]) -> pd.DataFrame | None:
    published = _read_csv(PUBLISHED_DIR / "training_time.csv")
    rows = []
    for model in models:
        run = _read_run(layout.semantic_model(model))
        if run is None:
            continue
        paper = published[published["model"] == model] if published is not None else None
        rows.append({
            "model": MODEL_LABELS.get(model, model),
            "epochs (this run)": run.epochs_done,
            "wall time s (this run)": run.wall_time_s,
            "s per epoch (this run)": run.epoch_time_s_mean if run.epoch_time_s_mean is not None else "n/a",
            "status": run.status,
            "epochs (paper)": int(paper["epochs"].iloc[0]) if paper is not None and len(paper) else "n/a",
            "wall time s (paper, T4)": int(paper["wall_s"].iloc[0]) if paper is not None and len(paper) else "n/a",
        })
    return pd.DataFrame(rows) if rows else None


def _instance_training(layout: Layout, peer_names: Sequence[str] = ()) -> pd.DataFrame | None:
    rows = []
    runs = [("Mask R-CNN (torchvision)", layout.maskrcnn), ("SAM fine-tuned", layout.sam_finetune)]
    runs += [(PEER_LABELS.get(name, name), layout.peer_run(name)) for name in peer_names]
    for label, run_dir in runs:
        run = _read_run(run_dir)
        if run is None:
            continue
        cpu = run.details.get("cpu_time_s")
        rows.append({
            "model": label, "epochs": run.epochs_done, "best epoch": run.best_epoch, "wall time s": run.wall_time_s,
            "CPU time s": cpu if cpu is not None else "n/a",
            "s per epoch": run.epoch_time_s_mean if run.epoch_time_s_mean is not None else "n/a", "status": run.status,
            "weights": run.settings.get("weights", run.details.get("weights_source", "?")),
            "device": run.details.get("device", "?"),
        })
    return pd.DataFrame(rows) if rows else None


def _versions_text(versions: Any) -> str:
    if isinstance(versions, dict):
        return ", ".join(f"{name} {version}" for name, version in versions.items())
    return str(versions) if versions else "versions not recorded"


def peer_label(layout: Layout, name: str) -> str:
    """A peer's row name: the tool, its package versions and what its weights started from (the results' sidecar,
    else its run.json)."""
    meta = _read_json(layout.prediction_meta(name)) or {}
    run = _read_run(layout.peer_run(name))
    if not meta and run is None:
        return PEER_LABELS.get(name, name)
    versions = meta.get("versions") or (run.details.get("versions") if run else None)
    weights = meta.get("weights") or (run.settings.get("weights") if run else None)
    start = "random weights" if str(weights).lower().startswith(("none", "null", "random")) or not weights else str(weights)
    return f"{PEER_LABELS.get(name, name)} ({_versions_text(versions)}; from {start})"


def _method_label(layout: Layout, method: str, peer_names: Sequence[str]) -> str:
    return peer_label(layout, method) if method in peer_names else METHOD_LABELS.get(method, method)


def score_sources(layout: Layout, methods: Sequence[str], peer_names: Sequence[str]) -> dict[str, str]:
    """How each method's detection score is made: the results' sidecar (``score_source``), else Mask R-CNN's box score."""
    found = {}
    for method in methods:
        meta = _read_json(layout.prediction_meta(method)) or {}
        text = meta.get("score_source_meaning") or meta.get("score_source")
        if text is None and method in peer_names:
            text = "absent (no results)"
        found[method] = str(text) if text else MASKRCNN_SCORE
    return found


def _peer_names(settings: dict) -> list[str]:
    peers = (settings.get("instance") or {}).get("peers") or {}
    return [name for name, section in peers.items() if isinstance(section, dict) and section.get("enabled")]


def _semantic_section(layout: Layout, models: list[str]) -> str:
    parts = []
    ours = _read_csv(layout.sweep_table("table1"))
    published = _read_csv(PUBLISHED_DIR / "table1.csv")
    parts.append("<h3>Table 1: mean ± sd over the validation images at each model's Dice-optimal threshold</h3>")
    if ours is not None and published is not None:
        parts.append(table_html(table1_comparison(ours, published)))
        parts.append('<p class="muted">Paper: 64 validation images of human MSC micrographs (Solopov et al. 2025, Table 1).</p>')
    else:
        parts.append(_missing(f"Table 1 ({layout.sweep_table('table1').relative_to(layout.root).as_posix()})"))
    optimal = _read_csv(layout.sweep_table("optimal"))
    paper_optimal = _read_csv(PUBLISHED_DIR / "optimal_thresholds.csv")
    if optimal is not None:
        merged = optimal.rename(columns={"threshold": "threshold (this run)", "mean": "mean at threshold", "std": "sd"})
        if paper_optimal is not None:
            merged = merged.merge(paper_optimal[["model", "metric", "threshold"]].rename(columns={"threshold": "threshold (paper)"}),
                                  on=["model", "metric"], how="left")
        merged["model"] = merged["model"].map(lambda m: MODEL_LABELS.get(m, m))
        parts.append("<h3>Optimal thresholds per model and metric</h3>" + table_html(merged))
    times = _training_times(layout, models)
    if times is not None:
        parts.append("<h3>Training time</h3>" + table_html(times, 1))
    parts.append("<h3>Statistics</h3>" + _stats_html(layout, "semantic"))
    return "".join(parts)


def _model_label(name: str) -> str:
    return MODEL_LABELS.get(name, METHOD_LABELS.get(name, PEER_LABELS.get(name, name)))


def _stats_html(layout: Layout, study: str) -> str:
    folder = layout.stats(study)
    tests = _read_csv(layout.stats_table(study, "tests"))
    if tests is None:
        return _missing(f"statistics ({folder.relative_to(layout.root).as_posix()})")
    parts = ["<p>Omnibus tests (Shapiro-Wilk per model, Levene, Friedman):</p>", table_html(tests, 4)]
    summary = _read_csv(layout.stats_table(study, "summary"))
    if summary is not None:
        parts.append("<p>Per-model summary of the paired scores:</p>" + table_html(summary, 4))
    matrices = sorted(p for p in folder.glob("*_*.csv") if p.stem.split("_", 1)[0] in ("dunn", "conover", "wilcoxon"))
    if matrices:
        parts.append("<p>Post hoc p-value matrices (adjusted):</p><div class='cols'>")
        for path in matrices:
            frame = _read_csv(path)
            if frame is None:
                continue
            test, metric = path.stem.split("_", 1)
            frame = frame.rename(columns=_model_label)
            if "model" in frame.columns:
                frame["model"] = frame["model"].map(_model_label)
            parts.append(f"<div><b>{_e(test)}</b>, {_e(METRIC_LABELS.get(metric, metric))}{table_html(frame, 4)}</div>")
        parts.append("</div>")
    notes = layout.stats_notes(study)
    if notes.is_file():
        parts.append(f"<details><summary>Notes on the tests</summary><pre>{_e(notes.read_text())}</pre></details>")
    return "".join(parts)


def _cap_notes(layout: Layout) -> list[str]:
    """One visible line per evaluation whose summary.json says the max_dets cap left detections out."""
    notes = []
    for path in sorted(layout.evaluations.glob("*/*/summary.json")):
        summary = _read_json(path) or {}
        if summary.get("n_pred_dropped_by_cap"):
            notes.append(f'<p class="warning">{_e(path.parent.parent.name)}, {_e(summary.get("interpolation"))}-point: the cap of '
                         f'{_e(summary.get("max_dets"))} detections per image left out {_e(summary["n_pred_dropped_by_cap"])} of '
                         f'{_e(summary.get("n_pred"))} detections in {_e(summary.get("n_images_capped"))} images (not scored).</p>')
    return notes


def instance_table_shown(layout: Layout, table: pd.DataFrame, peer_names: Sequence[str]) -> pd.DataFrame:
    """The instance table as the report shows it: a ``group`` column (the papers' methods, then the peers), each
    peer named with its versions and starting weights, an absent method marked in its ``absent`` column."""
    shown = table.copy()
    if "method" not in shown.columns:
        return shown
    methods = list(shown["method"])
    shown.insert(0, "group", [PEER_GROUP if m in peer_names else PAPER_GROUP for m in methods])
    shown["method"] = [_method_label(layout, m, peer_names) for m in methods]
    if "absent" in shown.columns:
        shown["absent"] = shown["absent"].map(lambda why: "" if why != why or why == "" else f"absent: {why}")
    interpolations = list(shown["interpolation"]) if "interpolation" in shown.columns else [0] * len(shown)
    order = sorted(range(len(shown)), key=lambda k: (interpolations[k], shown["group"].iloc[k] == PEER_GROUP, k))
    return shown.iloc[order].reset_index(drop=True)


def _instance_section(layout: Layout, peer_names: Sequence[str] = ()) -> str:
    parts = ["<h3>Instance table: this run</h3>"]
    ours = _read_csv(layout.instance_table)
    if ours is not None:
        shown = instance_table_shown(layout, ours, peer_names)
        if "interpolation" in shown.columns:
            shown["interpolation"] = shown["interpolation"].map(lambda v: f"{v}-point")
        parts.append(table_html(shown))
        parts.append('<p class="muted">mAP over IoU 0.50:0.05:0.95; 11-point = the paper\'s interpolation, '
                     "101-point = pycocotools. max_dets = detections kept per image. Every row is scored by this "
                     "project's one matcher on the same validation images with the same detection cap"
                     + ("; the peers were trained on the same training images" if peer_names else "") + ".</p>")
        methods = list(dict.fromkeys(ours["method"])) if "method" in ours.columns else []
        sources = score_sources(layout, methods, peer_names)
        items = "".join(f"<li><b>{_e(_method_label(layout, m, peer_names))}</b>: {_e(sources[m])}</li>" for m in methods)
        parts.append(f"<p>How each method's detection score (which ranks its detections for AP) is made:</p><ul>{items}</ul>")
    else:
        parts.append(_missing(f"instance table ({layout.instance_table.relative_to(layout.root).as_posix()})"))
    parts += _cap_notes(layout)
    published = _read_csv(PUBLISHED_DIR / "instance_table.csv")
    if published is not None:
        shown = published.drop(columns=["source"]).copy()
        shown["method"] = shown["method"].map(lambda m: {"sam": METHOD_LABELS[sam_method("box")]}.get(m, METHOD_LABELS.get(m, m)))
        parts.append("<h3>Instance table: the paper</h3>" + table_html(shown))
    training = _instance_training(layout, peer_names)
    if training is not None:
        parts.append("<h3>Training</h3>" + table_html(training, 1))
    meta = _read_json(layout.prediction_meta("sam_box"))
    if meta:
        parts.append(f'<p class="muted">SAM: variant {_e(meta.get("variant"))}, checkpoint {_e(meta.get("checkpoint"))}, '
                     f'masks ranked by {_e(meta.get("score_source_meaning", meta.get("score_source")))}.</p>')
    parts.append("<h3>Statistics of per-image AP</h3>" + _stats_html(layout, "instance"))
    return "".join(parts)


def _absent_note(layout: Layout, peer_names: Sequence[str]) -> str:
    notes = []
    for name in peer_names:
        marker = _read_json(layout.prediction_absent(name))
        if marker and not layout.prediction(name).is_file():
            notes.append(f"{PEER_LABELS.get(name, name)} absent: {marker.get('reason', 'no reason recorded')}")
    return (" " + "; ".join(notes) + ".") if notes else ""


def _figures_section(layout: Layout, peer_names: Sequence[str] = ()) -> str:
    parts = []
    for stem, title, caption in FIGURES:
        if stem == INSTANCE_FIGURE and peer_names:
            caption = caption.replace("Mask R-CNN and SAM masks", "Mask R-CNN, SAM and peer masks") + _absent_note(layout, peer_names)
        path, pdf_path = layout.figure(stem, "png"), layout.figure(stem, "pdf")
        if path.is_file():
            pdf = f' <a href="{_e(pdf_path.relative_to(layout.root).as_posix())}">PDF</a>' if pdf_path.is_file() else ""
            parts.append(f"<figure id='{stem}'>{image_html(path, title)}<figcaption><b>{_e(title)}.</b> "
                         f"{_e(caption)}{pdf}</figcaption></figure>")
        else:
            parts.append(f"<h3>{_e(title)}</h3>" + _missing(path.relative_to(layout.root).as_posix()))
    return "".join(parts)


def csv_files(root: Path) -> list[Path]:
    """Every CSV in the results folder (not the synthetic data), relative to ``root``."""
    stamps = Layout(root).stamps.name
    return sorted(p.relative_to(root) for p in root.rglob("*.csv")
                  if stamps not in p.parts and not p.name.endswith(".partial"))


def _files_section(root: Path) -> str:
    files = csv_files(root)
    if not files:
        return _missing("CSV files")
    items = "".join(f'<li><a href="{_e(p.as_posix())}">{_e(p.as_posix())}</a></li>' for p in files)
    return f"<ul>{items}</ul>"


# ---------------------------------------------------------------- the page

def render_report(root: str | Path) -> str:
    """The report's HTML text for the results folder ``root``."""
    layout = Layout(Path(root))
    root = layout.root
    config = _read_json(layout.config_json)
    if config is None:
        raise RunError("not found; this is not a results folder of mscseg-run", layout.config_json)
    settings = config.get("settings", {})
    name = settings.get("name", root.name)
    written = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    semantic_on = settings.get("semantic", {}).get("enabled", True)
    instance_on = settings.get("instance", {}).get("enabled", True)
    peer_names = _peer_names(settings) if instance_on else []
    sections = [
        ("status", "Steps", _status_section(layout, list(config.get("steps", [])))),
        ("data", "Data", _data_section(layout)),
    ]
    if semantic_on:
        sections.append(("semantic", "Study A: semantic segmentation (4 models)", _semantic_section(layout, list(settings.get("semantic", {}).get("models", [])))))
    if instance_on:
        title = "Study B: instance segmentation (Mask R-CNN vs SAM" + (", and the peers " + " and ".join(
            PEER_LABELS.get(name, name) for name in peer_names) if peer_names else "") + ")"
        sections.append(("instance", title, _instance_section(layout, peer_names)))
    sections += [
        ("figures", "Figures", _figures_section(layout, peer_names)),
        ("files", "Result files (CSV)", _files_section(root)),
        ("settings", "Settings and versions", _settings_section(config)),
    ]
    nav = "".join(f'<a href="#{key}">{_e(title.split(":")[0])}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{_e(title)}</h2>{content}</section>' for key, title, content in sections)
    description = settings.get("description", "")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>mscseg report: {_e(name)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>mscseg report: {_e(name)}</h1>"
        f"<p class='muted'>Results folder {_e(root.resolve())}; report written {_e(written)}.</p>"
        f"<p>{_e(description)}</p>{_banner(settings)}<nav>{nav}</nav>{body}</main></body></html>"
    )


def write_report(root: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.html`` (or ``out``) for the results folder ``root``; returns its path."""
    from data.outputs import atomic_write_text

    root = Path(root)
    path = Path(out) if out is not None else Layout(root).report
    return atomic_write_text(path, render_report(root))


def _main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("python -m mscseg.report", description="Remake report.html of a results folder from its files.")
    parser.add_argument("results", type=Path, help="results folder (holds config.json)")
    parser.add_argument("--out", type=Path, help="where to write (default RESULTS/report.html)")
    args = parser.parse_args(argv)
    path = write_report(args.results, args.out)
    print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m stats PER_IMAGE.csv --metrics dice jaccard --out DIR`` (also ``mscseg-stats``).

Writes tests.csv, summary.csv, values.csv, notes.txt, dunn_/conover_/wilcoxon_/differences_<metric>.csv
and Figure 3 (fig3.png, fig3.pdf) into DIR. Bad input: one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from data.cli import make_parser, run_cli
from data.outputs import check_can_write, check_output_folder, staged_outputs

from .errors import StatsError
from .posthoc import POSTHOC_TESTS

FIGURE_STEM = "fig3"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "mscseg-stats",
        description="Friedman, Shapiro-Wilk, Levene and post hoc tests (Dunn-Bonferroni as in the paper; "
        "paired Conover-Friedman and Wilcoxon-Holm) on per-image scores of several models, and Figure 3.",
    )
    parser.add_argument("per_image", type=Path, help="tidy CSV: model, image, one column per metric [, threshold]")
    parser.add_argument("--metrics", nargs="+", default=None,
                        help="metric columns to analyse (default: every numeric column but threshold)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--at-optimal", type=Path, default=None, metavar="OPTIMAL.csv",
                        help="optimal thresholds (model,metric,threshold,...): keep each model's rows at its "
                        "optimal threshold per metric (needed when the CSV has several thresholds)")
    parser.add_argument("--posthoc", choices=list(POSTHOC_TESTS), default="dunn",
                        help="post hoc test that drives Figure 3 (default dunn, the paper's; all are written)")
    parser.add_argument("--dropna", action="store_true", help="drop NaN scores (reported) instead of failing")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--no-figure", action="store_true", help="skip Figure 3")
    parser.add_argument("--plot", choices=["box", "violin"], default="box", help="distribution style in Figure 3")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for the CIs (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    return parser


def _default_metrics(frame) -> list[str]:
    """Every column but model/method/image/threshold that holds numbers (a mixed column is a metric with bad cells)."""
    import pandas as pd

    skip = {"model", "method", "image", "threshold"}
    metrics = []
    for column in frame.columns:
        values = frame[column]
        if column in skip or pd.api.types.is_bool_dtype(values):
            continue
        if pd.api.types.is_numeric_dtype(values) or pd.to_numeric(values, errors="coerce").notna().any():
            metrics.append(str(column))
    if not metrics:
        raise StatsError("no numeric metric columns found; name them with --metrics")
    return metrics


def run(args: argparse.Namespace) -> list[str]:
    """Check every input and output, analyse and draw into a staging folder, then move all into --out."""
    from .analysis import analyse, output_files
    from .inputs import coerce_metrics, prepare, read_table
    from .plots import figure3

    if args.at_optimal is not None and not args.at_optimal.is_file():
        raise StatsError("optimal-threshold table not found", args.at_optimal)
    frame = read_table(args.per_image, "per-image table")
    metrics = args.metrics or _default_metrics(frame)
    frame, coerced = coerce_metrics(frame, metrics, args.dropna)
    paired = prepare(frame, metrics, at_optimal=args.at_optimal, dropna=args.dropna)
    out = check_output_folder(args.out)
    figure_names = [] if args.no_figure else [f"{FIGURE_STEM}{suffix}" for suffix in (".png", ".pdf")]
    for path in output_files(out, list(paired.tables)) + [out / name for name in figure_names]:
        check_can_write(path, args.overwrite)
    with staged_outputs(out) as stage:
        result = analyse(frame, metrics, stage, posthoc=args.posthoc, at_optimal=args.at_optimal,
                         dropna=args.dropna, n_boot=args.n_boot, seed=args.seed, overwrite=True, notes=coerced)
        if not args.no_figure:
            figure3(stage / "values.csv", stage, metrics, stage / FIGURE_STEM, test=args.posthoc,
                    kind=args.plot, overwrite=True)
    notes = result["notes"]
    lines = [line for line in notes[notes.index("Data:") + 1:] if line and "paired images x" not in line]
    friedman = result["tests"][result["tests"]["test"] == "friedman"]
    for row in friedman.itertuples():
        lines.append(f"{row.metric}: Friedman chi2 = {row.statistic:.4g}, p = {row.p_value:.3g} ({row.n} paired images)")
    if figure_names:
        lines.append(f"figure 3 ({args.posthoc}): {', '.join(str(out / name) for name in figure_names)}")
    lines.append(f"wrote {len(result['files']) + len(figure_names)} files to {out}")
    return lines


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        lines = run(args)
    except StatsError as error:
        if error.path is None:
            raise StatsError(error.problem, args.per_image) from None
        raise
    for line in lines:
        print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m stats PER_IMAGE.csv --metrics dice jaccard --out DIR`` (also ``mscseg-stats``).

Writes tests.csv, summary.csv, values.csv, notes.txt, dunn_/conover_/wilcoxon_/differences_<metric>.csv
and Figure 3 (fig3.png, fig3.pdf) into DIR. Bad input: one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.errors import DatasetError

from .errors import StatsError
from .posthoc import POSTHOC_TESTS

FIGURE_STEM = "fig3"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m stats",
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
    import pandas as pd

    skip = {"model", "method", "image", "threshold"}
    metrics = [str(c) for c in frame.columns
               if c not in skip and pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])]
    if not metrics:
        raise StatsError("no numeric metric columns found; name them with --metrics")
    return metrics


def run(args: argparse.Namespace) -> list[str]:
    """Analyse and draw; returns the lines to print."""
    from data.outputs import check_can_write

    from .analysis import analyse
    from .inputs import prepare, read_table
    from .plots import figure3

    frame = read_table(args.per_image, "per-image table")
    metrics = args.metrics or _default_metrics(frame)
    prepare(frame, metrics, at_optimal=args.at_optimal, dropna=args.dropna)
    figure_stem = args.out / FIGURE_STEM
    if not args.no_figure:
        for suffix in (".png", ".pdf"):
            check_can_write(figure_stem.with_name(figure_stem.name + suffix), args.overwrite)
    result = analyse(frame, metrics, args.out, posthoc=args.posthoc, at_optimal=args.at_optimal,
                     dropna=args.dropna, n_boot=args.n_boot, seed=args.seed, overwrite=args.overwrite)
    notes = result["notes"]
    lines = [line for line in notes[notes.index("Data:") + 1:] if line and "paired images x" not in line]
    friedman = result["tests"][result["tests"]["test"] == "friedman"]
    for row in friedman.itertuples():
        lines.append(f"{row.metric}: Friedman chi2 = {row.statistic:.4g}, p = {row.p_value:.3g} ({row.n} paired images)")
    if not args.no_figure:
        paths = figure3(args.out / "values.csv", args.out, metrics, figure_stem, test=args.posthoc,
                        kind=args.plot, overwrite=args.overwrite)
        lines.append(f"figure 3 ({args.posthoc}): {', '.join(str(p) for p in paths)}")
    lines.append(f"wrote {len(result['files'])} files to {args.out}")
    return lines


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        lines = run(args)
    except StatsError as error:
        path = error.path or str(args.per_image)
        print(f"error: {path}: {error.problem}", file=sys.stderr)
        return 2
    except DatasetError as error:
        print(f"error: {error.path or args.out}: {error.problem}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

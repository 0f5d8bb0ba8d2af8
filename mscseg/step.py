"""Run one step of a results folder in this process (``python -m mscseg.step NAME --out RESULTS``).

``mscseg.run`` starts this for each step that needs TensorFlow or torch, so that the two
frameworks never share a process and each model's memory is returned when its step ends.
The settings are the run's ``config.json``; the stamp is the runner's business. Exit status:
0 done, 2 bad input (one line ``error: ...``), 130 interrupted, 1 a crash (traceback).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from data.cli import run_cli

from .errors import RunError
from .layout import Layout


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mscseg.step", description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the step to run")
    parser.add_argument("--out", type=Path, required=True, help="results folder (holds config.json)")
    parser.add_argument("--steps", default="mscseg.steps:build_steps", help="module:function declaring the steps")
    parser.add_argument("--resume", action="store_true", help="continue a stopped run of the step")
    parser.add_argument("--overwrite", action="store_true", help="replace the step's previous outputs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .run import load_factory, settings_from_config_json

    args = build_parser().parse_args(argv)
    layout = Layout(args.out)
    settings = settings_from_config_json(layout.config_json)
    steps = {step.name: step for step in load_factory(args.steps)(settings)}
    if args.name not in steps:
        raise RunError(f"unknown step '{args.name}'; steps of this run: {', '.join(steps)}", layout.config_json)
    step = steps[args.name]
    step.action(step.context(settings, layout, resume=args.resume, overwrite=args.overwrite))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

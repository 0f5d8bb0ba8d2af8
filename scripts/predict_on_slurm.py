"""mscseg-predict on a SLURM cluster: dask-jobqueue submits the Dask workers as SLURM jobs.

    pip install dask-jobqueue "dask[distributed]"
    python scripts/predict_on_slurm.py --jobs 8 --queue gpu --cores 8 --memory 32GB --walltime 04:00:00 --gpus 1 \\
        -- --model results/paper/semantic/unet --images /shared/frames --out /shared/predictions --resume

Run it on the login node (or in a small job) from the environment mscseg is installed in: the
scheduler runs here, and each SLURM job starts one Dask worker with this same Python
(``sys.executable``), so the environment and the paths of ``--images``, ``--out`` and ``--model``
must be visible from the compute nodes (a shared file system). A worker takes one image at a
time (one Dask thread; the job's ``--cores`` are the framework's) and loads the model once.

Everything after ``--`` is passed to ``mscseg-predict`` as it is, with ``--scheduler`` added:
the same function, the same outputs, byte for byte, as ``mscseg-predict`` without a cluster.
With ``--resume``, a run stopped by the end of an allocation continues where it stopped when
the same command is run again. Tasks wait while the jobs are queued; ``squeue -u $USER`` shows them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.cli import make_parser, run_cli
from mscseg.errors import RunError

JOBQUEUE_MISSING = 'dask-jobqueue is not installed; install it with: pip install dask-jobqueue "dask[distributed]"'


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("predict_on_slurm.py", description="Run mscseg-predict on Dask workers submitted as SLURM jobs "
                         "(dask-jobqueue); arguments after -- go to mscseg-predict.")
    parser.add_argument("--jobs", type=int, default=2, help="SLURM jobs, one Dask worker each (default 2)")
    parser.add_argument("--queue", help="SLURM partition (sbatch -p)")
    parser.add_argument("--account", help="SLURM account (sbatch -A)")
    parser.add_argument("--cores", type=int, default=4, help="CPU cores per job (default 4)")
    parser.add_argument("--memory", default="16GB", help="memory per job (default 16GB)")
    parser.add_argument("--walltime", default="02:00:00", help="time limit per job (default 02:00:00)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per job (--gres=gpu:N; default 0)")
    parser.add_argument("--log-directory", default="slurm-logs", help="where the jobs' logs go (default slurm-logs)")
    return parser


def slurm_cluster(args: argparse.Namespace) -> Any:
    """A ``dask_jobqueue.SLURMCluster`` of one-thread workers, one per job, with the job's cores and GPUs."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise RunError(JOBQUEUE_MISSING) from None
    directives = [f"--gres=gpu:{args.gpus}"] if args.gpus else []
    return SLURMCluster(queue=args.queue, account=args.account, cores=1, processes=1, job_cpu=args.cores,
                        memory=args.memory, walltime=args.walltime, job_extra_directives=directives,
                        log_directory=args.log_directory, python=sys.executable)


def predict_on_cluster(cluster: Any, predict_argv: Sequence[str]) -> int:
    """``mscseg-predict PREDICT_ARGV --scheduler <the cluster's scheduler>``; its exit status."""
    from mscseg.predict import main as predict_main

    return predict_main([*predict_argv, "--scheduler", cluster.scheduler_address])


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:split])
    predict_argv = argv[split + 1:]
    if not predict_argv:
        raise RunError("give mscseg-predict's arguments after --, e.g. -- --model RUN --images DIR --out DIR --resume")
    if any(arg in ("--workers", "--scheduler") for arg in predict_argv):
        raise RunError("--workers and --scheduler are set by this script; leave them out of mscseg-predict's arguments")
    if args.jobs < 1:
        raise RunError(f"--jobs must be at least 1, got {args.jobs}")
    with slurm_cluster(args) as cluster:
        cluster.scale(jobs=args.jobs)
        return predict_on_cluster(cluster, predict_argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

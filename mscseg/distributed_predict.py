"""mscseg-predict image by image: in this process, on a local Dask cluster, or on a running Dask scheduler; ``--resume``.

``--workers N`` starts a local Dask cluster for the run (``distributed.LocalCluster``: N worker
processes, one thread each); ``--scheduler ADDRESS`` (``tcp://host:8786``) uses one that runs
already, such as a lab's ``dask-jobqueue`` SLURM cluster (``scripts/predict_on_slurm.py``). Its
workers must see the images and the output folder at the same paths (a shared file system). Each
worker process loads the model once (``worker_model``) and keeps it for the images it is given.

Per image, the worker that predicted it writes masks/, labels/, overlays/, cells/ (and rois/,
geojson/) through ``data.outputs.staged_outputs`` (moved into place together), then, last, its
done marker ``.mscseg-predict/<name>.json`` (atomic): the image's fingerprint (the settings that
decide its outputs, the weights file's and the image file's size and modification time), each
file's size, and its counts.csv row. counts.csv, predict.json and ``--coco`` are written by the
calling process when every image is done, in image order.

An image is complete when its marker reads, its fingerprint equals this run's and every file it
lists is there with its recorded size. ``--resume`` keeps complete images and predicts the others,
replacing whatever partial files they have. A run without ``--workers``, ``--scheduler`` or
``--resume`` writes every output together at the end, as before (markers included).

Byte identity between the serial and the distributed runs: every per-image file is the same byte
for byte, and counts.csv is the same except its ``seconds`` column (each image's wall time on the
process that predicted it, from reading the image to its files written; a resumed image keeps the
seconds of the run that predicted it); predict.json differs only in ``execution``. That holds on one
machine with the same thread settings: numpy's BLAS can round a large cell's moments differently
with another thread count, so the ``--workers`` processes keep this process's
``OMP/MKL/OPENBLAS_NUM_THREADS`` (``local_cluster``) instead of Dask's 1; the workers of a
``--scheduler`` cluster run with their own (Dask's default: 1 thread).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from data.errors import MscsegError

from .errors import RunError
from .exports import OutputOptions
from .predict import (
    LoadedModel, PredictOptions, ResolvedSettings, Scaling, cell_detections, label_image, load_model, measure_cells,
    run_kind, size_note, write_image_outputs,
)

MARKERS = ".mscseg-predict"
DASK_MISSING = 'Dask is not installed (--workers, --scheduler); install it with: pip install "dask[distributed]"'
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
IMAGE_FILES = (("masks", ".png"), ("labels", ".png"), ("labels", ".tif"), ("overlays", ".png"), ("cells", ".csv"),
               ("rois", ".zip"), ("geojson", ".geojson"))


@dataclass(frozen=True)
class Execution:
    """Where mscseg-predict runs its images and whether it keeps the finished ones of an earlier run."""

    workers: int = 0                 # --workers N: a local Dask cluster of N processes; 0: none
    scheduler: str | None = None     # --scheduler ADDRESS of a running Dask cluster
    resume: bool = False             # --resume: keep complete images, commit each image as it finishes
    connect_timeout_s: float = 30.0  # how long to wait for --scheduler to answer

    @property
    def distributed(self) -> bool:
        return self.workers > 0 or self.scheduler is not None

    @property
    def per_image(self) -> bool:
        """Each image committed as it finishes (else all outputs move into place together at the end)."""
        return self.resume or self.distributed

    def check(self, overwrite: bool) -> None:
        if self.workers < 0:
            raise RunError(f"--workers must be zero or positive, got {self.workers}")
        if self.workers and self.scheduler:
            raise RunError("--workers starts a local cluster, --scheduler uses a running one: give one of them")
        if self.resume and overwrite:
            raise RunError("--resume keeps the finished images, --overwrite replaces them: give one of them")

    def record(self, resumed: int) -> dict:
        """predict.json's ``execution``: where the images ran and how many an earlier run had finished."""
        where = (f"Dask scheduler {self.scheduler}" if self.scheduler else
                 f"local Dask cluster of {self.workers} process(es), 1 thread each" if self.workers else "this process")
        return {"where": where, "workers": self.workers or None, "scheduler": self.scheduler, "resume": self.resume,
                "images_kept_from_earlier_run": resumed}


@dataclass(frozen=True)
class ImagePlan:
    """Everything that decides one image's outputs; sent to every worker."""

    run_dir: str
    which: str
    device: str | None
    weights: tuple             # (name, size, mtime_ns) of the run's weights files of ``which``
    threshold: float
    scaling: Scaling
    tile_px: tuple[int, int]
    overlap_px: tuple[int, int]
    min_area: int
    outputs: OutputOptions
    coco: bool
    out_dir: str


@dataclass(frozen=True)
class ImageJob:
    """One image to predict: its name (file stem), absolute path, COCO image id and fingerprint."""

    name: str
    path: str
    image_id: int | None
    fingerprint: str


def _identity(path: Path) -> list:
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def make_plan(run_dir: str | Path, options: PredictOptions, settings: ResolvedSettings, out_dir: str | Path) -> ImagePlan:
    """The plan of a run from its options and the settings resolved for its model; paths made absolute."""
    run_dir = Path(run_dir).resolve()
    which = options.which
    weights = tuple(tuple(_identity(path)) for path in sorted(run_dir.glob(f"{which}.*")) if path.is_file())
    return ImagePlan(str(run_dir), which, options.device, weights, float(settings.threshold), settings.scaling,
                     tuple(settings.tile_px), tuple(settings.overlap_px), int(settings.min_area),
                     options.outputs or OutputOptions(), bool(options.coco), str(Path(out_dir).resolve()))


def image_jobs(plan: ImagePlan, named: dict[str, Path], image_ids: dict[str, int]) -> list[ImageJob]:
    """One job per image in ``named`` order, fingerprinted with the plan and the image file."""
    settings = {key: value for key, value in asdict(plan).items() if key not in ("device", "out_dir")}
    jobs = []
    for name, path in named.items():
        path = Path(path).resolve()
        image_id = image_ids.get(name) if plan.coco else None
        text = json.dumps({"plan": settings, "image": _identity(path), "image_id": image_id}, sort_keys=True, default=str)
        jobs.append(ImageJob(name, str(path), image_id, hashlib.sha256(text.encode()).hexdigest()[:24]))
    return jobs


def describe_model(run_dir: str | Path, which: str = "best") -> LoadedModel:
    """What ``predict.load_model`` tells about a run (kind, name, input size, geometry) without loading its weights."""
    from data.run_record import read_record

    run_dir = Path(run_dir)
    kind = run_kind(run_dir)
    weights = run_dir / (f"{which}.weights.h5" if kind == "semantic" else f"{which}.pt")
    if not weights.is_file():
        raise RunError("weights file not found; the training run may not have finished", weights)
    try:
        record = read_record(run_dir)
    except MscsegError as error:
        raise RunError(error.problem, error.path) from None
    settings = record.settings
    if kind == "semantic":
        return LoadedModel(kind, str(settings.get("model", run_dir.name)), None, int(settings["image_size"]), run_dir,
                           record.geometry)
    size = settings.get("image_size")
    return LoadedModel(kind, "maskrcnn", None, int(size) if size else None, run_dir, record.geometry)


# ---------------------------------------------------------------- one image

def _plain(obj: Any) -> Any:
    """``obj`` as JSON would give it back (numpy scalars and arrays to Python), so every mode builds the same tables."""
    return json.loads(json.dumps(obj, default=lambda value: value.tolist() if hasattr(value, "tolist") else str(value)))


def predict_image(plan: ImagePlan, loaded: LoadedModel, job: ImageJob, folder: Path) -> dict:
    """Predict one image and write its files into ``folder``; returns its record (name, counts row, size note,
    pixel size, COCO detections)."""
    from data.imageio import read_image
    from data.units import count_micrometres, pixel_size_for

    started = time.perf_counter()
    image = read_image(job.path)
    height, width = image.shape[:2]
    labels, scores, probability, n_tiles = label_image(loaded, image, plan.threshold, plan.scaling, plan.tile_px,
                                                       plan.overlap_px, plan.min_area, plan.device)
    mask = labels > 0
    pixel_size = pixel_size_for(job.path, plan.outputs.pixel_size)
    cells = measure_cells(labels, job.name, scores, pixel_size)
    write_image_outputs(folder, job.name, image, labels, cells, plan.outputs)
    detections = cell_detections(job.image_id, labels, scores, probability) if plan.coco else []
    counts = {
        "image": job.name, "width": width, "height": height, "cell_count": len(cells), "confluence": float(mask.mean()),
        "mean_area_px": float(cells["area_px"].mean()) if len(cells) else float("nan"),
        "median_area_px": float(cells["area_px"].median()) if len(cells) else float("nan"),
        "kind": loaded.kind, "model": loaded.name, "threshold": plan.threshold, "min_area_px": plan.min_area,
        "tiles": n_tiles, "seconds": round(time.perf_counter() - started, 3), **count_micrometres(cells, pixel_size),
    }
    return _plain({"name": job.name, "counts": counts, "note": size_note(job.name, height, width, loaded.geometry, n_tiles),
                   "pixel_size": None if pixel_size is None else pixel_size.as_dict(), "detections": detections})


def image_files(folder: Path, name: str) -> dict[str, int]:
    """{path relative to ``folder``: size in bytes} of the files of image ``name`` there."""
    paths = (f"{sub}/{name}{ext}" for sub, ext in IMAGE_FILES)
    return {path: (folder / path).stat().st_size for path in paths if (folder / path).is_file()}


def marker_path(folder: str | Path, name: str) -> Path:
    return Path(folder) / MARKERS / f"{name}.json"


def write_marker(folder: Path, job: ImageJob, record: dict, files: dict[str, int]) -> None:
    from data.outputs import write_json

    write_json(marker_path(folder, job.name), {"fingerprint": job.fingerprint, "files": files, "record": record})


def finished_record(out_dir: str | Path, job: ImageJob) -> dict | None:
    """The record of ``job`` when its outputs in ``out_dir`` are complete (see the module docstring), else None."""
    try:
        marker = json.loads(marker_path(out_dir, job.name).read_text())
        if marker["fingerprint"] != job.fingerprint or not marker["files"]:
            return None
        for path, size in marker["files"].items():
            if (Path(out_dir) / path).stat().st_size != size:
                return None
        return marker["record"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def commit_image(plan: ImagePlan, loaded: LoadedModel, job: ImageJob) -> dict:
    """Predict one image, move its files into the output folder together, then write its done marker."""
    from data.outputs import staged_outputs

    out_dir = Path(plan.out_dir)
    with staged_outputs(out_dir) as stage:
        record = predict_image(plan, loaded, job, stage)
        files = image_files(stage, job.name)
    write_marker(out_dir, job, record, files)
    return record


# ---------------------------------------------------------------- on a Dask worker

_MODELS: dict[tuple, LoadedModel] = {}
_MODELS_LOCK = threading.Lock()
_WORKER_STATS = {"model_loads": 0, "images": 0}


def worker_model(plan: ImagePlan) -> LoadedModel:
    """This process's model for ``plan`` (run folder, weights file and its stamp, device), loaded on first use."""
    key = (plan.run_dir, plan.which, plan.weights, plan.device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS.clear()
            _MODELS[key] = load_model(plan.run_dir, plan.which, plan.device)
            _WORKER_STATS["model_loads"] += 1
        return _MODELS[key]


def predict_on_worker(plan: ImagePlan, job: ImageJob) -> dict:
    """The Dask task of one image: ``commit_image`` with this worker's model."""
    record = commit_image(plan, worker_model(plan), job)
    with _MODELS_LOCK:
        _WORKER_STATS["images"] += 1
    return record


def worker_stats() -> dict:
    """How often this process loaded a model and how many images it predicted (``client.run(worker_stats)``)."""
    with _MODELS_LOCK:
        return dict(_WORKER_STATS)


def import_distributed():
    """The ``distributed`` package, or a ``RunError`` naming the pip extra."""
    try:
        import distributed
    except ImportError:
        raise RunError(DASK_MISSING) from None
    return distributed


def local_cluster(workers: int) -> Any:
    """A ``distributed.LocalCluster`` of ``workers`` processes, one Dask thread each, whose numeric libraries keep this
    process's thread settings.

    Dask starts its workers with ``OMP/MKL/OPENBLAS_NUM_THREADS=1``; a sum numpy hands to a BLAS
    with one thread instead of several can differ in its last bit (scikit-image's moments of a
    large cell), so the workers inherit this process's settings and compute as it does.
    """
    import dask

    distributed = import_distributed()
    with dask.config.set({f"distributed.nanny.pre-spawn-environ.{name}": None for name in THREAD_VARIABLES}):
        return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")


@contextlib.contextmanager
def dask_client(execution: Execution) -> Iterator[Any]:
    """A ``distributed.Client`` of a new local cluster (closed after) or of the running scheduler ``execution`` names."""
    distributed = import_distributed()
    cluster = None
    if execution.scheduler:
        try:
            client = distributed.Client(execution.scheduler, timeout=execution.connect_timeout_s)
        except (OSError, TimeoutError, ValueError) as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            raise RunError(f"--scheduler {execution.scheduler}: no Dask scheduler answers ({reason})") from None
    else:
        cluster = local_cluster(execution.workers)
        client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            nanny = logging.getLogger("distributed.nanny")
            level = nanny.level
            nanny.setLevel(logging.ERROR)      # "still alive after 4 s, killing": a framework's threads end slowly
            try:
                cluster.close()
            finally:
                nanny.setLevel(level)


def _on_dask(plan: ImagePlan, jobs: Sequence[ImageJob], execution: Execution, quiet: bool) -> Iterator[dict]:
    """Each job's record as its worker finishes it (any order)."""
    with dask_client(execution) as client:
        distributed = import_distributed()
        if not quiet:
            workers = len(client.scheduler_info().get("workers", {}))
            print(f"Dask: {workers} worker(s) at {client.scheduler.address}" + ("" if workers else "; waiting for workers"))
        futures = client.map(predict_on_worker, [plan] * len(jobs), list(jobs), pure=False)
        job_of = {future.key: job for future, job in zip(futures, jobs)}
        for future in distributed.as_completed(futures):
            try:
                yield future.result()
            except distributed.KilledWorker:
                raise RunError("every Dask worker that tried this image died (out of memory?); the images finished so "
                               "far are kept: run again with --resume", job_of[future.key].path) from None


# ---------------------------------------------------------------- the run

def _report(record: dict, position: int, total: int, quiet: bool) -> None:
    if quiet:
        return
    if record["note"]:
        print(record["note"])
    row = record["counts"]
    print(f"[{position}/{total}] {row['image']}: {row['cell_count']} cells, confluence {row['confluence']:.3f} "
          f"({row['tiles']} tile(s), {row['seconds']:.1f} s)")


def run_images(plan: ImagePlan, jobs: Sequence[ImageJob], execution: Execution, loaded: LoadedModel, quiet: bool,
               stage: Path) -> tuple[list[dict], int]:
    """(every job's record in job order, how many were kept from an earlier run).

    Without ``execution.per_image`` every image's files and marker go into ``stage`` (moved into
    place with counts.csv at the end); else each image is committed to ``plan.out_dir`` as it
    finishes, in this process with ``loaded`` or on Dask workers.
    """
    records: dict[str, dict] = {}
    if execution.resume:
        for job in jobs:
            record = finished_record(plan.out_dir, job)
            if record is not None:
                records[job.name] = record
        if not quiet:
            print(f"resume: {len(records)} of {len(jobs)} image(s) already done in {plan.out_dir}, "
                  f"{len(jobs) - len(records)} to predict")
    kept = len(records)
    todo = [job for job in jobs if job.name not in records]
    if execution.distributed:
        done = _on_dask(plan, todo, execution, quiet) if todo else iter(())
    elif execution.per_image:
        done = (commit_image(plan, loaded, job) for job in todo)
    else:
        done = (_in_stage(plan, loaded, job, stage) for job in todo)
    for position, record in enumerate(done, kept + 1):
        records[record["name"]] = record
        _report(record, position, len(jobs), quiet)
    return [records[job.name] for job in jobs], kept


def _in_stage(plan: ImagePlan, loaded: LoadedModel, job: ImageJob, stage: Path) -> dict:
    record = predict_image(plan, loaded, job, stage)
    write_marker(stage, job, record, image_files(stage, job.name))
    return record

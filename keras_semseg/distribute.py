"""One semantic training run on several devices or machines, with TensorFlow's own ``tf.distribute``.

``make_strategy`` picks, once per process and before TensorFlow runs its first op:

- ``TF_CONFIG`` naming a cluster of more than one task: ``MultiWorkerMirroredStrategy``
  (every worker runs the same ``semseg-train`` command; collectives chosen by TensorFlow:
  ring on CPUs, NCCL between GPUs);
- otherwise more than one visible GPU: ``MirroredStrategy`` over them;
- otherwise TensorFlow's default strategy (one device).

The global batch is the configured ``batch_size``, split evenly across all replicas
(``per_replica_batch``); the learning rate and the steps per epoch are those of one device.
The chief (task ``chief``, or ``worker`` 0 when the cluster names no chief) writes the run
folder; the other workers read it (a resume needs ``--out`` on a folder every worker can
read) and write their copies of each checkpoint into a temporary folder they delete
(``scratch_folder``): reading batch-norm statistics is a collective, so every worker saves.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import SemsegError
from .tf_env import tensorflow

TASK_TYPES = ("chief", "worker")


@dataclass(frozen=True)
class Cluster:
    """This process's place in a ``TF_CONFIG`` cluster: ``tasks`` counts chief and workers (1: no cluster)."""

    tasks: int = 1
    task_type: str | None = None
    task_id: int = 0
    has_chief: bool = False

    @property
    def chief(self) -> bool:
        """True for the task that writes the run folder."""
        return (self.tasks == 1 or self.task_type == "chief"
                or (self.task_type == "worker" and self.task_id == 0 and not self.has_chief))

    @property
    def name(self) -> str:
        return "single process" if self.tasks == 1 else f"{self.task_type} {self.task_id} of {self.tasks} tasks"


def cluster_from_env(environ: Mapping[str, str] | None = None) -> Cluster:
    """The cluster ``TF_CONFIG`` names (imports no framework); ``SemsegError`` naming TF_CONFIG when it is malformed.

    ``TF_CONFIG`` = ``{"cluster": {"worker": ["host:port", ...], "chief": [...]}, "task": {"type": "worker",
    "index": 0}}``; unset or empty: one process.
    """
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not text:
        return Cluster()
    try:
        config = json.loads(text)
    except ValueError as error:
        raise SemsegError(f"TF_CONFIG is not valid JSON ({error})") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task", {}) if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise SemsegError('TF_CONFIG must be {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": N}}')
    other = sorted(set(cluster) - set(TASK_TYPES) - {"evaluator"})
    if other:
        raise SemsegError(f"TF_CONFIG: semseg-train runs only chief and worker tasks (MultiWorkerMirroredStrategy), got {other}")
    sizes = {kind: cluster.get(kind, []) for kind in TASK_TYPES}
    if any(not isinstance(hosts, list) or not all(isinstance(h, str) and ":" in h for h in hosts) for hosts in sizes.values()):
        raise SemsegError('TF_CONFIG: cluster["worker"] and cluster["chief"] must be lists of "host:port"')
    if len(sizes["chief"]) > 1:
        raise SemsegError(f"TF_CONFIG: at most one chief, got {len(sizes['chief'])}")
    tasks = len(sizes["chief"]) + len(sizes["worker"])
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in TASK_TYPES or isinstance(index, bool) or not isinstance(index, int) \
            or not 0 <= index < len(sizes[task_type]):
        raise SemsegError(f"TF_CONFIG: task {task_type!r} {index!r} is not in the cluster "
                          f"({len(sizes['chief'])} chief, {len(sizes['worker'])} workers)")
    return Cluster(tasks, task_type, index, bool(sizes["chief"]))


def is_chief(environ: Mapping[str, str] | None = None) -> bool:
    """True unless ``TF_CONFIG`` makes this process a worker other than the chief."""
    return cluster_from_env(environ).chief


def local_devices() -> list[str]:
    """The logical GPUs of this process (``/device:GPU:0``, ...), which ``MirroredStrategy`` mirrors over."""
    return [device.name for device in tensorflow().config.list_logical_devices("GPU")]


@functools.lru_cache(maxsize=None)
def _strategy(tf_config: str, devices: tuple[str, ...]) -> Any:
    tf = tensorflow()
    if tf_config:
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except (RuntimeError, ValueError) as error:
            raise SemsegError(f"TF_CONFIG: cannot start MultiWorkerMirroredStrategy ({str(error).splitlines()[0]}); "
                              "start it before TensorFlow runs anything") from None
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy(list(devices))
    return tf.distribute.get_strategy()


def make_strategy() -> Any:
    """The strategy of this process (see the module); the same object on every call with the same ``TF_CONFIG``.

    Call it before TensorFlow runs any op: ``MultiWorkerMirroredStrategy`` configures the
    collectives at program start-up (it finds each worker's GPUs itself).
    """
    if cluster_from_env().tasks > 1:
        return _strategy(os.environ["TF_CONFIG"].strip(), ())
    return _strategy("", tuple(local_devices()))


def workers(strategy: Any) -> int:
    """Number of processes that train together (1 unless multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return max(1, sum(len(spec.get(kind, [])) for kind in TASK_TYPES))


def per_replica_batch(strategy: Any, batch_size: int) -> int:
    """``batch_size // replicas``; ``SemsegError`` when the global batch does not split evenly."""
    replicas = int(strategy.num_replicas_in_sync)
    if batch_size % replicas:
        raise SemsegError(f"batch_size {batch_size} does not split over {replicas} replicas ({describe_devices(strategy)}); "
                          f"use a multiple of {replicas} (the global batch)")
    return batch_size // replicas


def describe_devices(strategy: Any) -> str:
    count = workers(strategy)
    local = int(strategy.num_replicas_in_sync) // count
    return f"{count} workers x {local} device{'s' * (local != 1)}" if count > 1 else f"{local} device{'s' * (local != 1)}"


def details(strategy: Any, batch_size: int) -> dict:
    """What run.json's ``details.devices`` says about the strategy (this process's view)."""
    tf = tensorflow()
    cluster = cluster_from_env()
    public = ("MultiWorkerMirroredStrategy", "MirroredStrategy")
    name = next((kind for kind in public if isinstance(strategy, getattr(tf.distribute, kind))), type(strategy).__name__)
    return {"gpus": len(tf.config.list_physical_devices("GPU")), "strategy": name,
            "replicas": int(strategy.num_replicas_in_sync), "workers": workers(strategy),
            "global_batch": int(batch_size), "per_replica_batch": per_replica_batch(strategy, batch_size),
            "task": cluster.name}


def replica_sum(strategy: Any, value: float) -> float:
    """Sum over every replica of all workers of this worker's ``value`` (a collective: every worker must call it)."""
    if workers(strategy) <= 1:
        return float(value) * int(strategy.num_replicas_in_sync)
    tf = tensorflow()
    constant = tf.constant(float(value), tf.float64)
    per_replica = strategy.run(tf.function(lambda: tf.identity(constant)))
    return float(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy())


def any_worker(strategy: Any, flag: bool) -> bool:
    """True on every worker when ``flag`` is True on any (a collective: every worker must call it)."""
    return replica_sum(strategy, 1.0 if flag else 0.0) > 0.0


def check_same_epoch(strategy: Any, epochs_done: int, out_dir: Path) -> None:
    """``SemsegError`` on every worker unless all of them found the same finished epochs in ``out_dir``."""
    replicas = int(strategy.num_replicas_in_sync)
    if workers(strategy) > 1 and replica_sum(strategy, float(epochs_done)) != float(epochs_done) * replicas:
        raise SemsegError(f"the workers found different runs in the folder (this {cluster_from_env().name} found "
                          f"{epochs_done} epochs done); --out must be one folder that every worker can read", out_dir)


@contextlib.contextmanager
def scratch_folder(out_dir: Path, chief: bool) -> Iterator[Path]:
    """``out_dir`` for the chief; for another worker a temporary folder, deleted after use."""
    if chief:
        yield out_dir
        return
    folder = Path(tempfile.mkdtemp(prefix="semseg-worker-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)

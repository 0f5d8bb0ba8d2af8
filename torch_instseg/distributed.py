"""Training on several processes under torchrun: process group, global batch, DDP steps, rank 0's writes.

Launch one process per GPU (``torchrun --nproc_per_node N [--nnodes M ...] -m torch_instseg.maskrcnn ...``);
without torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) everything here is the
one-process case and no process group is made. The rules every trainer follows:

- Backend: nccl when the processes train on CUDA (each on ``cuda:LOCAL_RANK``), gloo on the CPU.
- Global batch: the configured ``batch_size`` is the batch of one optimiser step over all
  processes; each process takes ``batch_size / world size`` images (a multiple is required).
  DDP averages the gradients of the processes' mean losses, so a step is the step one process
  would take on the whole batch (batch norm aside: its statistics are per process), and the
  learning rate and the steps per epoch are those of one process: no scaling rule applies.
- Order: each epoch's order is a permutation drawn from (seed, epoch), wrapped around to a
  whole number of global batches; step s takes global batch s, process r its r-th part. Any
  number of processes sees the same global batches, so a run resumes on another world size.
- SAM fine-tuning (no batch setting): a step takes one image per process, so the global batch
  is the world size and an epoch has ceil(images / world size) steps; gradients averaged, the
  learning rate unchanged (raise it yourself if you follow a linear scaling rule).
- Rank 0 alone validates (losses broadcast to every process, so each takes the same best-epoch
  and learning-rate decisions), writes checkpoints, run.json, history.csv and logs, and decides
  the time budget; the other processes open the run folder read-only. A process that fails or
  is killed ends the group (torchrun stops the others); ``--resume`` continues on any world size.

torch is imported inside functions only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

import numpy as np

from data.lifecycle import RunSpec, TrainingRun, open_run, previous_run

from .errors import InstsegError

T = TypeVar("T")
ENVIRONMENT = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes (world size 1: a plain run)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        """True on rank 0, the process that validates and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def record(self, global_batch: int | None = None) -> dict[str, Any]:
        """What run.json records: world size, backend and, given the global batch, the batch of each process."""
        found: dict[str, Any] = {"world_size": self.world, "backend": self.backend}
        if global_batch is not None:
            found.update(global_batch=int(global_batch), batch_per_process=int(global_batch) // self.world)
        return found


def launch_environment() -> Processes:
    """World size, rank and local rank from torchrun's environment (1, 0, 0 without it); no process group is made."""
    values = {}
    for name, default in zip(ENVIRONMENT, ("1", "0", "0")):
        text = os.environ.get(name, default)
        try:
            values[name] = int(text)
        except ValueError:
            raise InstsegError(f"environment variable {name}={text!r} is not a whole number (set by torchrun)") from None
    world, rank, local = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise InstsegError(f"torchrun's environment is inconsistent: WORLD_SIZE={world}, RANK={rank}, LOCAL_RANK={local}")
    return Processes(world, rank, local)


def start(device: str | None = None) -> tuple[Processes, Any]:
    """Join torchrun's process group (made once per process) and choose this process's torch device.

    device: None/'auto'/'cuda' (``cuda:LOCAL_RANK`` when CUDA is there, else the CPU), 'cpu', or
    'cuda:N'. Returns (processes, torch.device).
    """
    import torch

    from .maskrcnn_model import resolve_device

    processes = launch_environment()
    if not processes.distributed:
        return processes, resolve_device(device)
    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = resolve_device(device)
    if chosen.type == "cuda" and chosen.index is None:
        if processes.local_rank >= torch.cuda.device_count():
            raise InstsegError(f"LOCAL_RANK {processes.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                               "start at most one process per GPU (torchrun --nproc_per_node)")
        chosen = torch.device("cuda", processes.local_rank)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    if torch.distributed.get_world_size() != processes.world:
        raise InstsegError(f"the process group has {torch.distributed.get_world_size()} processes, WORLD_SIZE says {processes.world}")
    return Processes(processes.world, processes.rank, processes.local_rank, str(torch.distributed.get_backend())), chosen


def stop() -> None:
    """Leave the process group, if this process joined one."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier(processes: Processes) -> None:
    """Wait for every process (nothing to wait for alone)."""
    if processes.distributed:
        import torch

        torch.distributed.barrier()


def from_main(value: T, processes: Processes) -> T:
    """Rank 0's ``value`` on every process (a picklable object)."""
    if not processes.distributed:
        return value
    import torch

    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def on_main(compute: Callable[[], T], processes: Processes) -> T:
    """``compute()`` on rank 0 only, its result given to every process (validation, the time budget)."""
    return from_main(compute() if processes.main else None, processes)


def all_true(flag: bool, processes: Processes, device=None) -> bool:
    """True when ``flag`` holds on every process."""
    if not processes.distributed:
        return bool(flag)
    import torch

    value = torch.tensor([0.0 if flag else 1.0], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(value)
    return float(value) == 0.0


def mean_over_processes(sums: Mapping[str, float], count: float, processes: Processes, device=None) -> dict[str, float]:
    """{name: total of ``sums[name]`` over processes / total ``count``} (NaN when no process counted anything).

    Every process gets rank 0's numbers, so decisions taken from them (the best epoch) agree to the bit.
    """
    names = list(sums)
    if processes.distributed:
        import torch

        totals = torch.tensor([float(sums[name]) for name in names] + [float(count)], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(totals)
        values, count = from_main(([float(v) for v in totals[:-1]], float(totals[-1])), processes)
    else:
        values = [float(sums[name]) for name in names]
    if count == 0:
        return dict.fromkeys(names, float("nan"))
    return {name: value / count for name, value in zip(names, values)}


# ---------------------------------------------------------------- the global batch and each epoch's order

def batch_per_process(global_batch: int, processes: Processes, setting: str = "batch_size") -> int:
    """Images per process and step; ``InstsegError`` naming ``setting`` when the batch does not split evenly."""
    if global_batch % processes.world:
        raise InstsegError(f"{setting}: {global_batch} images per step cannot be split evenly over {processes.world} "
                           f"processes; use a multiple of {processes.world}")
    return global_batch // processes.world


def epoch_order(size: int, global_batch: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """steps x global_batch sample indices of one epoch: a permutation drawn from (seed, epoch), in whole batches."""
    order = np.random.default_rng([seed, epoch]).permutation(size) if shuffle else np.arange(size)
    return whole_batches(order, global_batch)


def whole_batches(order: np.ndarray, global_batch: int) -> np.ndarray:
    """``order`` wrapped around to fill its last batch: n -> ceil(n / global_batch) x global_batch."""
    steps = -(-len(order) // global_batch)
    return np.resize(np.asarray(order, np.int64), steps * global_batch).reshape(steps, global_batch)


def spread(order: np.ndarray, processes: Processes) -> np.ndarray:
    """This process's part of each global batch: steps x global_batch -> steps x (global_batch / world)."""
    steps, batch = order.shape
    return order.reshape(steps, processes.world, batch // processes.world)[:, processes.rank]


class EpochSampler:
    """The sample indices one process takes in an epoch (``epoch_order`` then ``spread``); call ``set_epoch`` each epoch."""

    def __init__(self, size: int, global_batch: int, processes: Processes, seed: int, shuffle: bool = True):
        batch_per_process(global_batch, processes)
        self.size, self.global_batch, self.processes, self.seed, self.shuffle = size, global_batch, processes, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        order = spread(epoch_order(self.size, self.global_batch, self.seed, self.epoch, self.shuffle), self.processes)
        return iter(order.ravel().tolist())

    def __len__(self) -> int:
        return -(-self.size // self.global_batch) * (self.global_batch // self.processes.world)


def training_loader(dataset, global_batch: int, processes: Processes, seed: int, **options: Any) -> tuple[Any, EpochSampler]:
    """(DataLoader of this process's batches, its sampler): ``global_batch / world`` samples per batch."""
    import torch

    per_process = batch_per_process(global_batch, processes)
    sampler = EpochSampler(len(dataset), global_batch, processes, seed)
    return torch.utils.data.DataLoader(dataset, batch_size=per_process, sampler=sampler, shuffle=False, drop_last=False,
                                       **options), sampler


# ---------------------------------------------------------------- DDP

def wrap(model, processes: Processes, device, find_unused_parameters: bool = False):
    """``model`` in ``DistributedDataParallel`` (gradients averaged over processes); ``model`` itself alone."""
    if not processes.distributed:
        return model
    import torch

    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                     find_unused_parameters=find_unused_parameters)


def wrap_calls(model, processes: Processes, device, find_unused_parameters: bool = True):
    """A network ``net`` with ``net(compute) == compute()``, gradients of ``model``'s parameters averaged by DDP.

    For a step that calls parts of ``model`` (SAM's prompt encoder and decoder, in rounds)
    rather than ``model(...)``: DDP averages the gradients of what runs inside its forward.
    """
    import torch

    class Calls(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, compute: Callable[[], Any]) -> Any:
            return compute()

    return wrap(Calls(model), processes, device, find_unused_parameters)


def run_batches(loader, losses_of: Callable[[Any], tuple[Mapping[str, Any], int]], processes: Processes, device=None,
                optimizer=None, before_step: Callable[[], None] | None = None, progress=None) -> dict[str, float]:
    """Mean of each loss over every sample of every process; one optimiser step per batch when ``optimizer`` is given.

    losses_of(batch) -> ({name: scalar tensor, with "loss" the one to minimise}, samples in the
    batch): run the (DDP-wrapped) network, whose backward then averages the gradients over the
    processes. A non-finite loss on any process raises ``FloatingPointError`` on every process.
    """
    import torch

    sums: dict[str, float] = {}
    count = 0
    for batch in loader:
        if optimizer is not None:
            if before_step is not None:
                before_step()
            losses, size = losses_of(batch)
            loss = losses["loss"]
            finite = bool(torch.isfinite(loss.detach()))
            if not all_true(finite, processes, device):
                where = f" on rank {processes.rank}" if processes.distributed else ""
                raise FloatingPointError(f"loss is {float(loss.detach())}{where}" if not finite
                                         else "loss is not finite on another process")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            with torch.no_grad():
                losses, size = losses_of(batch)
        count += size
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach()) * size
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{sums['loss'] / count:.3f}")
    return mean_over_processes(sums, count, processes, device)


# ---------------------------------------------------------------- the run folder

@dataclass
class _RankZeroRun(TrainingRun):
    """A run of several processes: rank 0 writes, and its clock decides the time budget for all."""

    processes: Processes = Processes()

    def budget_reached(self) -> bool:
        return bool(from_main(TrainingRun.budget_reached(self), self.processes))


def open_shared_run(out_dir: str | Path, spec: RunSpec, resume: bool, overwrite: bool, processes: Processes) -> TrainingRun:
    """``data.lifecycle.open_run`` for every process: each reads the folder (the same refusals), and no process
    returns before all have read it, so rank 0's first write cannot change what another one sees."""
    if not processes.distributed:
        return open_run(out_dir, spec, resume, overwrite)
    out_dir = Path(out_dir)
    run = _RankZeroRun(out_dir, spec, previous_run(out_dir, spec, resume, overwrite), overwrite, processes.main,
                       processes=processes)
    barrier(processes)
    return run


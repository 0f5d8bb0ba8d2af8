"""How many devices a training step uses, and how the runner starts it on them (imports no framework).

``semantic.devices`` and ``instance.devices``: ``1`` (one device), ``N`` or ``auto`` (every GPU this
process may see: ``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi -L``; one on a machine without a GPU).

- A semantic training step sees the first N GPUs (``CUDA_VISIBLE_DEVICES``); with more than one,
  ``keras_semseg.distribute`` trains with ``MirroredStrategy``, the configured batch being the global one.
- The Mask R-CNN training step runs under ``torchrun --standalone --nproc_per_node N`` (one process
  per GPU, nccl; on a machine without a GPU, N CPU processes with gloo: what the tests do);
  ``torch_instseg.distributed`` splits the global batch and has rank 0 write.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any, Mapping, Sequence

AUTO = "auto"
DEVICES_HELP = "{what}: 1 ({one}), a number, or auto (every visible GPU; one without a GPU)"


def devices_ok(value: Any) -> bool:
    return value == AUTO or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


def devices_problem(value: Any) -> str:
    return f"must be auto or a whole number of devices (at least 1), got {value!r}"


def visible_gpus(environ: Mapping[str, str] | None = None) -> int:
    """GPUs a child process may use: the entries of ``CUDA_VISIBLE_DEVICES`` when set, else ``nvidia-smi -L``'s lines."""
    environ = os.environ if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        entries = [entry.strip() for entry in listed.split(",") if entry.strip()]
        return 0 if not entries or entries[0] == "-1" else len(entries)
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU ")) if listing.returncode == 0 else 0


def resolve_devices(value: Any, gpus: int) -> int:
    """The number of devices ``value`` means with ``gpus`` visible GPUs (auto: all of them, at least 1)."""
    return max(1, gpus) if value == AUTO else int(value)


def torchrun_command(command: Sequence[str], processes: int) -> list[str]:
    """``command`` (``python -m module ...``) started by torchrun with ``processes`` processes on this machine."""
    python, flag, module, *rest = command
    if flag != "-m":
        raise ValueError(f"torchrun_command takes 'python -m module ...', got {list(command)[:3]}")
    return [python or sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            "-m", module, *rest]


def first_gpus(count: int, environ: Mapping[str, str] | None = None) -> str:
    """``CUDA_VISIBLE_DEVICES`` for the first ``count`` GPUs this process may see."""
    environ = os.environ if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    ids = [entry.strip() for entry in listed.split(",") if entry.strip()] if listed is not None else [str(i) for i in range(count)]
    return ",".join(ids[:count])

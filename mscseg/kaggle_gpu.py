"""The notebook's GPU check: what TensorFlow and torch see, each probed in a process of its own.

TensorFlow and torch never share a process here (as in the run's steps), and the notebook's
kernel imports neither. ``GPUS`` (1 or 2) sets CUDA_VISIBLE_DEVICES for every later process:
one GPU, as the paper's single T4, or both T4s, which only the Keras trainer uses
(``MirroredStrategy``); torch's steps use ``cuda:0``. A torch build without kernels for the
GPU's compute capability (the P100, sm_60, on current CUDA 12.8 builds) is named before any
step fails on it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from .kaggle import KaggleError

TF_PROBE = """
import json, sys
try:
    from keras_semseg.tf_env import tensorflow
    tf = tensorflow()
    keras = getattr(tf.keras, "__version__", None) or getattr(sys.modules.get(tf.keras.__name__.split(".")[0]), "__version__", "?")
    info = {"version": tf.__version__, "keras": str(keras),
            "cuda_build": bool(tf.test.is_built_with_cuda()), "gpus": len(tf.config.list_physical_devices("GPU"))}
except Exception as error:
    info = {"error": f"{type(error).__name__}: {error}"}
print(json.dumps(info))
"""

TORCH_PROBE = """
import json
try:
    import numpy, torch
    info = {"version": torch.__version__, "cuda": torch.version.cuda, "numpy": numpy.__version__, "gpus": [], "arch": []}
    if torch.cuda.is_available():
        info["arch"] = torch.cuda.get_arch_list()
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            info["gpus"].append({"name": props.name, "capability": [props.major, props.minor]})
except Exception as error:
    info = {"error": f"{type(error).__name__}: {error}"}
print(json.dumps(info))
"""

ACCELERATOR_HINT = "switch the accelerator to GPU T4 x2 (Settings > Accelerator) and run all cells again"


def probe(script: str, cwd: str | Path | None = None, timeout: float = 600) -> dict:
    """The JSON dict that ``script`` prints last, run by this Python in a process of its own ({"error": ...} if none)."""
    env = dict(os.environ)
    if cwd is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(cwd), env.get("PYTHONPATH", "")) if p)
    try:
        done = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit status {done.returncode}: {last}"}


def machine_gpus() -> list[dict]:
    """[{name, capability}] of every NVIDIA GPU, from ``nvidia-smi`` (whatever CUDA_VISIBLE_DEVICES says); [] without one."""
    if shutil.which("nvidia-smi") is None:
        return []
    done = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"], capture_output=True, text=True)
    gpus = []
    for line in done.stdout.splitlines() if done.returncode == 0 else []:
        name, _, cap = (part.strip() for part in line.rpartition(","))
        major, _, minor = cap.partition(".")
        gpus.append({"name": name, "capability": [int(major), int(minor or 0)] if major.isdigit() else None})
    return gpus


def torch_has_kernels(capability: Sequence[int], arch_list: Sequence[str]) -> bool:
    """Whether a torch built for ``arch_list`` (``sm_75``, ``compute_90``, ...) runs on a GPU of ``capability`` (major, minor).

    A ``sm_XY`` binary runs on the same major version with minor >= Y; ``compute_XY`` (PTX) on any GPU >= X.Y.
    """
    major, minor = capability
    for arch in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d+)(\d)[a-z]?", arch)
        if not match:
            continue
        kind, arch_major, arch_minor = match.group(1), int(match.group(2)), int(match.group(3))
        if kind == "sm" and arch_major == major and arch_minor <= minor:
            return True
        if kind == "compute" and (arch_major, arch_minor) <= (major, minor):
            return True
    return False


def select_gpus(gpus: int, environ: dict | None = None) -> str:
    """Set CUDA_VISIBLE_DEVICES for the run's processes: ``"0"`` for one GPU (the paper's single T4), ``"0,1"`` for two."""
    environ = os.environ if environ is None else environ
    if gpus not in (1, 2):
        raise KaggleError(f"GPUS = {gpus!r}: use 1 (one GPU, as the paper) or 2 (both T4s: Keras models and Mask R-CNN training)")
    environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(gpus))
    return environ["CUDA_VISIBLE_DEVICES"]


def _tf_lines(tf: dict, gpus: int) -> tuple[list[str], list[str]]:
    if "error" in tf:
        return [], [f"TensorFlow cannot be used: {tf['error']}"]
    name = f"TensorFlow {tf['version']} (tf.keras {tf['keras']})"
    if tf["gpus"] == 0:
        build = "" if tf.get("cuda_build", True) else ", a build without CUDA"
        return [], [f"{name} sees no GPU{build}: {ACCELERATOR_HINT}"]
    if tf["gpus"] == 1:
        return [f"{name} sees 1 GPU: the Keras models train on it, as the paper's single T4"], []
    return [f"{name} sees {tf['gpus']} GPUs: the Keras models train with MirroredStrategy, each batch split across them and "
            "batch-norm statistics kept per GPU (the paper trained on one T4: GPUS = 1)"], []


def _torch_lines(torch: dict) -> tuple[list[str], list[str]]:
    if "error" in torch:
        return [], [f"torch cannot be used: {torch['error']}"]
    name = f"torch {torch['version']} (CUDA {torch['cuda'] or 'none'})"
    if not torch["gpus"]:
        return [], [f"{name} sees no GPU: {ACCELERATOR_HINT}"]
    arch = torch["arch"]
    built = f"{arch[0]} to {arch[-1]}" if arch else "no GPU architectures"
    problems = [f"{name} has no kernels for the {gpu['name']} (compute capability {gpu['capability'][0]}.{gpu['capability'][1]}; "
                f"built for {built}): every torch step would fail; {ACCELERATOR_HINT}"
                for gpu in torch["gpus"] if not torch_has_kernels(gpu["capability"], arch)]
    if problems:
        return [], problems[:1]
    first = torch["gpus"][0]
    where = ("Mask R-CNN trains on both under torchrun (instance.devices 2); SAM and predictions on cuda:0"
             if len(torch["gpus"]) > 1 else "Mask R-CNN and SAM run on cuda:0")
    return [f"{name} sees {len(torch['gpus'])} GPU(s), {first['name']} (sm_{first['capability'][0]}{first['capability'][1]} in its build): "
            + where], []


def gpu_report(machine: list[dict], tf: dict, torch: dict, gpus: int) -> tuple[list[str], list[str]]:
    """(lines, problems) of the GPU check: what each framework sees and will use, one line per problem."""
    lines = [f"will run: Python {sys.version.split()[0]}, TensorFlow {tf.get('version', '-')} (tf.keras {tf.get('keras', '-')}), "
             f"torch {torch.get('version', '-')} (CUDA {torch.get('cuda') or 'none'}), numpy {torch.get('numpy', '-')}"]
    if machine:
        names = sorted({gpu["name"] for gpu in machine})
        lines.append(f"GPUs on this machine: {len(machine)} ({', '.join(names)}); GPUS = {gpus}: "
                     + ("CUDA_VISIBLE_DEVICES=0, one GPU as the paper's single T4 (GPUS = 2: both, for the Keras models "
                        "and the Mask R-CNN training)" if gpus == 1
                        else "CUDA_VISIBLE_DEVICES=0,1, both GPUs for the Keras models and the Mask R-CNN training"))
        if gpus > len(machine):
            lines.append(f"GPUS = {gpus} but this machine has {len(machine)} GPU: one is used")
    else:
        lines.append("GPUs on this machine: none (nvidia-smi not found)")
    tf_lines, tf_problems = _tf_lines(tf, gpus)
    torch_lines, torch_problems = _torch_lines(torch)
    return lines + tf_lines + torch_lines, tf_problems + torch_problems


def check_gpus(project: str | Path | None, gpus: int = 1, require: bool = True) -> tuple[dict, dict]:
    """Select ``gpus``, probe TensorFlow and torch (each in its own process), print what they see; stop on a problem if ``require``."""
    select_gpus(gpus)
    cwd = Path(project) if project is not None and Path(project).is_dir() else None
    tf, torch = probe(TF_PROBE, cwd), probe(TORCH_PROBE, cwd)
    lines, problems = gpu_report(machine_gpus(), tf, torch, gpus)
    for line in lines:
        print(line)
    if problems and require:
        raise KaggleError("\n".join(problems))
    for problem in problems:
        print(f"{problem} (REQUIRE_GPU is off: runs on the CPU)")
    return tf, torch

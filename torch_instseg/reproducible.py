"""Same seed, same numbers: torch's own determinism switches and the thread counts, recorded (torch imported inside).

On a CPU, torch gives the same numbers for the same seed, inputs and thread count on the
same machine; CPUs of other instruction sets (AVX2 against AVX-512, say) may differ in the
last bits. On a GPU, cuDNN's autotuner and atomic-add kernels make runs differ; the
``deterministic`` setting (on by default) turns on ``torch.use_deterministic_algorithms``
(warn-only: an op with no deterministic kernel warns instead of stopping a long run),
cuDNN's deterministic mode without benchmarking, and cuBLAS's fixed workspace.
"""
from __future__ import annotations

import os
from typing import Any

CUBLAS_WORKSPACE = ":4096:8"


def make_reproducible(deterministic: bool) -> dict[str, Any]:
    """Set torch's switches for ``deterministic``; returns what run.json records (switches, thread counts)."""
    import torch

    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)
    torch.backends.cudnn.deterministic = bool(deterministic)
    torch.backends.cudnn.benchmark = not deterministic and torch.cuda.is_available()
    return {
        "deterministic": bool(deterministic),
        "torch_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
    }

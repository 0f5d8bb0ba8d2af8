"""Shared fixtures and marker handling.

Markers: ``slow`` runs by default; ``gpu`` is skipped without CUDA; ``browser`` without
/usr/bin/chromium; ``realdata`` when ../shared/datasets/usiigaci is absent.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from keras_semseg.tf_env import load_triton_first, set_environment as set_tensorflow_environment

ROOT = Path(__file__).resolve().parents[1]
USIIGACI = Path(os.environ.get("MSCSEG_USIIGACI", ROOT.parent / "shared" / "datasets" / "usiigaci"))

# One process runs the Keras and the torch tests: TensorFlow's environment as the package sets
# it, and triton loaded before TensorFlow (TensorFlow >= 2.19 first, then triton, crashes).
set_tensorflow_environment()
load_triton_first()


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config, items):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    for item in items:
        if "browser" in item.keywords and not browser:
            item.add_marker(pytest.mark.skip(reason="headless Chromium not installed (apt-get install chromium)"))
        if "realdata" in item.keywords and not USIIGACI.is_dir():
            item.add_marker(pytest.mark.skip(reason=f"real data not found at {USIIGACI}"))
        if "gpu" in item.keywords and not _has_cuda():
            item.add_marker(pytest.mark.skip(reason="no CUDA GPU"))


@pytest.fixture(scope="session")
def usiigaci_root() -> Path:
    if not USIIGACI.is_dir():
        pytest.skip(f"real data not found at {USIIGACI}")
    return USIIGACI


@pytest.fixture(scope="session")
def synthetic_folder(tmp_path_factory) -> Path:
    """A small folder-pairs synthetic dataset (12 images, 64x64, sparse), made once per session."""
    from data.synthetic import write_dataset

    folder = tmp_path_factory.mktemp("synthetic")
    write_dataset(folder, n_images=12, size=64, density="sparse", seed=0)
    return folder


@pytest.fixture(scope="module")
def torch_one_thread():
    """One torch thread for a module: on a shared 2-core machine torch's thread pool spins, and one thread is faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """No network and empty Keras, torch and SAM caches under ``tmp_path``: every pretrained file is missing."""
    import keras_semseg.weights
    import torch_instseg.weights

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("MSCSEG_SAM_DIR", str(tmp_path / "sam"))
    monkeypatch.setattr(keras_semseg.weights, "_can_reach", lambda *args, **kwargs: False)

    def no_network(url, destination):
        raise OSError("offline")

    monkeypatch.setattr(torch_instseg.weights, "_download", no_network)
    return tmp_path

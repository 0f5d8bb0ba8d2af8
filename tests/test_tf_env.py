"""keras_semseg.tf_env: the one TensorFlow import, on the paper's stack and the current one."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from keras_semseg.tf_env import filter_startup_log

ROOT = Path(__file__).resolve().parents[1]
PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
INFO = "I0000 00:00:1795998130.853408    8323 port.cc:153] oneDNN custom operations are on.\n"
WARN = "W0000 00:00:1795998130.854005    8323 cudart_stub.cc:31] Could not find cuda drivers.\n"
ERROR = "E0000 00:00:1795998216.725236    8797 cuda_platform.cc:52] out of memory\n"
NO_GPU = "E0000 00:00:1795998216.725236    8797 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n"
OTHER = "Traceback (most recent call last):\n"


def _clean_environment() -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("TF_USE_LEGACY_KERAS", "SM_FRAMEWORK", "TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY")}
    environment["PYTHONPATH"] = str(ROOT) + os.pathsep + environment.get("PYTHONPATH", "")
    return environment


@pytest.mark.parametrize("level, kept", [
    (0, PREAMBLE + INFO + WARN + ERROR + NO_GPU + OTHER),
    (1, WARN + ERROR + NO_GPU + OTHER),
    (2, ERROR + OTHER),
    (3, OTHER),
])
def test_startup_log_keeps_what_the_level_allows(level, kept):
    assert filter_startup_log(PREAMBLE + INFO + WARN + ERROR + NO_GPU + OTHER, level) == kept


def test_importing_the_package_changes_nothing():
    code = ("import os, sys, keras_semseg, keras_semseg.models, keras_semseg.tf_env, keras_semseg.registry\n"
            "print([os.environ.get(k) for k in ('TF_USE_LEGACY_KERAS', 'SM_FRAMEWORK', 'TF_CPP_MIN_LOG_LEVEL')],"
            " 'tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], env=_clean_environment(), capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[None, None, None] False"


@pytest.mark.slow
def test_tensorflow_is_keras2_quiet_and_torch_imports_after_it():
    pytest.importorskip("tensorflow")
    code = ("import os, importlib.util\n"
            "from keras_semseg.tf_env import tensorflow\n"
            "tf = tensorflow()\n"
            "assert tensorflow() is tf\n"
            "print(float(tf.reduce_sum(tf.ones((2, 2)))))\n"
            "layer = tf.keras.layers.Dense(1)\n"
            "print(type(layer).__module__.split('.')[0], os.environ['SM_FRAMEWORK'], os.environ.get('TF_USE_LEGACY_KERAS'))\n"
            "if importlib.util.find_spec('torchvision'):\n"
            "    import torchvision\n"
            "print('done')\n")
    result = subprocess.run([sys.executable, "-c", code], env=_clean_environment(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.split()
    legacy = "1" if _installed("tf_keras") else "None"
    assert lines == ["4.0", "tf_keras" if _installed("tf_keras") else "keras", "tf.keras", legacy, "done"]
    assert result.stderr == ""


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None

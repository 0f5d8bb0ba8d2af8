"""The one way keras_semseg imports TensorFlow: ``tensorflow()``.

Before TensorFlow loads it sets, in ``os.environ``:

- ``TF_USE_LEGACY_KERAS=1`` when the ``tf-keras`` package is installed: on TensorFlow >= 2.16
  ``tf.keras`` is then Keras 2, the API of TensorFlow 2.15 that segmentation-models 1.0.1 and
  every model here are written for (TensorFlow 2.15 without tf-keras has Keras 2 built in).
- ``SM_FRAMEWORK=tf.keras``: segmentation-models builds on ``tf.keras``.
- ``TF_CPP_MIN_LOG_LEVEL=2`` unless already set, and ``GRPC_VERBOSITY=ERROR``: TensorFlow's
  start-up notices (CPU features, oneDNN, missing CUDA) stay off stderr; errors still show.

It also imports triton first when torch's triton is installed (``load_triton_first``), so
that torch can still be imported later in the same process. Nothing happens when
keras_semseg is imported; only the first ``tensorflow()`` call changes the environment,
which is also the moment TensorFlow is imported.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import sys
import tempfile
from types import ModuleType

from .errors import SemsegError

ABSL_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ :]+:\d+\] (.*)")
ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
HIDDEN_SEVERITIES = {0: "", 1: "I", 2: "IW", 3: "IWE"}
NO_GPU_NOISE = ("failed call to cuInit",)


def set_environment() -> None:
    """Set the variables above (the caller's ``TF_CPP_MIN_LOG_LEVEL`` is kept) without importing anything."""
    if importlib.util.find_spec("tf_keras") is not None:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ["SM_FRAMEWORK"] = "tf.keras"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def filter_startup_log(text: str, min_level: int) -> str:
    """``text`` less absl's pre-initialisation preamble, the absl lines below ``min_level``
    (TF_CPP_MIN_LOG_LEVEL) and, from level 2 on, CUDA's complaint on a machine without a GPU."""
    hidden = HIDDEN_SEVERITIES.get(min_level, "IWE")
    if not hidden:
        return text
    kept = []
    for line in text.splitlines(keepends=True):
        match = ABSL_LINE.match(line)
        if line.rstrip("\n") == ABSL_PREAMBLE:
            continue
        if match and (match.group(1) in hidden or (min_level >= 2 and match.group(2).startswith(NO_GPU_NOISE))):
            continue
        kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def _filtered_stderr_fd():
    """Route file descriptor 2 through ``filter_startup_log`` while TensorFlow loads and finds its devices.

    TensorFlow >= 2.19 logs its start-up notices through absl before absl is initialised,
    which writes every severity to stderr whatever TF_CPP_MIN_LOG_LEVEL says.
    """
    try:
        min_level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        min_level = 0
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        capture = tempfile.TemporaryFile()
    except (OSError, ValueError):
        yield
        return
    try:
        os.dup2(capture.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        capture.seek(0)
        shown = filter_startup_log(capture.read().decode(errors="replace"), min_level)
        capture.close()
        if shown:
            sys.stderr.write(shown)
            sys.stderr.flush()


def _quiet_absl() -> None:
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)


def _keras_version(tf: ModuleType) -> str:
    """Version of the Keras package behind ``tf.keras`` (``tf_keras`` 2.x, ``keras`` 2.15 or ``keras`` 3)."""
    version = getattr(tf.keras, "__version__", None)
    if version is None:
        package = sys.modules.get(tf.keras.__name__.split(".")[0])
        version = getattr(package, "__version__", None)
    return str(version or "unknown")


def load_triton_first() -> None:
    """Import triton (torch's compiler) now if it is installed and TensorFlow is not yet loaded.

    TensorFlow >= 2.19 and triton each carry LLVM; a process that loads TensorFlow first
    crashes (SIGSEGV) when torch later imports triton, while triton first is safe.
    """
    if "tensorflow" in sys.modules or "triton" in sys.modules or importlib.util.find_spec("triton") is None:
        return
    with contextlib.suppress(Exception):
        import triton  # noqa: F401


def make_reproducible(deterministic: bool) -> dict:
    """TensorFlow's op determinism on or off (``deterministic``); returns what run.json records (switch, thread counts).

    The seed itself is set by ``tf.keras.utils.set_random_seed``. With op determinism on,
    ops run in a fixed order and a GPU op with no deterministic kernel raises instead of
    varying; on a CPU the numbers repeat on the same machine, and CPUs of other instruction
    sets may differ in the last bits.
    """
    tf = tensorflow()
    experimental = tf.config.experimental
    if deterministic:
        experimental.enable_op_determinism()
    elif hasattr(experimental, "disable_op_determinism"):
        experimental.disable_op_determinism()
    threads = tf.config.threading
    return {
        "deterministic": bool(deterministic),
        "tf_op_determinism": bool(deterministic),
        "tf_intra_op_threads": threads.get_intra_op_parallelism_threads() or f"TensorFlow's default ({os.cpu_count()} cores)",
        "tf_inter_op_threads": threads.get_inter_op_parallelism_threads() or f"TensorFlow's default ({os.cpu_count()} cores)",
        "cpu_count": os.cpu_count(),
    }


@functools.cache
def tensorflow() -> ModuleType:
    """``import tensorflow`` with ``tf.keras`` = Keras 2 on TensorFlow 2.15 up to the newest.

    Raises SemsegError when TensorFlow is not installed, when it is >= 2.16 and tf-keras is
    not, or when ``tf.keras`` was already set up as Keras 3 before this call.
    """
    set_environment()
    load_triton_first()
    with _filtered_stderr_fd():
        try:
            import tensorflow as tf
        except ModuleNotFoundError as error:
            if error.name == "tensorflow":
                raise SemsegError("TensorFlow is not installed; install the Keras half with: pip install -e .[keras]") from None
            raise
        keras_version = _keras_version(tf)
        tf.config.list_physical_devices("GPU")
    _quiet_absl()
    if not keras_version.startswith("2."):
        if importlib.util.find_spec("tf_keras") is None:
            wanted = ".".join(tf.__version__.split(".")[:2])
            raise SemsegError(f"TensorFlow {tf.__version__} needs tf-keras (Keras 2) for tf.keras: "
                              f"pip install 'tf-keras~={wanted}.0'")
        raise SemsegError(f"tf.keras is Keras {keras_version}: TensorFlow {tf.__version__} was set up before "
                          "mscseg could set TF_USE_LEGACY_KERAS=1; set it before importing TensorFlow")
    return tf

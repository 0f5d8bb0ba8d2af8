"""Where each ImageNet encoder file lives, how it is fetched, and the message when it is missing offline.

The files are the Keras application "notop" weights, kept in the Keras cache
``$KERAS_HOME/models`` (default ``~/.keras/models``) under their exact Keras names.
Online, a missing file is downloaded there by Keras (``keras.utils.get_file``, with its
progress bar), as ``keras.applications`` does. Offline, the message names the file,
the folder and the URL; ``mscseg.pretrained`` lists every missing file of a run at once.
Each file's HDF5 header is checked before use, so a truncated or corrupt file is
reported before training starts.
"""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any

from .errors import SemsegError
from .registry import TENSORFLOW_HINT
from .tf_env import tensorflow

KERAS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
DOWNLOAD_HOST = "storage.googleapis.com"
REACH_TIMEOUT_S = 3.0

APPLICATION_FILES: dict[str, tuple[str, str, str]] = {
    # app: (file name in the Keras cache, URL folder, md5 as in keras.applications)
    "vgg16": ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "vgg16/", "6d6bbae143d832006294945121d1f1fc"),
    "xception": ("xception_weights_tf_dim_ordering_tf_kernels_notop.h5", "xception/", "b0042744bf5b25fce3cb969f33bebb97"),
    "resnet50": ("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "resnet/", "4d473c1dd8becc155b73f8504c6f6626"),
}


def keras_cache_dir() -> Path:
    """The folder Keras keeps application weights in: ``$KERAS_HOME/models`` or ``~/.keras/models``."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def application_file(app: str) -> tuple[str, str]:
    """``(file name, download URL)`` of the ImageNet notop weights of ``app``."""
    if app not in APPLICATION_FILES:
        raise SemsegError(f"no ImageNet weights known for encoder '{app}'; known: {', '.join(APPLICATION_FILES)}")
    file_name, folder, _ = APPLICATION_FILES[app]
    return file_name, KERAS_BASE_URL + folder + file_name


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_weights_file(path: str | Path) -> Path:
    """``SemsegError`` unless ``path`` is a readable HDF5 (Keras .h5) file: signature and root group."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            signature = handle.read(len(HDF5_SIGNATURE))
    except OSError as error:
        raise SemsegError(f"cannot read the weights file ({error.strerror or error})", path) from None
    if signature != HDF5_SIGNATURE:
        raise SemsegError("not a Keras .h5 weights file (no HDF5 signature; truncated or corrupt download?); delete it and retry", path)
    try:
        import h5py
    except ImportError:
        return path
    try:
        with h5py.File(path, "r") as handle:
            list(handle.keys())
    except Exception as error:  # noqa: BLE001 - any HDF5 failure means a corrupt file
        raise SemsegError(f"corrupt Keras .h5 weights file ({type(error).__name__}); delete it and retry", path) from None
    return path


def cached_weights(app: str) -> Path:
    """Where the ImageNet weights of ``app`` are (or would be) in the Keras cache."""
    return keras_cache_dir() / application_file(app)[0]


def fetch_weights(app: str) -> Path | None:
    """The cached ImageNet file of ``app``, downloaded by Keras (progress bar) when missing and online;
    None when it is missing and cannot be downloaded."""
    cached = cached_weights(app)
    if cached.is_file():
        return cached
    if not _can_reach():
        return None
    file_name, url = application_file(app)
    try:
        keras = tensorflow().keras
    except ImportError:
        raise SemsegError(TENSORFLOW_HINT) from None
    try:
        return Path(keras.utils.get_file(file_name, url, cache_subdir="models", file_hash=APPLICATION_FILES[app][2],
                                         cache_dir=str(keras_cache_dir().parent)))
    except Exception:  # noqa: BLE001 - any download failure means "not available"
        return cached if cached.is_file() else None


def missing_weights_message(app: str, reason: str = "not in the Keras cache and cannot be downloaded (offline?)") -> str:
    file_name, url = application_file(app)
    return (
        f"{keras_cache_dir() / file_name}: ImageNet weights for the {app} encoder are {reason}; "
        f"put {file_name} (from {url}) in {keras_cache_dir()}, or pass a local file with --encoder-weights PATH, "
        f"or train from random initialisation with --encoder-weights none"
    )


def _can_reach(host: str = DOWNLOAD_HOST, port: int = 443, timeout: float = REACH_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds (name lookup included)."""
    reached: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                reached.append(True)
        except OSError:
            pass

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(reached)


def keras_application_weights(app: str, encoder_weights: Any) -> str | None:
    """Resolve an ``encoder_weights`` setting to a local ``.h5`` path, or None for random init.

    ``"imagenet"``: the Keras cache file if present, else downloaded by Keras; offline,
    one ``SemsegError`` naming the file, the folder and ``--encoder-weights none``.
    ``None``/``"none"``: None. Any other string: an existing weights file (its
    architecture is checked when it is loaded).
    """
    application_file(app)
    if encoder_weights is None or (isinstance(encoder_weights, str) and encoder_weights.lower() == "none"):
        return None
    if isinstance(encoder_weights, str) and encoder_weights.lower() == "imagenet":
        path = fetch_weights(app)
        if path is None:
            raise SemsegError(missing_weights_message(app))
        return str(check_weights_file(path))
    path = Path(os.path.expanduser(str(encoder_weights)))
    if not path.is_file():
        raise SemsegError(f"{path}: encoder weights file not found; use 'imagenet', 'none' or the path to a Keras .h5 file of {app} weights")
    return str(check_weights_file(path))


def wrong_weights_error(path: str, app: str, error: BaseException) -> SemsegError:
    """The error for a weights file that does not fit the ``app`` encoder."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if len(reason) > 160:
        reason = reason[:157] + "..."
    return SemsegError(f"{path}: not {app} encoder weights (Keras .h5 notop file expected; {reason})")

"""Model name -> builder registry of the semantic study (imports no framework).

Each entry names its builder as a ``"module:function"`` string, imported only when the
model is built. ``target`` says what the model trains on: ``"mask"`` (binary H x W x 1
float32, compiled here with binary cross-entropy) or ``"instances"`` (instance labels
H x W x 1 int32; the model has its own losses and ``compiles_itself``).
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from .errors import SemsegError

TENSORFLOW_HINT = "TensorFlow is not installed; install the Keras half with: pip install -e .[keras]"


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture.

    builder: ``"module:function"``; the function is ``build(input_shape, encoder_weights, **options)``.
    target: ``"mask"`` or ``"instances"``.
    encoder: the Keras application whose ImageNet weights initialise the encoder
    (``"vgg16"``, ``"xception"`` or ``"resnet50"``; see ``keras_semseg.weights``).
    compiles_itself: the model has its own ``train_step``/``test_step`` and losses.
    """

    name: str
    builder: str
    target: str
    encoder: str
    compiles_itself: bool = False
    description: str = ""
    label: str = ""


MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        ModelEntry("unet", "keras_semseg.models.unet:build", "mask", "vgg16", label="U-Net",
                   description="U-Net, VGG16 encoder with skip connections (segmentation_models)"),
        ModelEntry("deeplabv3plus", "keras_semseg.models.deeplabv3plus:build", "mask", "xception", label="DeepLabV3+",
                   description="DeepLabV3+, Xception encoder, output stride 16, ASPP 6/12/18"),
        ModelEntry("segnet", "keras_semseg.models.segnet:build", "mask", "vgg16", label="SegNet",
                   description="SegNet, VGG16-style encoder, decoder unpools at the max-pooling indices"),
        ModelEntry("maskrcnn", "keras_semseg.models.maskrcnn:build", "instances", "resnet50", compiles_itself=True, label="Mask R-CNN",
                   description="Mask R-CNN, ResNet-50 + FPN; its masks scored as one semantic mask"),
    )
}


MODEL_LABELS: dict[str, str] = {name: entry.label for name, entry in MODELS.items()}


def available_models() -> list[str]:
    """Registered model names, in the paper's order."""
    return list(MODELS)


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; ``SemsegError`` listing the valid names otherwise."""
    if name in MODELS:
        return MODELS[name]
    close = difflib.get_close_matches(str(name), list(MODELS), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise SemsegError(f"unknown model '{name}'{hint}; valid models: {', '.join(MODELS)}")


def check_input_shape(input_shape: Any) -> tuple[int, int, int]:
    """``(H, W, 3)`` with H and W positive multiples of 32, as ints; ``SemsegError`` otherwise."""
    try:
        height, width, channels = (int(value) for value in input_shape)
    except (TypeError, ValueError):
        raise SemsegError(f"input shape must be (height, width, 3), got {input_shape!r}") from None
    if channels != 3:
        raise SemsegError(f"models take 3-channel (RGB) input, got {channels} channel(s)")
    for side in (height, width):
        if side < 32 or side % 32:
            raise SemsegError(f"image size must be a positive multiple of 32 (32, 64, ..., 256, ...), got {height}x{width}")
    return height, width, channels


def check_image_size(image_size: Any) -> int:
    """``image_size`` as an int: a positive multiple of 32; ``SemsegError`` otherwise."""
    try:
        size = int(image_size)
    except (TypeError, ValueError):
        raise SemsegError(f"image size must be an integer multiple of 32, got {image_size!r}") from None
    if size != image_size or size < 32 or size % 32:
        raise SemsegError(f"image size must be a positive multiple of 32 (e.g. 128, 256, 512), got {image_size}")
    return size


def get_builder(name: str) -> Callable[..., Any]:
    """Import and return the builder function of ``name`` (this imports TensorFlow)."""
    entry = get_entry(name)
    module_name, function_name = entry.builder.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name in ("tensorflow", "keras"):
            raise SemsegError(TENSORFLOW_HINT) from None
        if error.name == "segmentation_models":
            raise SemsegError("segmentation-models is not installed; install the Keras half with: pip install -e .[keras]") from None
        if error.name and module_name.startswith(error.name):
            raise SemsegError(f"model '{name}' is registered but its module {module_name} is not available in this installation") from None
        raise
    builder = getattr(module, function_name, None)
    if builder is None:
        raise SemsegError(f"model '{name}': {module_name} has no function '{function_name}'")
    return builder


def build(name: str, input_shape: Any = (256, 256, 3), encoder_weights: Any = "imagenet", **options: Any) -> Any:
    """Build registered model ``name`` (a tf.keras.Model taking RGB images in [0, 1], one sigmoid channel out)."""
    shape = check_input_shape(input_shape)
    builder = get_builder(name)
    try:
        inspect.signature(builder).bind(shape, encoder_weights, **options)
    except TypeError as error:
        raise SemsegError(f"model '{name}': bad option(s) {sorted(options)} ({error})") from None
    return builder(shape, encoder_weights, **options)

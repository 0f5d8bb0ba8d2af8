"""Reading and writing micrographs and masks (numpy, tifffile, Pillow; no framework).

Scaling rule for images (``to_float_rgb``), documented in the README:
- uint8 (and bool): divided by 255.
- any other integer type (16-bit and deeper) and floats outside [0, 1]: robust
  percentile scaling, ``(x - p0.5) / (p99.5 - p0.5)`` clipped to [0, 1], with the
  percentiles taken over all pixels and channels of that image. A constant image
  becomes all zeros.
- floats already within [0, 1]: kept as they are.
- grayscale is repeated to three channels; an alpha channel is dropped.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .outputs import replace_atomically

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
MASK_SUFFIXES = (".png", ".tif", ".tiff")
LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5
_PIL_CONVERSIONS = {"LA": "L", "La": "L", "PA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "RGBa": "RGBA"}


def read_array(path: str | Path) -> np.ndarray:
    """Raw pixel array of an image file, as stored (dtype and channels kept)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError("file not found", path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(str(path))
        else:
            from PIL import Image

            with Image.open(path) as handle:
                handle.load()
                if handle.mode in _PIL_CONVERSIONS:
                    handle = handle.convert(_PIL_CONVERSIONS[handle.mode])
                elif handle.mode == "P":
                    handle = handle.convert("RGBA" if "transparency" in handle.info else "RGB")
                array = np.asarray(handle)
    except DatasetError:
        raise
    except Exception as error:  # noqa: BLE001 - any decoder failure is bad input
        missing = missing_codec(error)
        if missing:
            raise DatasetError(missing, path) from None
        raise DatasetError(f"cannot read image ({type(error).__name__}: {error}); the file is unreadable or truncated", path) from None
    array = np.asarray(array)
    if array.size == 0:
        raise DatasetError("image has no pixels", path)
    return array


def missing_codec(error: BaseException) -> str:
    """The one-line message for a decoder error caused by a missing codec package ('' when it is another error).

    tifffile decodes LZW, deflate, zstd, JPEG and other compressed TIFFs through the
    ``imagecodecs`` package and says "<COMPRESSION.LZW: 5> requires the 'imagecodecs'
    package" when it is not installed.
    """
    text = str(error)
    if "imagecodecs" not in text and getattr(error, "name", None) != "imagecodecs":
        return ""
    found = re.search(r"COMPRESSION\.(\w+)", text)
    compression = f"{found.group(1)}-compressed " if found else "compressed "
    return (f"{compression}TIFF: decoding it needs the 'imagecodecs' package, which is not installed "
            "(pip install imagecodecs); the file itself may be fine")


def _channels_last(array: np.ndarray, path: str | Path) -> np.ndarray:
    """H x W or H x W x C (C in 1, 3, 4) from the common layouts."""
    array = np.squeeze(array) if array.ndim > 3 else array
    if array.ndim == 2:
        return array
    if array.ndim == 3:
        if array.shape[-1] in (1, 3, 4):
            return array[..., 0] if array.shape[-1] == 1 else array
        if array.shape[0] in (1, 3, 4) and array.shape[-1] > 4:
            moved = np.moveaxis(array, 0, -1)
            return moved[..., 0] if moved.shape[-1] == 1 else moved
    raise DatasetError(f"unsupported image layout {array.shape}; expected H x W, H x W x 3 or H x W x 4", path)


def to_float_rgb(array: np.ndarray, path: str | Path = "") -> np.ndarray:
    """H x W x 3 float32 in [0, 1] from any raw pixel array (rule in the module docstring)."""
    array = _channels_last(np.asarray(array), path)
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.dtype == np.bool_:
        scaled = array.astype(np.float32)
    elif array.dtype == np.uint8:
        scaled = array.astype(np.float32) / 255.0
    else:
        values = array.astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise DatasetError("image contains NaN or infinite values", path)
        if np.issubdtype(array.dtype, np.floating) and values.min() >= 0.0 and values.max() <= 1.0:
            scaled = values.astype(np.float32)
        else:
            low, high = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
            if high <= low:
                scaled = np.zeros(values.shape, np.float32)
            else:
                scaled = np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)
    if scaled.ndim == 2:
        scaled = np.repeat(scaled[..., None], 3, axis=-1)
    return np.ascontiguousarray(scaled, dtype=np.float32)


def read_image(path: str | Path) -> np.ndarray:
    """H x W x 3 float32 in [0, 1]."""
    return to_float_rgb(read_array(path), path)


_BINARY_NOTED: list[str] = []


class BinaryMaskWarning(UserWarning):
    """A mask with one non-zero value other than 1 or 255 (e.g. 0/7, 0/65535) was read as binary."""


def _components(mask: np.ndarray) -> np.ndarray:
    """8-connected components of an H x W bool mask as int32 labels 1..N."""
    from scipy import ndimage

    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    return labels.astype(np.int32)


def _note_binary(path: str | Path, value: int, n_cells: int) -> None:
    """Say once per process that 2-valued masks are read as binary."""
    if _BINARY_NOTED:
        return
    _BINARY_NOTED.append(str(path))
    import warnings

    warnings.warn(
        f"{path}: mask holds only 0 and {value} in {n_cells} separate regions, so it is read as a binary mask "
        f"(cells = 8-connected regions), not as one cell labelled {value}; other such masks are read the same way",
        BinaryMaskWarning,
        stacklevel=3,
    )


def _value_counts(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values ascending, their pixel counts) of a 2-D mask; a bincount for 8/16-bit masks (no sort)."""
    if array.dtype in (np.uint8, np.uint16):
        counts = np.bincount(array.ravel(), minlength=1)
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(array, return_counts=True)


def _checked_mask(array: np.ndarray, path: str | Path) -> tuple[np.ndarray, bool]:
    """(H x W mask, whether it is binary: values within {0, 1} or {0, 255}); ``DatasetError`` for anything else
    that is not an instance label image (rules in ``mask_to_labels``)."""
    array = np.asarray(array)
    if array.ndim == 3:
        array = _channels_last(array, path)
        if array.ndim == 3:
            channels = array[..., :3]
            if not (np.array_equal(channels[..., 0], channels[..., 1]) and np.array_equal(channels[..., 0], channels[..., 2])):
                raise DatasetError("mask has colour channels that differ; expected a binary mask or a grayscale instance label image", path)
            array = channels[..., 0]
    if array.ndim != 2:
        raise DatasetError(f"mask must be a 2-D image, got shape {array.shape}", path)
    if array.dtype == np.bool_:
        return array, True
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise DatasetError("mask has non-integer values; expected a binary mask (0/1 or 0/255) or an instance label image", path)
    if array.dtype.kind in "ui" and array.size:
        low, high = array.min(), array.max()
        if low >= 0 and (high <= 1 or (high == 255 and not np.any((array > 0) & (array < 255)))):
            return array, True
    values, counts = _value_counts(array)
    if values.size and values[0] < 0:
        raise DatasetError("mask has negative values; expected a binary mask (0/1 or 0/255) or an instance label image", path)
    present = set(values.tolist())
    if present <= {0, 1} or present <= {0, 255}:
        return array, True
    if values[-1] == 255 and values[0] == 0 and counts[-1] > 0.5 * counts[1:].sum():
        raise DatasetError(
            f"mask looks like a binary 0/255 mask but also has {len(values) - 2} other value(s) "
            "(anti-aliased or JPEG-compressed edges?); expected a binary mask (0/1 or 0/255) or an instance label image",
            path,
        )
    if values[-1] > np.iinfo(np.int32).max:
        raise DatasetError("mask label values do not fit in int32", path)
    return array, False


def mask_to_labels(array: np.ndarray, path: str | Path = "") -> np.ndarray:
    """H x W int32 instance labels from a binary mask (0/1 or 0/255) or a label image.

    A binary mask becomes labels by its 8-connected components. So does a mask with a
    single non-zero value (0/7, 0/65535, ...) whose pixels form several separate regions:
    one label id cannot be several cells, so it is a binary mask stored with another
    value (said once, as a ``BinaryMaskWarning``). Raises ``DatasetError``
    for colour masks whose channels differ, negative or non-integer values, and 0/255
    masks with stray in-between values (anti-aliased or JPEG edges: 255 covers more than
    half of the non-zero pixels, which a label image practically never does).
    """
    array, binary = _checked_mask(array, path)
    if binary:
        return _components(array > 0)
    values, _ = _value_counts(array)
    if len(values) == 2 and values[0] == 0:
        labels = _components(array > 0)
        if labels.max() > 1:
            _note_binary(path, int(values[1]), int(labels.max()))
            return labels
    return array.astype(np.int32)


def mask_to_bool(array: np.ndarray, path: str | Path = "") -> np.ndarray:
    """H x W bool cell mask (value > 0) of a binary mask or label image, checked as ``mask_to_labels`` checks it,
    without labelling connected components."""
    array, _ = _checked_mask(array, path)
    return array if array.dtype == np.bool_ else array > 0


def read_labels(path: str | Path) -> np.ndarray:
    """H x W int32 instance labels from a mask file (binary or label image)."""
    return mask_to_labels(read_array(path), path)


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write uint8 (gray or RGB) or uint16 (gray) as PNG, atomically."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array)
    if array.dtype == np.uint16:
        image = Image.fromarray(array.astype(np.uint16))
    elif array.dtype == np.uint8:
        image = Image.fromarray(array)
    else:
        raise ValueError(f"write_png takes uint8 or uint16, got {array.dtype}")
    replace_atomically(path, lambda partial: image.save(partial, format="PNG"))


def write_labels(path: str | Path, labels: np.ndarray) -> None:
    """Instance labels as a 16-bit PNG (or TIFF when the suffix says so); more than 65535 labels need TIFF."""
    path = Path(path)
    labels = np.asarray(labels)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        stored = labels.astype(np.uint16 if labels.max() < 65536 else np.uint32)
        replace_atomically(path, lambda partial: tifffile.imwrite(str(partial), stored))
        return
    if labels.max() > 65535:
        raise ValueError(f"{path}: more than 65535 labels; write a .tif instead")
    write_png(path, labels.astype(np.uint16))


def image_info(path: str | Path) -> dict:
    """Size, dtype, channel count and bit depth of an image file, as stored."""
    array = _channels_last(read_array(path), path)
    bits = 1 if array.dtype == np.bool_ else array.dtype.itemsize * 8
    return {
        "height": int(array.shape[0]),
        "width": int(array.shape[1]),
        "channels": 1 if array.ndim == 2 else int(array.shape[-1]),
        "dtype": str(array.dtype),
        "bit_depth": bits,
    }

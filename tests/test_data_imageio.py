"""Image scaling (8/16-bit, RGB/RGBA, percentiles), mask decoding and file errors."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from data import DatasetError
from data.imageio import image_info, mask_to_labels, read_image, read_labels, to_float_rgb, write_labels, write_png


def test_uint16_percentile_scaling_known_answer():
    raw = np.arange(1000, dtype=np.uint16).reshape(10, 100)
    # numpy's linear percentiles of 0..999: p0.5 = 0.005 * 999 = 4.995, p99.5 = 994.005
    scaled = to_float_rgb(raw)
    assert scaled.shape == (10, 100, 3) and scaled.dtype == np.float32
    assert scaled[0, 0, 0] == 0.0 and scaled[-1, -1, 0] == 1.0
    assert scaled[5, 0, 0] == pytest.approx((500 - 4.995) / (994.005 - 4.995), abs=1e-6)
    assert scaled[0, 4, 0] == 0.0 and scaled[9, 95, 0] == 1.0
    np.testing.assert_array_equal(scaled[..., 0], scaled[..., 2])


def test_scaling_of_other_inputs():
    grey8 = np.array([[0, 51], [255, 102]], np.uint8)
    np.testing.assert_allclose(to_float_rgb(grey8)[..., 1], grey8 / 255.0, atol=1e-7)
    assert not to_float_rgb(np.full((4, 4), 700, np.uint16)).any()
    unit = np.array([[0.0, 0.25], [0.5, 1.0]], np.float64)
    np.testing.assert_allclose(to_float_rgb(unit)[..., 0], unit)
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 7
    out = to_float_rgb(rgba)
    assert out.shape == (2, 2, 3) and (out[..., 0] == 1).all() and not out[..., 1:].any()
    with pytest.raises(DatasetError, match="NaN"):
        to_float_rgb(np.array([[np.nan, 2.0], [3.0, 4.0]]))
    with pytest.raises(DatasetError, match="unsupported image layout"):
        to_float_rgb(np.zeros((4, 4, 2), np.uint8))


def test_read_image_files(tmp_path):
    sixteen = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(sixteen).save(tmp_path / "a.png")
    tifffile.imwrite(str(tmp_path / "a.tif"), sixteen)
    np.testing.assert_allclose(read_image(tmp_path / "a.png"), read_image(tmp_path / "a.tif"))
    assert image_info(tmp_path / "a.png") == {"height": 8, "width": 8, "channels": 1, "dtype": "uint16", "bit_depth": 16}
    grey_alpha = np.stack([np.full((3, 5), 200, np.uint8), np.zeros((3, 5), np.uint8)], axis=-1)
    Image.fromarray(grey_alpha, "LA").save(tmp_path / "la.png")
    np.testing.assert_allclose(read_image(tmp_path / "la.png"), np.full((3, 5, 3), 200 / 255.0), atol=1e-6)
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png")[..., 0], [[0, 1], [1, 0]])
    tifffile.imwrite(str(tmp_path / "planar.tif"), np.zeros((3, 6, 7), np.uint8))
    assert read_image(tmp_path / "planar.tif").shape == (6, 7, 3)


def test_unreadable_and_truncated_files(tmp_path):
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:30])
    tifffile.imwrite(str(tmp_path / "full.tif"), np.zeros((32, 32), np.uint16))
    (tmp_path / "cut.tif").write_bytes((tmp_path / "full.tif").read_bytes()[:12])
    (tmp_path / "text.png").write_text("not an image")
    for name in ("cut.png", "cut.tif", "text.png"):
        with pytest.raises(DatasetError, match="unreadable or truncated") as caught:
            read_image(tmp_path / name)
        assert str(tmp_path / name) in str(caught.value)
    with pytest.raises(DatasetError, match="file not found"):
        read_labels(tmp_path / "absent.png")


def test_binary_mask_becomes_8_connected_components():
    mask = np.zeros((6, 8), np.uint8)
    mask[0:2, 0:2] = 255
    mask[2, 2] = 255          # touches the first blob diagonally: same cell
    mask[4:6, 5:8] = 255
    labels = mask_to_labels(mask)
    assert labels.dtype == np.int32 and labels.max() == 2
    assert labels[0, 0] == labels[2, 2] == 1 and labels[5, 7] == 2
    np.testing.assert_array_equal(mask_to_labels(mask > 0), labels)
    np.testing.assert_array_equal(mask_to_labels(mask // 255), labels)
    assert not mask_to_labels(np.zeros((3, 3), np.uint8)).any()


def test_label_image_kept_as_is():
    labels = np.array([[0, 3, 3], [7, 7, 0], [0, 0, 2]], np.uint16)
    np.testing.assert_array_equal(mask_to_labels(labels), labels)
    rgb = np.repeat(labels[..., None], 3, axis=-1).astype(np.uint8)
    np.testing.assert_array_equal(mask_to_labels(rgb), labels)


@pytest.mark.parametrize(
    "mask, problem",
    [
        (np.dstack([np.zeros((4, 4)), np.ones((4, 4)), np.zeros((4, 4))]).astype(np.uint8), "colour channels that differ"),
        (np.array([[0, -1], [2, 3]], np.int16), "negative values"),
        (np.array([[0.0, 0.5], [1.0, 1.0]]), "non-integer values"),
        (np.array([[0, 255, 255, 255], [0, 128, 255, 255], [0, 3, 255, 255]], np.uint8), "anti-aliased or JPEG"),
        (np.zeros((2, 3, 4, 5), np.uint8), "2-D image"),
    ],
)
def test_mask_values_neither_binary_nor_labels(mask, problem, tmp_path):
    with pytest.raises(DatasetError, match=problem) as caught:
        mask_to_labels(mask, tmp_path / "m.png")
    assert str(tmp_path / "m.png") in str(caught.value)


def test_write_labels_round_trip(tmp_path):
    labels = np.array([[0, 1, 300], [65535, 2, 0]], np.int32)
    write_labels(tmp_path / "l.png", labels)
    np.testing.assert_array_equal(read_labels(tmp_path / "l.png"), labels)
    big = labels.copy()
    big[0, 0] = 70000
    with pytest.raises(ValueError, match="more than 65535"):
        write_labels(tmp_path / "big.png", big)
    write_labels(tmp_path / "big.tif", big)
    np.testing.assert_array_equal(read_labels(tmp_path / "big.tif"), big)
    write_png(tmp_path / "rgb.png", np.zeros((2, 2, 3), np.uint8))
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(ValueError):
        write_png(tmp_path / "f.png", np.zeros((2, 2), np.float32))


@pytest.mark.parametrize("compression", ["lzw", "deflate", "zstd"])
def test_compressed_tiffs_round_trip(compression, tmp_path):
    pytest.importorskip("imagecodecs")
    raw = (np.arange(48 * 40, dtype=np.uint16).reshape(48, 40) * 31) % 4096
    path = tmp_path / f"{compression}.tif"
    tifffile.imwrite(str(path), raw, compression=compression)
    with tifffile.TiffFile(str(path)) as handle:
        assert handle.pages[0].compression.name.lower().startswith(compression[:4])
    np.testing.assert_array_equal(read_labels(path), raw.astype(np.int32))
    np.testing.assert_array_equal(read_image(path), to_float_rgb(raw))
    assert image_info(path)["dtype"] == "uint16"


def test_missing_codec_names_the_package(tmp_path, monkeypatch):
    path = tmp_path / "lzw.tif"
    tifffile.imwrite(str(path), np.zeros((8, 8), np.uint16), compression="lzw" if _has_imagecodecs() else None)

    def imread_without_codecs(*args, **kwargs):
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile, "imread", imread_without_codecs)
    with pytest.raises(DatasetError) as caught:
        read_image(path)
    message = str(caught.value)
    assert str(path) in message and "pip install imagecodecs" in message and "LZW-compressed TIFF" in message
    assert "unreadable or truncated" not in message and "\n" not in message


def _has_imagecodecs() -> bool:
    import importlib.util

    return importlib.util.find_spec("imagecodecs") is not None

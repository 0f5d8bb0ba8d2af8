"""data.units: the pixel size of ImageJ TIFFs and OME-TIFFs, --pixel-size, cell measurements in µm; the data summary."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from data.errors import DatasetError
from data.imageio import write_png
from data.units import (
    SOURCE_GIVEN, SOURCE_IMAGEJ, SOURCE_OME, PixelSize, given_pixel_size, pixel_size_for, read_pixel_size, with_micrometres,
)
from mscseg.predict import measure_cells


def ten_by_ten() -> np.ndarray:
    """A 20 x 20 image with one 10 x 10 px cell."""
    image = np.zeros((20, 20), np.uint8)
    image[5:15, 4:14] = 200
    return image


def cell_area_um2(path) -> float:
    image = tifffile.imread(path)
    labels = (image > 0).astype(np.int32)
    return float(measure_cells(labels, "x", pixel_size=read_pixel_size(path))["area_um2"].iloc[0])


@pytest.mark.parametrize("unit, per_unit", [("um", 2.0), ("micron", 2.0), ("\\u00B5m", 2.0), ("nm", 0.002), ("mm", 2000.0)])
def test_imagej_tiff_pixel_size(tmp_path, unit, per_unit):
    path = tmp_path / "imagej.tif"
    tifffile.imwrite(path, ten_by_ten(), imagej=True, resolution=(per_unit, per_unit), metadata={"unit": unit})
    size = read_pixel_size(path)
    assert size == PixelSize(pytest.approx(0.5), pytest.approx(0.5), SOURCE_IMAGEJ)
    assert cell_area_um2(path) == pytest.approx(25.0)      # 10 x 10 px at 0.5 µm/px


def test_imagej_tiff_with_rectangular_pixels(tmp_path):
    path = tmp_path / "imagej.tif"
    tifffile.imwrite(path, ten_by_ten(), imagej=True, resolution=(4.0, 2.0), metadata={"unit": "micron"})
    size = read_pixel_size(path)
    assert (size.x_um, size.y_um) == (pytest.approx(0.25), pytest.approx(0.5))
    assert cell_area_um2(path) == pytest.approx(12.5)


@pytest.mark.parametrize("unit, value", [(None, 0.5), ("\u00b5m", 0.5), ("nm", 500.0)])
def test_ome_tiff_pixel_size(tmp_path, unit, value):
    path = tmp_path / "image.ome.tif"
    metadata = {"axes": "YX", "PhysicalSizeX": value, "PhysicalSizeY": value}
    if unit:
        metadata.update(PhysicalSizeXUnit=unit, PhysicalSizeYUnit=unit)
    tifffile.imwrite(path, ten_by_ten(), ome=True, metadata=metadata)
    size = read_pixel_size(path)
    assert size.source == SOURCE_OME and size.x_um == pytest.approx(0.5) and size.y_um == pytest.approx(0.5)
    assert cell_area_um2(path) == pytest.approx(25.0)


def test_files_without_a_pixel_size(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", ten_by_ten())
    tifffile.imwrite(tmp_path / "dpi.tif", ten_by_ten(), resolution=(72.0, 72.0), resolutionunit="INCH")
    tifffile.imwrite(tmp_path / "pixels.tif", ten_by_ten(), imagej=True, resolution=(1.0, 1.0), metadata={"unit": "pixel"})
    write_png(tmp_path / "image.png", ten_by_ten())
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    for name in ("plain.tif", "dpi.tif", "pixels.tif", "image.png", "broken.tif", "missing.tif"):
        assert read_pixel_size(tmp_path / name) is None, name
    labels = (ten_by_ten() > 0).astype(np.int32)
    cells = measure_cells(labels, "x")
    assert "area_um2" not in cells.columns and with_micrometres(cells, labels, None) is cells


def test_given_pixel_size_wins_and_is_checked(tmp_path):
    path = tmp_path / "imagej.tif"
    tifffile.imwrite(path, ten_by_ten(), imagej=True, resolution=(2.0, 2.0), metadata={"unit": "um"})
    given = given_pixel_size([0.25])
    assert given == PixelSize(0.25, 0.25, SOURCE_GIVEN) and pixel_size_for(path, given) is given
    assert pixel_size_for(path).source == SOURCE_IMAGEJ and pixel_size_for(None) is None
    assert given_pixel_size([0.2, 0.4]) == PixelSize(0.2, 0.4, SOURCE_GIVEN) and given_pixel_size(None) is None
    for bad in ([0.0], [-1.0], [1.0, 2.0, 3.0], [float("nan")], [float("inf")]):
        with pytest.raises(DatasetError, match="--pixel-size takes one or two positive numbers"):
            given_pixel_size(bad)


def test_micrometre_columns_known_answers():
    labels = np.zeros((30, 30), np.int32)
    labels[2:12, 3:13] = 1                                 # 10 x 10 px
    labels[20:24, 5:25] = 2                                # 4 x 20 px
    cells = measure_cells(labels, "x", pixel_size=PixelSize(0.5, 0.5, "test")).set_index("cell")
    assert cells.loc[1, "area_um2"] == pytest.approx(25.0) and cells.loc[2, "area_um2"] == pytest.approx(20.0)
    assert cells.loc[1, "perimeter_um"] == pytest.approx(cells.loc[1, "perimeter_px"] * 0.5)
    assert cells.loc[2, "major_axis_um"] == pytest.approx(0.5 * 4 * np.sqrt((20 ** 2 - 1) / 12))
    assert cells.loc[2, "minor_axis_um"] == pytest.approx(0.5 * 4 * np.sqrt((4 ** 2 - 1) / 12))
    assert (cells["pixel_size_source"] == "test").all()
    # Rectangular pixels (0.5 high, 0.1 wide): the 4 x 20 px cell is 2 x 2 µm; axes from moments in µm.
    tall = measure_cells(labels, "x", pixel_size=PixelSize(0.5, 0.1, "test")).set_index("cell")
    assert tall.loc[2, "area_um2"] == pytest.approx(4.0)
    assert tall.loc[2, "major_axis_um"] == pytest.approx(4 * np.sqrt(max((4 ** 2 - 1) / 12 * 0.25, (20 ** 2 - 1) / 12 * 0.01)))
    assert tall.loc[2, "minor_axis_um"] == pytest.approx(4 * np.sqrt(min((4 ** 2 - 1) / 12 * 0.25, (20 ** 2 - 1) / 12 * 0.01)))


def test_data_summary_reports_the_pixel_size(tmp_path, capsys):
    from data.__main__ import main
    from data.summary import COLUMNS

    for folder in ("calibrated", "plain"):
        (tmp_path / folder / "images").mkdir(parents=True)
    for name, per_um in (("a", 2.0), ("b", 4.0)):
        tifffile.imwrite(tmp_path / "calibrated" / "images" / f"{name}.tif", ten_by_ten(), imagej=True,
                         resolution=(per_um, per_um), metadata={"unit": "um"})
        write_png(tmp_path / "calibrated" / "masks" / f"{name}.png", ten_by_ten())
        write_png(tmp_path / "plain" / "images" / f"{name}.png", ten_by_ten())
        write_png(tmp_path / "plain" / "masks" / f"{name}.png", ten_by_ten())
    assert main(["summary", str(tmp_path / "calibrated"), "--csv", str(tmp_path / "c.csv")]) == 0
    printed = capsys.readouterr().out
    frame = pd.read_csv(tmp_path / "c.csv")
    assert frame["pixel_size_x_um"].tolist() == [0.5, 0.25] and set(frame["pixel_size_source"]) == {SOURCE_IMAGEJ}
    assert frame["mean_cell_area_um2"].tolist() == [25.0, 6.25]
    assert "pixel size: 0.5 \u00b5m/pixel (ImageJ TIFF metadata) (1), 0.25 \u00b5m/pixel (ImageJ TIFF metadata) (1)" in printed
    assert main(["summary", str(tmp_path / "plain"), "--csv", str(tmp_path / "p.csv")]) == 0
    assert "pixel size: none (sizes in pixels)" in capsys.readouterr().out
    assert list(pd.read_csv(tmp_path / "p.csv").columns) == COLUMNS
    assert main(["summary", str(tmp_path / "plain"), "--pixel-size", "0.1", "--csv", str(tmp_path / "g.csv")]) == 0
    assert "pixel size: 0.1 \u00b5m/pixel (--pixel-size) (2)" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "g.csv")["mean_cell_area_um2"].tolist() == pytest.approx([1.0, 1.0])
    assert main(["summary", str(tmp_path / "plain"), "--pixel-size", "0"]) == 2
    assert "--pixel-size takes one or two positive numbers" in capsys.readouterr().err

"""Synthetic MSC-like phase-contrast micrographs with instance labels.

The embedded default dataset of the demo and the tests. Each image has a grey
background with uneven illumination and noise; cells are spindle-shaped
(fibroblast-like MSCs), stellate (with processes) or polygonal (flattened), each
slightly darker than the background with a bright phase-contrast halo. Cell length
varies 20-50 "um" at 1 um per pixel for a 256-pixel image (scaled with the image
size). Density runs from sparse (about 8 cells, like the rat MSC set) to dense
(about 40, touching and overlapping, like the human MSC set); where cells overlap
the one drawn later lies on top in the label image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import DatasetError
from .sample import Sample

DENSITIES = {"sparse": 8.0, "medium": 20.0, "dense": 40.0}
SHAPES = ("spindle", "stellate", "polygonal")
SHAPE_WEIGHTS = (0.55, 0.25, 0.20)
REFERENCE_SIZE = 256
LENGTH_RANGE_UM = (20.0, 50.0)


def cells_per_image(density: str | float) -> float:
    """Mean cell count for a density name ('sparse', 'medium', 'dense') or a number."""
    if isinstance(density, str):
        if density not in DENSITIES:
            try:
                return float(density)
            except ValueError:
                raise DatasetError(f"unknown density '{density}'; use one of {', '.join(DENSITIES)} or a number of cells") from None
        return DENSITIES[density]
    if density <= 0:
        raise DatasetError(f"density must be positive, got {density}")
    return float(density)


def _cell_mask(shape: str, length: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of one cell in its own box, centred, randomly oriented."""
    half = int(np.ceil(length * 0.75)) + 2
    v, u = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    x = u * np.cos(angle) + v * np.sin(angle)
    y = -u * np.sin(angle) + v * np.cos(angle)
    if shape == "spindle":
        a = length / 2.0
        b = a / rng.uniform(2.5, 5.0)
        bend = rng.uniform(-0.15, 0.15) * (x / a) ** 2 * a
        profile = np.clip(1.0 - np.abs(x / a) ** rng.uniform(1.3, 2.0), 0.0, None) ** 0.8
        return (np.abs(x) < a) & (np.abs(y - bend) < b * profile)
    radius = np.hypot(x, y)
    phi = np.arctan2(y, x)
    if shape == "stellate":
        r0 = length * rng.uniform(0.16, 0.22)
        r = np.full_like(phi, r0)
        for _ in range(rng.integers(3, 6)):
            centre = rng.uniform(-np.pi, np.pi)
            reach = rng.uniform(0.35, 0.5) * length
            width = rng.uniform(0.15, 0.3)
            d = np.angle(np.exp(1j * (phi - centre)))
            r = np.maximum(r, r0 + (reach - r0) * np.exp(-(d / width) ** 2))
        return radius < r
    r0 = length * rng.uniform(0.3, 0.4)
    r = np.full_like(phi, r0)
    for k in (2, 3, 5):
        r += r0 * rng.uniform(0.03, 0.12) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return radius < r


def _background(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    gradient = rng.uniform(-0.08, 0.08) * (xx - 0.5) + rng.uniform(-0.08, 0.08) * (yy - 0.5)
    cy, cx = rng.uniform(0.3, 0.7, size=2)
    vignette = -rng.uniform(0.03, 0.1) * ((xx - cx) ** 2 + (yy - cy) ** 2)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, size), sigma=max(h, w) / 16) * 0.2
    return rng.uniform(0.42, 0.55) + gradient + vignette + texture


def generate_sample(
    size: int | tuple[int, int] = 256,
    density: str | float = "sparse",
    seed: int | None = 0,
    name: str = "synthetic",
    n_cells: int | None = None,
) -> Sample:
    """One synthetic micrograph: image H x W x 3 float32 in [0, 1], labels H x W int32.

    ``n_cells`` fixes the number of cells drawn; otherwise it is Poisson with the
    density's mean (at least 1). A cell hidden almost completely by later cells
    (fewer than 15 visible pixels at 256 px) is dropped from the labels.
    """
    h, w = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if h < 16 or w < 16:
        raise DatasetError(f"synthetic images must be at least 16x16, got {w}x{h}")
    rng = np.random.default_rng(seed)
    scale = max(h, w) / REFERENCE_SIZE
    count = n_cells if n_cells is not None else max(1, int(rng.poisson(cells_per_image(density))))
    intensity = _background((h, w), rng)
    effect = np.zeros((h, w))
    labels = np.zeros((h, w), np.int32)
    for label in range(1, count + 1):
        shape = SHAPES[rng.choice(len(SHAPES), p=SHAPE_WEIGHTS)]
        length = rng.uniform(*LENGTH_RANGE_UM) * scale * (1.6 if shape == "spindle" else 1.0)
        cell = _cell_mask(shape, length, rng)
        half = cell.shape[0] // 2
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        y0, x0 = cy - half, cx - half
        ys0, xs0 = max(y0, 0), max(x0, 0)
        ys1, xs1 = min(y0 + cell.shape[0], h), min(x0 + cell.shape[1], w)
        piece = cell[ys0 - y0:ys1 - y0, xs0 - x0:xs1 - x0]
        if not piece.any():
            continue
        inside = ndimage.distance_transform_edt(piece)
        outside = ndimage.distance_transform_edt(~piece)
        halo_width = max(1.0, 1.5 * scale)
        body = -rng.uniform(0.06, 0.14) * (1.0 - np.exp(-inside / (2.5 * scale + 0.5)))
        nucleus_y, nucleus_x = np.argwhere(inside == inside.max())[0]
        yy, xx = np.mgrid[0:piece.shape[0], 0:piece.shape[1]]
        nucleus_radius = max(1.5, 4.0 * scale)
        nucleus = -0.08 * np.exp(-((yy - nucleus_y) ** 2 + (xx - nucleus_x) ** 2) / (2 * nucleus_radius ** 2)) * piece
        halo = rng.uniform(0.15, 0.3) * np.exp(-outside / halo_width) * (~piece)
        region = (slice(ys0, ys1), slice(xs0, xs1))
        effect[region] = np.where(piece, body + nucleus, effect[region] + halo)
        labels[region][piece] = label
    minimum_area = max(3, int(round(15 * scale * scale)))
    ids, areas = np.unique(labels, return_counts=True)
    keep = ids[(ids > 0) & (areas >= minimum_area)]
    relabel = np.zeros(count + 1, np.int32)
    relabel[keep] = np.arange(1, len(keep) + 1)
    labels = relabel[labels]
    image = ndimage.gaussian_filter(intensity + effect, sigma=0.7)
    image += rng.normal(0.0, 0.02, (h, w))
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    return Sample(image=np.repeat(image[..., None], 3, axis=-1), labels=labels, name=name, source="")


def generate(
    n_images: int = 40,
    size: int | tuple[int, int] = 256,
    density: str | float = "sparse",
    seed: int = 0,
    prefix: str = "syn",
) -> list[Sample]:
    """``n_images`` samples named ``<prefix>_0000`` ...; image i uses seed ``(seed, i)``."""
    return [generate_sample(size, density, seed=_image_seed(seed, i), name=f"{prefix}_{i:04d}") for i in range(n_images)]


def _image_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def write_dataset(
    folder: str | Path,
    n_images: int = 40,
    size: int | tuple[int, int] = 256,
    density: str | float = "sparse",
    seed: int = 0,
    prefix: str = "syn",
    bit_depth: int = 8,
    overwrite: bool = False,
) -> Path:
    """Write a folder-pairs dataset: ``images/<stem>.png`` (8- or 16-bit) + ``masks/<stem>.png`` (16-bit labels).

    The same samples as ``generate``, made one at a time. With ``overwrite`` an existing
    ``images/`` and ``masks/`` are replaced whole; on error nothing changes.
    """
    from .imageio import write_labels, write_png
    from .outputs import staged_folders

    folder = Path(folder)
    if bit_depth not in (8, 16):
        raise DatasetError(f"bit depth must be 8 or 16, got {bit_depth}")
    for part in ("images", "masks"):
        if (folder / part).is_dir() and any((folder / part).iterdir()) and not overwrite:
            raise DatasetError("folder already holds a dataset; pass --overwrite to replace it", folder)
    cells_per_image(density)
    with staged_folders(folder, ("images", "masks")) as staged:
        for index in range(n_images):
            sample = generate_sample(size, density, seed=_image_seed(seed, index), name=f"{prefix}_{index:04d}")
            grey = sample.image[..., 0]
            pixels = (grey * 255 + 0.5).astype(np.uint8) if bit_depth == 8 else (grey * 65535 + 0.5).astype(np.uint16)
            write_png(staged["images"] / f"{sample.name}.png", pixels)
            write_labels(staged["masks"] / f"{sample.name}.png", sample.labels)
    return folder

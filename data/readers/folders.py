"""Folder pairs: ``images/<stem>.<png|tif|jpg>`` + ``masks/<stem>.<png|tif>``."""
from __future__ import annotations

from pathlib import Path

from ..dataset import Dataset, Entry
from ..errors import DatasetError
from ..imageio import IMAGE_SUFFIXES, MASK_SUFFIXES, read_image, read_labels


def _by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes and not path.name.startswith("."):
            if path.stem in files:
                raise DatasetError(f"two files share the stem '{path.stem}' ({files[path.stem].name} and {path.name})", folder)
            files[path.stem] = path
    return files


def detect(path: Path) -> bool:
    return path.is_dir() and (path / "images").is_dir() and (path / "masks").is_dir()


def read(path: str | Path, images: str = "images", masks: str = "masks") -> Dataset:
    """Pair every image with the mask of the same stem; unpaired files are an error."""
    root = Path(path)
    image_dir, mask_dir = root / images, root / masks
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DatasetError(f"expected a folder '{folder.name}/' (folder-pairs layout: images/ and masks/)", folder)
    image_files = _by_stem(image_dir, IMAGE_SUFFIXES)
    mask_files = _by_stem(mask_dir, MASK_SUFFIXES)
    if not image_files and not mask_files:
        raise DatasetError("dataset folder is empty: no images in images/ and no masks in masks/", root)
    lonely_images = sorted(set(image_files) - set(mask_files))
    lonely_masks = sorted(set(mask_files) - set(image_files))
    if lonely_images:
        first = image_files[lonely_images[0]]
        raise DatasetError(f"image has no mask in {mask_dir} ({len(lonely_images)} image(s) without a mask: {', '.join(lonely_images[:10])})", first)
    if lonely_masks:
        first = mask_files[lonely_masks[0]]
        raise DatasetError(f"mask has no image in {image_dir} ({len(lonely_masks)} mask(s) without an image: {', '.join(lonely_masks[:10])})", first)
    entries = [
        Entry(
            name=stem,
            source=str(image_files[stem]),
            load_image=lambda p=image_files[stem]: read_image(p),
            load_labels=lambda p=mask_files[stem]: read_labels(p),
            mask_source=str(mask_files[stem]),
        )
        for stem in sorted(image_files)
    ]
    return Dataset(entries, str(root), "folders")

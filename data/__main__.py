"""``python -m data`` (``mscseg-data``): make the synthetic set, convert a dataset to folder
pairs, make a train/validation split, print a summary.

    python -m data synth --out synthetic_data --n 40 --size 256 --density sparse --seed 0
    python -m data convert SRC --format via --out DIR
    python -m data convert SRC --format ctc --to coco --out gt.json
    python -m data split DATASET --out split.json --seed 0 --val-fraction 0.2
    python -m data summary DATASET --format per_sample --image-name raw.tif --mask-name instances_ids.png

Reader options (``--format``, ``--images``, ``--image-name``, ...) go before or after the
subcommand. Bad input prints one line ``error: <file>: <problem>`` and exits with 2.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .cli import add_dataset_arguments, make_parser, open_dataset, run_cli
from .dataset import Dataset, load_entry
from .errors import DatasetError
from .imageio import IMAGE_SUFFIXES, read_array, write_labels, write_png
from .outputs import check_can_write, staged_folders, write_csv
from .split import make_split, read_split, write_split

CONVERT_TARGETS = ("folders", "coco")


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "mscseg-data",
        description="Make the synthetic set, convert a dataset to folder pairs, make a train/validation split, print a summary.",
    )
    add_dataset_arguments(parser, data=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{synth,convert,split,summary}")

    synth = commands.add_parser("synth", help="write the synthetic dataset as folder pairs")
    synth.add_argument("--out", required=True, type=Path, help="output folder (gets images/ and masks/)")
    synth.add_argument("--n", type=int, default=40, help="number of images (default 40)")
    synth.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    synth.add_argument("--density", default="sparse", help="sparse (~8 cells), medium (~20), dense (~40) or a mean cell count")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--bit-depth", type=int, choices=(8, 16), default=8)
    synth.add_argument("--overwrite", action="store_true", help="replace images/ and masks/ if they exist")

    convert = commands.add_parser("convert", help="convert any supported dataset to folder pairs (images/, masks/ 16-bit PNG labels) "
                                  "or to one COCO instances JSON")
    convert.add_argument("source", type=Path)
    convert.add_argument("--out", required=True, type=Path, help="output folder (--to folders) or JSON file (--to coco)")
    convert.add_argument("--to", choices=CONVERT_TARGETS, default="folders",
                         help="folders: images/ and masks/ (default); coco: COCO instances JSON with RLE masks "
                         "(file_name = image stem, area and bbox as pycocotools computes them), for python -m torch_instseg.evaluate")
    convert.add_argument("--overwrite", action="store_true", help="replace images/ and masks/ if they exist")
    add_dataset_arguments(convert, data=None, default=argparse.SUPPRESS)

    split = commands.add_parser("split", help="write a deterministic train/validation split (JSON); an existing one is reused")
    split.add_argument("dataset", type=Path)
    split.add_argument("--out", required=True, type=Path, help="split file, e.g. results/run/split.json")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--val-fraction", type=float, default=0.2)
    split.add_argument("--overwrite", action="store_true", help="make a new split even if the file exists")
    add_dataset_arguments(split, data=None, default=argparse.SUPPRESS)

    summary = commands.add_parser("summary", help="print images, sizes, bit depths and cells per image")
    summary.add_argument("dataset", type=Path)
    summary.add_argument("--csv", type=Path, help="also write the per-image table here")
    summary.add_argument("--overwrite", action="store_true", help="replace an existing --csv file")
    summary.add_argument("--pixel-size", nargs="+", type=float, metavar="UM",
                         help="pixel size in \u00b5m for every image: one value, or two (height then width); default: read "
                         "from ImageJ / OME-TIFF metadata")
    add_dataset_arguments(summary, data=None, default=argparse.SUPPRESS)
    return parser


def _write_image_like_source(source: Path, folder: Path, name: str) -> None:
    """Keep the image file as it is (copied) when the folder reader takes its type, else write a PNG/TIFF."""
    suffix = source.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        shutil.copyfile(source, folder / f"{name}{suffix}")
        return
    array = read_array(source)
    if array.dtype in (np.uint8, np.uint16) and (array.ndim == 2 or (array.dtype == np.uint8 and array.shape[-1] in (3, 4))):
        write_png(folder / f"{name}.png", array)
    else:
        import tifffile

        tifffile.imwrite(str(folder / f"{name}.tif"), array)


def convert(dataset: Dataset, out: Path, overwrite: bool = False) -> Path:
    """Write ``out/images/<stem>.<ext>`` (the original file) and ``out/masks/<stem>.png`` (16-bit labels).

    Each sample is loaded and checked first; on any error nothing is left behind.
    """
    check_can_write(out, overwrite)
    with staged_folders(out, ("images", "masks")) as staged:
        for entry in dataset.entries:
            sample = load_entry(entry)
            labels_suffix = ".png" if sample.labels.max() <= 65535 else ".tif"
            if entry.source and Path(entry.source).is_file():
                _write_image_like_source(Path(entry.source), staged["images"], entry.name)
            else:
                write_png(staged["images"] / f"{entry.name}.png", (sample.image * 255 + 0.5).astype(np.uint8))
            write_labels(staged["masks"] / f"{entry.name}{labels_suffix}", sample.labels)
    return out


def _synth(args: argparse.Namespace) -> int:
    from .synthetic import cells_per_image, write_dataset

    if args.n < 1:
        raise DatasetError(f"--n must be at least 1, got {args.n}")
    density: Any = args.density
    cells_per_image(density)
    check_can_write(args.out, args.overwrite)
    write_dataset(args.out, n_images=args.n, size=args.size, density=density, seed=args.seed, bit_depth=args.bit_depth, overwrite=args.overwrite)
    print(f"wrote {args.n} synthetic images ({args.size}x{args.size}, {args.density}, {args.bit_depth}-bit, seed {args.seed}) to {args.out}/images and {args.out}/masks")
    return 0


def convert_to_coco(dataset: Dataset, out: Path, overwrite: bool = False) -> dict:
    """Write ``out`` (a COCO instances JSON: one RLE annotation per labelled cell); every sample is loaded before writing."""
    from .coco_codec import dataset_to_coco, write_coco

    check_can_write(out, overwrite)
    coco = dataset_to_coco(load_entry(entry) for entry in dataset.entries)
    write_coco(out, coco)
    return coco


def _convert(args: argparse.Namespace) -> int:
    check_can_write(args.out, args.overwrite)
    dataset = open_dataset(args, args.source)
    if args.to == "coco":
        coco = convert_to_coco(dataset, args.out, args.overwrite)
        print(f"converted {len(dataset)} samples ({dataset.format}, {len(coco['annotations'])} cells) to COCO instances {args.out}")
        return 0
    convert(dataset, args.out, args.overwrite)
    print(f"converted {len(dataset)} samples ({dataset.format}) to {args.out}/images and {args.out}/masks")
    return 0


def _split(args: argparse.Namespace) -> int:
    dataset = open_dataset(args, args.dataset)
    if args.out.exists() and not args.overwrite:
        split = read_split(args.out, dataset.names)
        asked = {"seed": args.seed, "val_fraction": args.val_fraction}
        differ = [key for key, value in asked.items() if key in split and split[key] != value]
        if differ:
            held = ", ".join(f"{key} {split[key]}" for key in differ)
            raise DatasetError(
                f"split file exists with {held}; it is reused, never regenerated: ask for the same values or pass --overwrite", args.out
            )
        unlisted = len(set(dataset.names) - set(split["train"]) - set(split["val"]))
        note = f"; {unlisted} image(s) of the dataset are in neither side" if unlisted else ""
        print(f"reusing existing split {args.out}: {len(split['train'])} train, {len(split['val'])} val{note}")
        return 0
    split = make_split(dataset.names, args.val_fraction, args.seed, str(args.dataset))
    write_split(args.out, split, overwrite=args.overwrite)
    print(f"wrote {args.out}: {len(split['train'])} train, {len(split['val'])} val (seed {args.seed})")
    return 0


def _summary(args: argparse.Namespace) -> int:
    from .summary import summarize, summary_text
    from .units import given_pixel_size

    pixel_size = given_pixel_size(args.pixel_size)
    if args.csv is not None:
        check_can_write(args.csv, args.overwrite)
    dataset = open_dataset(args, args.dataset)
    frame = summarize(dataset, pixel_size)
    print(f"dataset: {dataset.root} (format {dataset.format})")
    print(summary_text(frame))
    if args.csv is not None:
        write_csv(args.csv, frame)
    return 0


COMMANDS = {"synth": _synth, "convert": _convert, "split": _split, "summary": _summary}


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

"""The one command layer: every console script's ``main`` runs through ``run_cli``.

Bad input (any ``MscsegError``) and operating-system errors on inputs or outputs
become one line on stderr and exit status 2; Ctrl-C exits with 130. Anything else
is a bug and keeps its traceback. The folder locks a command took (``data.lock.lock_output_folder``)
are released when it ends. Usage errors of a parser made by ``make_parser``
are bad input too (one line, exit 2). The dataset arguments (``--data``,
``--format`` and each reader's options) are declared once, in ``add_dataset_arguments``.
"""
from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import MscsegError
from .lock import command_lock_count, release_command_locks

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

READER_OPTIONS: dict[str, tuple[str, str]] = {
    "images": ("--images", "folder of the images (via, coco) or name of the image sub-folder (folders)"),
    "masks": ("--masks", "name of the mask sub-folder (folders)"),
    "image_name": ("--image-name", "image file name in each sample folder (per_sample), e.g. raw.tif"),
    "mask_name": ("--mask-name", "mask file or folder name in each sample folder (per_sample), e.g. instances_ids.png"),
    "sequences": ("--sequences", "CTC sequences to read, e.g. 01,02 (ctc; default: all with annotations)"),
    "truth": ("--truth", "CTC annotation folder (ctc; default GT)"),
    "category": ("--category", "keep only this COCO category, by name or id (coco)"),
    "crowd": ("--crowd", "COCO iscrowd annotations (coco; default instance: one region each)"),
}
READER_CHOICES: dict[str, tuple[str, ...]] = {"truth": ("GT", "ST"), "crowd": ("instance", "skip", "error")}


class UsageError(MscsegError):
    """A command line argparse rejects (unknown option, missing argument, bad choice)."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are ``UsageError`` (one line through ``run_cli``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def one_line(error: BaseException, limit: int | None = None) -> str:
    """``error`` as a single line (white space folded), cut to ``limit`` characters."""
    if isinstance(error, OSError) and not isinstance(error, MscsegError):
        where = error.filename if error.filename is not None else None
        text = f"{where}: {error.strerror or error}" if where else str(error.strerror or error)
        if error.errno == errno.ENOSPC:
            text += "; the outputs written before are unchanged: free some space and run the same command again"
    else:
        text = str(error)
    text = " ".join(text.split()) or type(error).__name__
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 3, 0)] + "..."
    return text


def run_cli(
    main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None, resume_hint: str = ""
) -> int:
    """Call ``main(argv)``; return its status, or print one line and return 2 (bad input) or 130 (Ctrl-C,
    with ``resume_hint`` after "interrupted")."""
    held = command_lock_count()
    try:
        return int(main(argv) or 0)
    except (MscsegError, OSError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"interrupted{'; ' + resume_hint if resume_hint else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        release_command_locks(held)


def make_parser(prog: str, description: str | None = None, **options: Any) -> ArgumentParser:
    """A parser named after the installed console script (``prog``), with one-line usage errors."""
    return ArgumentParser(prog=prog, description=description, **options)


def add_dataset_arguments(parser: argparse.ArgumentParser, data: str | None = "--data", default: Any = None) -> None:
    """Declare the dataset arguments: the dataset path (``--data``, or a positional when ``data`` has
    no dashes, or none when ``None``), ``--format`` and every reader option.

    ``default=argparse.SUPPRESS`` lets a sub-command repeat the options without hiding
    values given before the sub-command.
    """
    from .readers import available_formats

    if data is not None and data.startswith("-"):
        parser.add_argument(data, dest="data", required=True, type=Path, help="dataset folder or file (any format data.read_dataset reads)")
    elif data is not None:
        parser.add_argument(data, type=Path, help="dataset folder or file (any format data.read_dataset reads)")
    group = parser.add_argument_group("dataset reading")
    group.add_argument("--format", choices=available_formats(), default=default, help="dataset format (default: detected)")
    for dest, (flag, help_text) in READER_OPTIONS.items():
        group.add_argument(flag, dest=dest, default=default, choices=READER_CHOICES.get(dest), help=help_text)


def dataset_options(args: argparse.Namespace) -> dict[str, Any]:
    """The reader options given on the command line (those not given are left out)."""
    return {dest: getattr(args, dest) for dest in READER_OPTIONS if getattr(args, dest, None) is not None}


def open_dataset(args: argparse.Namespace, path: str | Path | None = None):
    """Read the dataset named by the dataset arguments (``path`` replaces ``args.data``)."""
    from .readers import read_dataset

    return read_dataset(args.data if path is None else path, format=getattr(args, "format", None), **dataset_options(args))

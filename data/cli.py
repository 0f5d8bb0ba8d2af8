"""The one command layer: every console script's ``main`` runs through ``run_cli``.

Bad input (any ``MscsegError``) and operating-system errors on inputs or outputs
become one line on stderr and exit status 2; Ctrl-C exits with 130. Anything else
is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from .errors import MscsegError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def one_line(error: BaseException, limit: int | None = None) -> str:
    """``error`` as a single line (white space folded), cut to ``limit`` characters."""
    if isinstance(error, OSError) and not isinstance(error, MscsegError):
        where = error.filename if error.filename is not None else None
        text = f"{where}: {error.strerror or error}" if where else str(error.strerror or error)
    else:
        text = str(error)
    text = " ".join(text.split()) or type(error).__name__
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 3, 0)] + "..."
    return text


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; return its status, or print one line and return 2 (bad input) or 130 (Ctrl-C)."""
    try:
        return int(main(argv) or 0)
    except (MscsegError, OSError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` named after the installed console script (``prog``)."""
    return argparse.ArgumentParser(prog=prog, description=description)

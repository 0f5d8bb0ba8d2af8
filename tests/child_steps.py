"""Steps that run in a process of their own, for tests of mscseg.run (``--steps child_steps:build``)."""
from __future__ import annotations

import os
import time

from data import DatasetError
from mscseg.steps import Framework, Step


def _write(ctx) -> None:
    print(f"child pid {os.getpid()} ran {ctx.step} with image_size {ctx.settings.semantic.image_size}")
    (ctx.layout.root / "child_ok.txt").write_text(str(os.getpid()))


def _bad(ctx) -> None:
    raise DatasetError("image has no pixels", "img_7.png")


def _crash(ctx) -> None:
    raise ValueError("boom in the child")


def _abort(ctx) -> None:
    print("about to abort", flush=True)
    os.abort()


def _sleep(ctx) -> None:
    (ctx.layout.root / "sleeping.txt").write_text(str(os.getpid()))
    time.sleep(120)


def build(settings) -> list[Step]:
    def output(name):
        return lambda layout: [layout.root / f"{name}.txt"]

    return [
        Step("child_ok", (), output("child_ok"), ("semantic.image_size",), _write, Framework.TORCH),
        Step("child_bad", (), output("child_bad"), (), _bad, Framework.TENSORFLOW),
        Step("child_crash", (), output("child_crash"), (), _crash, Framework.TORCH),
        Step("child_abort", (), output("child_abort"), (), _abort, Framework.TORCH),
        Step("child_sleep", (), output("child_sleep"), (), _sleep, Framework.TORCH),
    ]

"""notebooks/kaggle_run_all.ipynb, run as a Kaggle user runs it, on a simulated Kaggle (nbclient, this Python as the kernel).

The simulated ``/kaggle`` is a temporary folder: ``input/`` (made read-only) holds a code
dataset (a copy of this working tree), the semantic dataset ``msu-smooth-1-20``, a CTC
folder ``Fluo-C2DL-MSC`` and a SAM checkpoint named ``model.pth`` as Kaggle Models serves
it; ``working/`` is writable. The install cell's commands are recorded, not run, for
Kaggle's image (``test_kaggle.KAGGLE_IMAGE``: Python 3.12, its TensorFlow with Keras 3, a
CUDA 12.8 torch). The parameter cell is followed by injected values (papermill's
convention): the tiny preset with two semantic models and one SAM prompt mode, no GPU
required. The kernel is the suite's own Python, so this runs on whichever stack runs the tests.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from test_kaggle import KAGGLE_IMAGE

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "kaggle_run_all.ipynb"
OVERRIDES = {"semantic": {"models": ["unet", "segnet"]},
             "instance": {"sam": {"modes": ["box"]}, "sam_finetune": {"modes": ["box"], "prompt_sources": ["maskrcnn"]}}}


def test_notebook_structure():
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1
    for line in ('KAGGLE_ROOT = "/kaggle"', 'CONFIG_BASE = "paper"', 'DATASET = "auto"', 'INSTANCE_DATASET = "auto"',
                 'SAM_CHECKPOINT = "auto"', "GPUS = 1", "REQUIRE_GPU = True", "KEEP_WEIGHTS = False", 'WORK = "/tmp/mscseg"'):
        assert line in tagged[0].source
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code" and cell not in tagged]
    lengths = sorted(len(source.splitlines()) for source in code)
    assert lengths[-1] <= 16 and lengths[-2] <= 9  # the cell that finds the code, then thin ones
    assert all("kaggle" in source for source in code)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")


def test_a_stop_in_the_notebook_is_one_line_and_ends_run_all():
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbformat.v4 import new_code_cell, new_notebook

    notebook = new_notebook(cells=[
        new_code_cell(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom mscseg import kaggle\nkaggle.one_line_errors()"),
        new_code_cell("raise kaggle.KaggleError('torch has no kernels for the Tesla P100: switch the accelerator')"),
        new_code_cell("print('not reached')")])
    with pytest.raises(CellExecutionError):
        NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    assert notebook.cells[1].outputs == [{"output_type": "stream", "name": "stderr",
                                          "text": "KaggleError: torch has no kernels for the Tesla P100: switch the accelerator\n"}]
    assert not notebook.cells[2].get("outputs")


def _copy_project(target: Path) -> None:
    """This working tree's files as git sees them (tracked and untracked, not ignored), as a code dataset holds them."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def _write_ctc(folder: Path) -> None:
    """A Cell Tracking Challenge training folder: 01/tNNN.tif (16-bit) and 01_GT/SEG/man_segNNN.tif (labels)."""
    import tifffile

    from data.synthetic import generate

    for index, sample in enumerate(generate(8, 64, "medium", seed=2)):
        for path, array in ((folder / "01" / f"t{index:03d}.tif", (sample.image[..., 0] * 65535).astype(np.uint16)),
                            (folder / "01_GT" / "SEG" / f"man_seg{index:03d}.tif", sample.labels.astype(np.uint16))):
            path.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(path, array)


def _kaggle_tree(root: Path) -> dict[str, Path]:
    import torch

    from data.synthetic import write_dataset
    from torch_instseg.sam import build_sam

    inputs = root / "input"
    paths = {"code": inputs / "mscseg-code" / "mscseg", "semantic": inputs / "msu-smooth-1-20",
             "ctc": inputs / "fluo-c2dl-msc" / "Fluo-C2DL-MSC", "sam": inputs / "segment-anything" / "pytorch" / "vit-tiny" / "1" / "model.pth"}
    _copy_project(paths["code"])
    write_dataset(paths["semantic"], n_images=8, size=64, density="sparse", seed=1)
    _write_ctc(paths["ctc"])
    paths["sam"].parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(build_sam("vit_tiny", "none", device="cpu").state_dict(), paths["sam"])
    (root / "working").mkdir()
    for path in [inputs, *inputs.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return paths


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """{file: (size, mtime)} of ``folder``, less __pycache__ (which Kaggle's read-only mount would refuse and Python skips)."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if "__pycache__" not in p.parts}


@pytest.mark.slow
def test_notebook_runs_on_a_simulated_kaggle(tmp_path, monkeypatch, torch_one_thread):
    import nbformat
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell

    root, work = tmp_path / "kaggle", tmp_path / "tmp" / "mscseg"
    paths = _kaggle_tree(root)
    before = _snapshot(root / "input")
    image = tmp_path / "kaggle_image.json"
    image.write_text(json.dumps({"python": "3.12.11", "packages": KAGGLE_IMAGE}))
    record = tmp_path / "install_commands.txt"
    monkeypatch.setenv("MSCSEG_KAGGLE_PACKAGES", str(image))
    monkeypatch.setenv("MSCSEG_KAGGLE_RECORD", str(record))
    monkeypatch.delenv("MSCSEG_CALLER_CWD", raising=False)

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    position = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    injected = "\n".join([f"KAGGLE_ROOT = {str(root)!r}", "CONFIG_BASE = 'tiny'", "REQUIRE_GPU = False",
                          f"WORK = {str(work)!r}", f"OVERRIDES = {OVERRIDES!r}"])
    notebook.cells.insert(position + 1, new_code_cell(injected, metadata={"tags": ["injected-parameters"]}))
    client = NotebookClient(notebook, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(root / "working")}})
    try:
        client.execute()
    finally:
        for path in [root / "input", *(root / "input").rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
        keep = os.environ.get("MSCSEG_NOTEBOOK_OUT")
        if keep:
            nbformat.write(notebook, keep)

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    copy = root / "working" / "mscseg"
    assert f"project: {copy} (from {paths['code']})" in text
    for what, key in (("semantic dataset", "semantic"), ("instance dataset (CTC)", "ctc"), ("SAM checkpoint", "sam")):
        assert f"{what}: {paths[key]} (found)" in text
    assert "will run: Python " in text and "(REQUIRE_GPU is off: runs on the CPU)" in text

    commands = [shlex.split(line) for line in record.read_text().splitlines()]
    assert len(commands) == 2 and commands[1][-2:] == ["-e", str(copy)] and "--no-deps" in commands[1]
    packages = commands[0][commands[0].index("-c") + 2:]
    assert packages[0] == "tf-keras~=2.20.0" and "segment-anything>=1.0" in packages and "pycocotools>=2.0.7" in packages
    assert not [p for p in packages if p.split("[")[0].split("=")[0].split(">")[0] in ("tensorflow", "torch", "torchvision", "numpy")]
    constraints = Path(commands[0][commands[0].index("-c") + 1]).read_text().split()
    assert "torch==2.8.0" in constraints and "tensorflow==2.20.0" in constraints and "nvidia-cudnn-cu12==9.10.2.21" in constraints

    config = json.loads((root / "working" / "results" / "kaggle.json").read_text())
    assert config["instance"]["sam"] == {"checkpoint": str(paths["sam"]), "variant": "vit_tiny", "modes": ["box"]}
    assert config["instance"]["sam_finetune"]["checkpoint"] == str(paths["sam"])
    assert config["instance"]["dataset"] == {"path": str(paths["ctc"]), "format": "ctc"}
    output = root / "working" / "results" / "kaggle"
    settings = json.loads((output / "config.json").read_text())["settings"]
    assert settings["instance"]["dataset"]["path"] == str(paths["ctc"]) and settings["semantic"]["dataset"]["path"] == str(paths["semantic"])
    assert (output / "report.html").stat().st_size > 10_000 and (output / "instance" / "instance_table.csv").is_file()
    saved = [p.name for p in output.rglob("*") if p.is_file()]
    assert not [name for name in saved if name.endswith((".pth", ".pt", ".weights.h5", ".optimizer.npz"))]
    assert (work / "kaggle" / "instance" / "sam_finetune" / "best.pth").is_file()
    html = [o for o in outputs if o.output_type == "display_data" and "iframe srcdoc" in o.get("data", {}).get("text/html", "")]
    assert len(html) == 1
    assert _snapshot(root / "input") == before

"""notebooks/kaggle_run_all.ipynb runs top to bottom (nbclient, this Python as the kernel).

The parameter cell is followed by injected values (papermill's convention): no Kaggle, no
installs, the tiny preset, and the session's tiny results folder, so the run cell finds
every step done and only remakes the report; then the report is displayed. The kernel is the
suite's own Python, so this runs on whichever stack (paper or current) runs the tests.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import pytest

from mscseg.config import load_config
from mscseg.steps import build_steps

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "kaggle_run_all.ipynb"


def test_notebook_structure():
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1 and "KAGGLE = True" in tagged[0].source
    assert "/kaggle/input/msu-smooth-1-20" in tagged[0].source and "sam_vit_h_4b8939.pth" in tagged[0].source
    text = "\n".join(cell.source for cell in notebook.cells)
    assert "TF_USE_LEGACY_KERAS" in text and "tf-keras" in text and "report.html" in text
    assert "if KAGGLE and NEEDS_LEGACY_KERAS" not in text and 'locked_version("tensorflow")' in text
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path_factory, tmp_path):
    import nbformat
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell

    from test_mscseg_run import ensure_tiny_run

    results = ensure_tiny_run(tmp_path_factory)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    position = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    injected = "\n".join([
        "KAGGLE = False", "INSTALL = False", f"PROJECT = {str(ROOT)!r}", "CONFIG_BASE = 'tiny'", "DATASET = None",
        "INSTANCE_DATASET = None", "DATASET_FORMAT = None", "SAM_CHECKPOINT = None", f"RESULTS = {str(results)!r}", "RUN_NAME = 'tiny'",
        "OVERRIDES = {}",
    ])
    notebook.cells.insert(position + 1, new_code_cell(injected, metadata={"tags": ["injected-parameters"]}))
    client = NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    executed = tmp_path / "kaggle_run_all.executed.ipynb"
    nbformat.write(notebook, executed)
    keep = os.environ.get("MSCSEG_NOTEBOOK_OUT")
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, keep)

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "INSTALL is off" in text
    assert f"Python {platform.python_version()} at {sys.executable}" in text
    assert ("TF_USE_LEGACY_KERAS=1" in text) == (sys.version_info[:2] > (3, 11))
    n_steps = len(build_steps(load_config("tiny")))
    assert text.count("skipped (up to date)") == n_steps and "running" not in text
    html = [o for o in outputs if o.output_type == "display_data" and "iframe srcdoc" in o.get("data", {}).get("text/html", "")]
    assert len(html) == 1 and "Demonstration run" in html[0]["data"]["text/html"]
    assert json.loads((results / "config.json").read_text())["settings"]["source"].endswith("tiny.json")

"""Same seed, same numbers: the determinism switches, what run.json records, and the tiny run made twice."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

TABLES = ("semantic/sweep/per_image.csv", "semantic/sweep/table1.csv", "semantic/stats/tests.csv",
          "instance/instance_table.csv")


def test_torch_switches_follow_the_setting_and_are_recorded(monkeypatch):
    import torch

    from torch_instseg.reproducible import CUBLAS_WORKSPACE, make_reproducible

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        on = make_reproducible(True)
        assert on["deterministic"] and on["torch_deterministic_algorithms"] and on["cudnn_deterministic"]
        assert not on["cudnn_benchmark"] and on["cublas_workspace_config"] == CUBLAS_WORKSPACE
        assert on["torch_threads"] == torch.get_num_threads() >= 1
        off = make_reproducible(False)
        assert not off["deterministic"] and not off["torch_deterministic_algorithms"] and not off["cudnn_deterministic"]
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def test_deterministic_is_declared_once_and_reaches_every_trainer():
    from dataclasses import fields

    from keras_semseg.settings import TrainSettings
    from mscseg.config import load_config
    from torch_instseg.settings import FinetuneSettings, MaskRCNNSettings

    for cls in (TrainSettings, MaskRCNNSettings, FinetuneSettings):
        found = {f.name: f for f in fields(cls)}["deterministic"]
        assert found.default is True and found.metadata["stamped_at_default"] is False
    settings = load_config("paper")
    assert settings.semantic.deterministic and settings.instance.deterministic and settings.instance.sam_finetune.deterministic


def _numeric_equal(first: pd.DataFrame, second: pd.DataFrame, where: str) -> None:
    assert list(first.columns) == list(second.columns) and len(first) == len(second), where
    for column in first.columns:
        if pd.api.types.is_numeric_dtype(first[column]):
            np.testing.assert_allclose(second[column].to_numpy(float), first[column].to_numpy(float), rtol=0, atol=1e-12,
                                       equal_nan=True, err_msg=f"{where}: {column}")
        else:
            assert first[column].astype(str).tolist() == second[column].astype(str).tolist(), f"{where}: {column}"


@pytest.mark.slow
def test_tiny_run_twice_gives_the_same_tables(tmp_path_factory, tmp_path):
    from mscseg import run as runner
    from test_mscseg_run import ensure_tiny_run

    first = ensure_tiny_run(tmp_path_factory)
    second = tmp_path / "again"
    assert runner.main(["--config", "tiny", "--out", str(second)]) == 0
    per_method = sorted(p.relative_to(first).as_posix() for p in first.glob("instance/eval/*/*/per_image.csv"))
    assert per_method, "the tiny run wrote no per-image instance scores"
    for name in (*TABLES, *per_method):
        _numeric_equal(pd.read_csv(first / name), pd.read_csv(second / name), name)
    for run in ("semantic/unet", "instance/maskrcnn", "instance/sam_finetune"):
        recorded = json.loads((second / run / "run.json").read_text())["details"]["reproducibility"]
        assert recorded["deterministic"] is True and recorded["cpu_count"] >= 1, run

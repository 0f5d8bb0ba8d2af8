"""mscseg-predict on a peer's run folder (issue 26): a Cellpose or StarDist run is a model like the others.

The run folder is the one ``mscseg-run`` wrote with the stand-in peer of ``test_peers_run`` (no hand-made
run folders); the real peers' folders come from the tiny end-to-end run (``test_mscseg_run``).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mscseg import predict
from mscseg.layout import Layout
from test_peers_run import ensure_fake_peer_run, patch_peers

def test_a_peer_gets_each_image_at_its_own_size_as_in_training_and_scale_is_relative_to_that(monkeypatch):
    import types

    import numpy as np

    import peers

    seen = []

    def predict_labels(model, image):
        seen.append(image.shape)
        labels = np.zeros(image.shape[:2], np.int32)
        labels[4:20, 4:20], labels[30:34, 30:34] = 1, 2
        return labels, np.array([0.9, 0.2])

    monkeypatch.setattr(peers, "peer_module", lambda name: types.SimpleNamespace(predict_labels=predict_labels))
    geometry = {"native_height": 64, "native_width": 64, "scale_y": 0.5, "scale_x": 0.5, "cell_area_px": {"p1": 40.0}}
    loaded = predict.LoadedModel("peer", "cellpose", None, None, Path("."), geometry)
    image = np.zeros((64, 64, 3), np.float32)
    options = predict.PredictOptions()
    settings = predict.resolve_settings(loaded, options)
    assert (settings.scaling.scale_y, settings.min_area, settings.tile_px) == (0.5, 20, (0, 0))
    labels, scores, probability, tiles = predict.label_image(loaded, image, 0.5, settings.scaling, (0, 0), (0, 0), 0, None)
    assert seen == [(64, 64, 3)] and probability is None and tiles == 1
    assert scores == {1: 0.9} and int((labels == 1).sum()) == 256 and labels.max() == 1
    halved = predict.resolve_settings(loaded, predict.PredictOptions(scale=0.25))
    labels, scores, _, _ = predict.label_image(loaded, image, 0.0, halved.scaling, (0, 0), (0, 0), 0, None)
    assert seen[-1] == (32, 32, 3) and labels.shape == (64, 64) and scores == {1: 0.9, 2: 0.2} and halved.min_area == 80


@pytest.fixture(scope="module")
def peer_run(tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        patch_peers(monkeypatch, missing=("stardist",))
        return ensure_fake_peer_run(tmp_path_factory, monkeypatch)     # the patches end with the run


@pytest.fixture
def patched(monkeypatch):
    return patch_peers(monkeypatch, missing=("stardist",))


def _val_images(root: Path) -> list[str]:
    layout = Layout(root)
    names = json.loads(layout.split_json("instance").read_text())["val"]
    return [str(next((layout.synthetic_data("instance") / "images").glob(f"{name}.*"))) for name in names]


@pytest.mark.slow
def test_a_peer_run_gives_counts_cells_overlays_exports_and_the_same_coco_results_as_the_run(peer_run, patched, tmp_path,
                                                                                            capsys):
    from torch_instseg.evaluate import instance_table

    layout = Layout(peer_run)
    out = tmp_path / "out"
    coco = tmp_path / "cells.json"
    code = predict.main(["--model", str(layout.peer_run("cellpose")), "--images", *_val_images(peer_run), "--out", str(out),
                         "--coco", str(coco), "--coco-gt", str(layout.prediction("gt")), "--rois", "--geojson"])
    assert code == 0, capsys.readouterr().err
    counts = pd.read_csv(out / "counts.csv")
    names = json.loads(layout.split_json("instance").read_text())["val"]
    assert list(counts["image"]) == names and (counts["kind"] == "peer").all() and (counts["model"] == "cellpose").all()
    assert counts["cell_count"].sum() > 0 and (counts["confluence"] < 0.9).all() and (counts["tiles"] == 1).all()
    for name in names:
        for path in (f"masks/{name}.png", f"labels/{name}.png", f"overlays/{name}.png", f"cells/{name}.csv",
                     f"rois/{name}.zip", f"geojson/{name}.geojson"):
            assert (out / path).is_file(), path
        cells = pd.read_csv(out / "cells" / f"{name}.csv")
        assert len(cells) == counts.set_index("image").loc[name, "cell_count"] and cells["score"].notna().all()
    record = json.loads((out / "predict.json").read_text())
    assert record["kind"] == "peer" and record["threshold"] == 0.0 and "cellpose" in record["threshold_source"]
    assert record["tile_handling"].startswith("whole images") and record["scale"] == 1.0
    meta = json.loads(coco.with_name("cells.meta.json").read_text())
    assert meta["score_source"] == patched["cellpose"].SCORE_SOURCE
    table = instance_table(layout.prediction("gt"), {"predict": coco, "run": layout.prediction("cellpose")}, max_dets=100)
    assert table["mAP"].iloc[0] == pytest.approx(table["mAP"].iloc[1], abs=1e-12) and table["AP50"].iloc[0] > 0.05


@pytest.mark.slow
def test_threshold_drops_low_scores_and_whole_image_options_are_refused(peer_run, patched, tmp_path, capsys):
    run_dir = str(Layout(peer_run).peer_run("cellpose"))
    image = _val_images(peer_run)[:1]
    assert predict.main(["--model", run_dir, "--images", *image, "--out", str(tmp_path / "all")]) == 0
    assert predict.main(["--model", run_dir, "--images", *image, "--out", str(tmp_path / "high"), "--threshold", "0.5"]) == 0
    every = pd.read_csv(next((tmp_path / "all" / "cells").glob("*.csv")))
    high = pd.read_csv(next((tmp_path / "high" / "cells").glob("*.csv")))
    assert len(high) == (every["score"] >= 0.5).sum() and sorted(high["score"]) == sorted(every["score"][every["score"] >= 0.5])
    capsys.readouterr()
    for extra, text in ((["--which", "last"], "gives its best weights only"), (["--tile", "64"], "predicts whole images")):
        assert predict.main(["--model", run_dir, "--images", *image, "--out", str(tmp_path / "x"), *extra]) == 2
        error = capsys.readouterr().err
        assert text in error and error.count("\n") == 1


@pytest.mark.slow
def test_a_missing_peer_package_is_one_line(peer_run, monkeypatch, tmp_path, capsys):
    patch_peers(monkeypatch, missing=("cellpose",))
    code = predict.main(["--model", str(Layout(peer_run).peer_run("cellpose")), "--images", *_val_images(peer_run)[:1],
                         "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2 and "peer 'cellpose' needs the Python package 'cellpose'" in error and error.count("\n") == 1


@pytest.mark.slow
def test_the_peers_bench_puts_every_method_side_by_side(peer_run, patched, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("peers_bench", Path(__file__).resolve().parents[1] / "benches" / "compare_instance_methods.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main([str(peer_run), "--out", str(tmp_path / "bench"), "--in-process"]) == 0
    summary = pd.read_csv(tmp_path / "bench" / "summary.csv").set_index("method")
    table = pd.read_csv(Layout(peer_run).instance_table)
    assert list(summary.index) == ["maskrcnn", "sam_box", "cellpose", "stardist"]
    cellpose = summary.loc["cellpose"]
    row = table[(table["method"] == "cellpose") & (table["interpolation"] == 101)].iloc[0]
    assert cellpose["mAP_101"] == pytest.approx(row["mAP"]) and cellpose["counted_from"] == "mscseg-predict"
    assert cellpose["predict_s_per_image"] > 0 and cellpose["train_cpu_min"] > 0
    assert summary.loc["sam_box", "counted_from"].startswith("results") and pd.isna(summary.loc["sam_box", "train_cpu_min"])
    assert "needs the Python package 'stardist'" in summary.loc["stardist", "absent"]
    per_image = pd.read_csv(tmp_path / "bench" / "per_image.csv")
    mine = per_image[per_image["method"] == "cellpose"]
    counts = pd.read_csv(tmp_path / "bench" / "predict" / "cellpose" / "counts.csv")
    assert sorted(mine["cells_found"]) == sorted(counts["cell_count"])
    gt = json.loads(Layout(peer_run).prediction("gt").read_text())
    annotated = pd.Series([a["image_id"] for a in gt["annotations"]]).value_counts()
    assert sorted(mine["cells"]) == sorted(annotated.reindex([i["id"] for i in gt["images"]], fill_value=0))
    assert (mine["count_error"] == (mine["cells_found"] - mine["cells"]).abs()).all()
    assert cellpose["count_error"] == pytest.approx(mine["count_error"].mean())


@pytest.mark.slow
@pytest.mark.parametrize("peer", ["cellpose", "stardist"])
def test_the_real_peers_runs_of_the_tiny_preset_predict_like_any_model(peer, tmp_path_factory, tmp_path, capsys):
    from test_mscseg_run import ensure_tiny_run

    from mscseg.steps import absent_methods

    root = ensure_tiny_run(tmp_path_factory)
    layout = Layout(root)
    absent = absent_methods(layout, [peer])
    if absent:
        pytest.skip(f"{peer} is absent in this environment: {absent[peer]}")
    images = _val_images(root)
    coco = tmp_path / "cells.json"
    code = predict.main(["--model", str(layout.peer_run(peer)), "--images", *images, "--out", str(tmp_path / "out"),
                         "--coco", str(coco), "--coco-gt", str(layout.prediction("gt"))])
    assert code == 0, capsys.readouterr().err
    counts = pd.read_csv(tmp_path / "out" / "counts.csv")
    assert len(counts) == len(images) and (counts["kind"] == "peer").all() and (counts["model"] == peer).all()
    for name in counts["image"]:
        assert (tmp_path / "out" / "overlays" / f"{name}.png").is_file() and (tmp_path / "out" / "cells" / f"{name}.csv").is_file()
    run_meta = json.loads(layout.prediction_meta(peer).read_text())
    assert json.loads(coco.with_name("cells.meta.json").read_text())["score_source"] == run_meta["score_source"]
    assert json.loads((tmp_path / "out" / "predict.json").read_text())["model"] == peer

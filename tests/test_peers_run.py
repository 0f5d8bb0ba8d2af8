"""The peers in mscseg-run (issue 26): config sections built from each peer's settings class, one step per
enabled peer, and the peers' rows in the instance table, per-image AP tests, figure and report; a peer
whose package is missing is marked absent with its reason, never left out in silence.

The plumbing is tested with a small stand-in peer (``FakePeer``): it follows the contract of
``peers/__init__.py`` (run.json through ``data.lifecycle``, COCO results through ``peers.write_results``)
and "learns" an intensity threshold from the training images. ``peers.peer_module`` is patched to return
it, and the peer steps run in the runner's process so that the patch reaches them.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import peers
from data.settings import Problem, setting
from mscseg import run as runner
from mscseg.config import PEER_NAMES, enabled_peers, from_mapping, load_config, peer_section
from mscseg.errors import RunError
from mscseg.layout import Layout
from mscseg.steps import Framework, build_steps, instance_methods, stamp_hashes


@dataclass
class FakeSettings:
    """The contract's minimum of a peer's settings."""

    weights: str | None = setting("none", "none = random init")
    epochs: int = setting(2, "epochs")
    batch_size: int = setting(2, "images per step")
    lr: float = setting(0.1, "learning rate")
    seed: int = setting(0, "seed")
    max_minutes: float | None = setting(None, "time budget")
    deterministic: bool = setting(True, "same numbers for the same seed", stamped_at_default=False)

    def problems(self) -> list[Problem]:
        found = []
        if not isinstance(self.epochs, int) or self.epochs < 1:
            found.append(("epochs", f"must be a whole number of at least 1, got {self.epochs!r}"))
        if not self.lr > 0:
            found.append(("lr", f"must be positive, got {self.lr}"))
        return found


def _grey(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, np.float64).mean(axis=2)


def fake_peer(name: str, package_missing: bool = False) -> types.ModuleType:
    """A peer module that learns which side of which grey level the training cells lie on (a real, tiny learner)."""
    from scipy import ndimage

    from data.lifecycle import EpochSteps, RunControl, RunSpec, open_run, run_epochs
    from data.outputs import check_can_write, write_json

    module = types.ModuleType(f"fake_{name}")
    module.NAME, module.SCORE_SOURCE, module.SETTINGS = name, f"{name}: contrast of the cell to the threshold", FakeSettings

    def versions() -> dict:
        return {f"fake-{name}": "1.0"}

    def train(settings, dataset, split, out_dir, control=None) -> dict:
        if package_missing:
            peers.require_package(name)
        control = control or RunControl()
        spec = RunSpec(trainer=name, model=name, settings=dataclasses.asdict(settings), split=split, epochs=settings.epochs,
                       must_match=("weights", "seed"), files=("run.json", "history.csv", "best.json"),
                       resume_files=("best.json",), max_minutes=settings.max_minutes)
        run = open_run(out_dir, spec, control.resume, control.overwrite)
        if run.done:
            return run.record.to_dict()
        train = [dataset.get(n) for n in split["train"]]
        grey = np.concatenate([_grey(s.image).ravel() for s in train])
        cells = np.concatenate([(s.labels > 0).ravel() for s in train])
        candidates = np.quantile(grey, np.linspace(0.02, 0.98, 49))
        state = {}

        def fit(epoch: int) -> dict:
            best = (-1.0, 0.0, 1)
            for threshold in candidates[epoch - 1::settings.epochs]:
                for side in (1, -1):
                    mask = side * (grey - threshold) > 0
                    iou = (mask & cells).sum() / max(1, (mask | cells).sum())
                    best = max(best, (float(iou), float(threshold), side))
            state.update(iou=best[0], threshold=best[1], side=best[2])
            return {"loss": 1.0 - best[0]}

        def save(epoch: int, improved: bool, monitored: float) -> None:
            if improved:
                write_json(Path(out_dir) / "best.json", {"threshold": state["threshold"], "side": state["side"]})

        run.start({"versions": versions(), "weights_source": "random (nothing to start from)"})
        return run_epochs(run, EpochSteps(train=fit, evaluate=lambda epoch: None, save=save))

    def load(run_dir, device=None) -> dict:
        if package_missing:
            peers.require_package(name)
        return json.loads((Path(run_dir) / "best.json").read_text())

    def predict_labels(model, image):
        mask = model["side"] * (_grey(image) - model["threshold"]) > 0
        mask = ndimage.binary_opening(mask, iterations=1)
        labels, count = ndimage.label(mask)
        grey = _grey(image)
        scores = np.array([min(1.0, abs(grey[labels == k].mean() - model["threshold"]) * 10) for k in range(1, count + 1)])
        return labels.astype(np.int32), scores

    def predict_to_coco(run_dir, dataset, names, gt, out_json, device=None, overwrite=False, max_detections=300, quiet=True):
        check_can_write(out_json, overwrite)
        gt = gt if isinstance(gt, dict) else json.loads(Path(gt).read_text())
        ids = {image["file_name"]: image["id"] for image in gt["images"]}
        model = load(run_dir)
        results = []
        for sample_name in names:
            labels, scores = predict_labels(model, dataset.get(sample_name).image)
            results += peers.labels_to_results(ids[sample_name], labels, scores, max_detections)
        return peers.write_results(out_json, results, {"method": name, "score_source": module.SCORE_SOURCE,
                                                       "versions": versions(), "weights": "random"})

    for function in (versions, train, load, predict_labels, predict_to_coco):
        setattr(module, function.__name__, function)
    return module


def patch_peers(monkeypatch, missing: tuple[str, ...] = ()) -> dict[str, types.ModuleType]:
    """``peers.peer_module`` returns the stand-in peers; those in ``missing`` cannot import their package."""
    modules = {name: fake_peer(name, package_missing=name in missing) for name in PEER_NAMES}
    monkeypatch.setattr(peers, "peer_module", lambda name: modules[name])
    for name in missing:
        monkeypatch.setitem(sys.modules, peers.PACKAGES[name], None)
    return modules


RUN_CONFIG = """
name: peers_plumbing
semantic: {enabled: false}
instance:
  dataset: {synthetic: {n_images: 8, size: 64, density: sparse, seed: 2}}
  split: {val_fraction: 0.375, seed: 0}
  image_size: 64
  epochs: 1
  batch_size: 2
  weights: none
  detections_per_image: 50
  device: cpu
  sam: {variant: vit_tiny, checkpoint: none, modes: [box]}
  sam_finetune: {enabled: false}
  peers:
    cellpose: {enabled: true, epochs: 3}
    stardist: {enabled: true, epochs: 2}
  evaluation: {interpolations: [11, 101], max_dets: {11: 100, 101: 100}}
  figure_images: 2
"""


def in_process(settings):
    """The real steps, the peers' in the runner's process (so the patched ``peers.peer_module`` reaches them)."""
    return [dataclasses.replace(step, framework=Framework.NONE) if step.name.startswith("instance_peer_") else step
            for step in build_steps(settings)]


def ensure_fake_peer_run(tmp_path_factory, monkeypatch) -> Path:
    """mscseg-run on RUN_CONFIG with the stand-in peers (stardist's package missing), once per session."""
    out = tmp_path_factory.getbasetemp() / "mscseg_fake_peer_run"
    if not (out / ".stamps" / "report.json").is_file():
        config = tmp_path_factory.getbasetemp() / "peers_plumbing.yaml"
        config.write_text(RUN_CONFIG)
        monkeypatch.setattr(runner, "build_steps", in_process)
        monkeypatch.delenv("MSCSEG_CALLER_CWD", raising=False)
        code = runner.main(["--config", str(config), "--out", str(out)])
        assert code == 0, f"run failed with status {code}; see {out / 'logs'}"
    return out


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        patch_peers(monkeypatch, missing=("stardist",))
        return ensure_fake_peer_run(tmp_path_factory, monkeypatch)     # the patches end with the run


# ---------------------------------------------------------------- config

def test_peer_sections_are_the_peers_settings_classes_and_off_by_default_in_the_paper_preset():
    paper = load_config("paper")
    assert enabled_peers(paper.instance) == []
    for name in PEER_NAMES:
        section = getattr(paper.instance.peers, name)
        base = peers.peer_module(name).SETTINGS if _has_module(name) else None
        if base is not None:
            assert isinstance(section, base)
            assert {f.name for f in dataclasses.fields(base)} | {"enabled"} == {f.name for f in dataclasses.fields(section)}
    for preset in ("small", "tiny"):
        assert enabled_peers(load_config(preset).instance) == list(PEER_NAMES)


def _has_module(name: str) -> bool:
    try:
        peers.peer_module(name)
    except ModuleNotFoundError:
        return False
    return True


def test_bad_peer_settings_are_refused_at_config_time_naming_the_key(monkeypatch):
    patch_peers(monkeypatch)
    with pytest.raises(RunError) as error:
        from_mapping({"instance": {"peers": {"cellpose": {"enabled": True, "epochs": 0, "lr": -1.0}}}}, source="x.yaml")
    text = str(error.value)
    assert "\n" not in text and text.startswith("x.yaml: ")
    assert "instance.peers.cellpose.epochs: must be a whole number of at least 1, got 0" in text
    assert "instance.peers.cellpose.lr: must be positive, got -1.0" in text
    with pytest.raises(RunError, match=r"instance\.peers\.stardist\.epoch: unknown key \(did you mean 'epochs'\?\)"):
        from_mapping({"instance": {"peers": {"stardist": {"epoch": 3}}}})
    assert peer_section("cellpose") is peer_section("cellpose")


def test_peer_steps_follow_their_settings_and_a_disabled_peer_leaves_every_stamp_as_it_was(monkeypatch):
    patch_peers(monkeypatch)
    on = from_mapping({"instance": {"peers": {"cellpose": {"enabled": True}}}})
    steps = {step.name: step for step in build_steps(on)}
    step = steps["instance_peer_cellpose"]
    assert step.framework is Framework.TORCH and step.resumable and step.inputs == ("split", "instance_predict")
    assert "instance_peer_stardist" not in steps
    assert instance_methods(on.instance)[-1] == "cellpose"
    assert set(steps["instance_table"].inputs) >= {"instance_peer_cellpose"}
    assert [p.relative_to("r").as_posix() for p in step.outputs(Layout(Path("r")))] == [
        "instance/cellpose", "instance/predictions/cellpose.json", "instance/predictions/cellpose.meta.json",
        "instance/predictions/cellpose.absent.json"]
    both = from_mapping({"instance": {"peers": {"cellpose": {"enabled": True}, "stardist": {"enabled": True}}}})
    assert {step.name: step for step in build_steps(both)}["instance_peer_stardist"].framework is Framework.TENSORFLOW
    off = from_mapping({})
    before = stamp_hashes(build_steps(off), off)
    report = before["report"]
    changed = from_mapping({"instance": {"peers": {"cellpose": {"epochs": 7}}}})
    unchanged = stamp_hashes(build_steps(changed), changed)
    assert unchanged.pop("report") != before.pop("report")      # the report shows every setting (derived: remade)
    assert unchanged == before
    more = from_mapping({"instance": {"peers": {"cellpose": {"enabled": True, "epochs": 7}}}})
    after = stamp_hashes(build_steps(more), more)
    assert after["instance_peer_cellpose"] != stamp_hashes(steps.values(), on)["instance_peer_cellpose"]
    assert after["instance_train"] == before["instance_train"] and after["instance_table"] != before["instance_table"]
    assert after["report"] != report


# ---------------------------------------------------------------- a run with the stand-in peers

@pytest.mark.slow
def test_a_run_gives_each_peer_a_row_everywhere_and_marks_a_missing_package_absent(fake_run):
    layout = Layout(fake_run)
    record = json.loads((layout.peer_run("cellpose") / "run.json").read_text())
    assert record["trainer"] == "cellpose" and record["status"] == "finished" and record["epochs_done"] == 3
    assert record["split"]["val"] == json.loads(layout.split_json("instance").read_text())["val"]
    meta = json.loads(layout.prediction_meta("cellpose").read_text())
    assert meta["score_source"].startswith("cellpose:")
    absent = json.loads(layout.prediction_absent("stardist").read_text())
    assert "'stardist'" in absent["reason"] and not layout.prediction("stardist").exists()
    assert "stardist: absent (peer 'stardist' needs the Python package 'stardist'" in layout.log("instance_peer_stardist").read_text()

    table = pd.read_csv(layout.instance_table)
    assert set(table["method"]) == {"maskrcnn", "sam_box", "cellpose", "stardist"}
    cellpose = table[(table["method"] == "cellpose") & (table["interpolation"] == 11)].iloc[0]
    assert cellpose["AP50"] > 0.05 and cellpose["detections_per_image"] > 0 and pd.isna(cellpose["absent"])
    stardist = table[table["method"] == "stardist"]
    assert len(stardist) == 2 and stardist["mAP"].isna().all() and (stardist["absent"] == absent["reason"]).all()
    assert (layout.evaluation_per_image("cellpose", 101)).is_file() and not layout.evaluation("stardist", 11).exists()

    per_image = pd.read_csv(layout.stats_table("instance", "per_image_ap"))
    assert set(per_image["model"]) == {"maskrcnn", "sam_box", "cellpose"}
    assert "stardist: absent, not in the tests" in layout.stats_notes("instance").read_text()
    assert layout.figure("instance").is_file()

    page = layout.report.read_text()
    assert "<td>peers</td>" in page and "fake-cellpose 1.0" in page and "cellpose: contrast of the cell to the threshold" in page
    assert "absent: peer &#x27;stardist&#x27; needs the Python package" in page

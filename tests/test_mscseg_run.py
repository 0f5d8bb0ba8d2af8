"""mscseg.run: stamps, skipping, --only/--from, resume, failures; and one tiny end-to-end run (slow).

The runner's logic is tested with toy steps (fast); the end-to-end test runs every real step
on the ``tiny`` preset once per session (``ensure_tiny_run``, shared with the predict,
report and notebook tests).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from data import DatasetError
from mscseg import run as runner
from mscseg.config import enabled_peers, load_config
from mscseg.layout import Layout
from mscseg.steps import Step, absent_methods, instance_methods

CALLS: list[tuple[str, bool, bool]] = []
BEHAVIOUR: dict[str, str] = {}


def _target(root: Path, name: str) -> Path:
    """Where a toy step writes: the training step into its own folder (like a real run), the others a file."""
    return root / name / "run.json" if name == "train" else root / f"{name}.txt"


def _action(name: str):
    def action(ctx) -> None:
        CALLS.append((name, ctx.resume, ctx.overwrite))
        print(f"hello from {name}")
        mode = BEHAVIOUR.pop(name, None)
        target = _target(ctx.layout.root, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if mode == "interrupt_early":
            raise KeyboardInterrupt
        if mode == "interrupt":
            target.write_text("half")
            raise KeyboardInterrupt
        if mode == "bad":
            raise DatasetError("image has no pixels", "img_7.png")
        if mode == "crash":
            raise ValueError("boom in the middle")
        if mode == "undeclared":
            print(ctx.settings.semantic.seed)
        values = [ctx.settings.semantic.image_size if name == "prepare" else 64,
                  ctx.settings.semantic.epochs if name == "train" else 1]
        target.write_text(" ".join(map(str, values)))
    return action


def toy_steps(settings) -> list[Step]:
    def output(name):
        return lambda layout: [_target(layout.root, name).parent if name == "train" else _target(layout.root, name)]

    steps = [
        Step("prepare", (), output("prepare"), ("semantic.image_size",), _action("prepare")),
        Step("train", ("prepare",), output("train"), ("semantic.epochs",), _action("train"), resumable=True),
        Step("evaluate", ("train",), output("evaluate"), (), _action("evaluate")),
    ]
    steps.append(Step("report", tuple(s.name for s in steps), output("report"), (), _action("report"), derived=True))
    return steps


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """A results folder and a config file for the toy steps; returns a function running main()."""
    monkeypatch.setattr(runner, "build_steps", toy_steps)
    monkeypatch.delenv("MSCSEG_CALLER_CWD", raising=False)
    CALLS.clear()
    BEHAVIOUR.clear()
    config = tmp_path / "toy.yaml"
    out = tmp_path / "results"

    def run(*extra: str, epochs: int = 1) -> int:
        config.write_text(f"base: tiny\nsemantic:\n  epochs: {epochs}\n")
        CALLS.clear()
        return runner.main(["--config", str(config), "--out", str(out), *extra])

    run.out = out
    return run


def names(calls) -> list[str]:
    return [call[0] for call in calls]


def test_first_run_runs_every_available_step_then_skips(toy, capsys):
    assert toy() == 0
    assert names(CALLS) == ["prepare", "train", "evaluate", "report"]
    stamp = json.loads((toy.out / ".stamps" / "train.json").read_text())
    assert stamp["status"] == "done" and stamp["settings"] == {"semantic.epochs": 1} and stamp["inputs"]["prepare"]
    assert (toy.out / "config.json").is_file()
    assert toy() == 0
    assert CALLS == []
    assert capsys.readouterr().out.count("skipped (up to date)") == 4


def test_step_output_goes_to_its_log_not_the_console(toy, capsys):
    assert toy() == 0
    console = capsys.readouterr().out
    assert "hello from" not in console
    assert "hello from train" in (toy.out / "logs" / "train.log").read_text()
    assert "[ 2/4] train" in console and "done in" in console


def test_changed_setting_refuses_then_overwrite_reruns_it_and_what_follows(toy, capsys):
    assert toy() == 0
    capsys.readouterr()
    assert toy(epochs=2) == 2
    error = capsys.readouterr().err
    assert "train (settings changed: semantic.epochs 1 -> 2)" in error and "evaluate (train reruns)" in error and "--overwrite" in error and "--out" in error
    assert "\n" not in error.strip()
    assert CALLS == [] and (toy.out / "train" / "run.json").read_text() == "64 1"
    assert toy("--overwrite", epochs=2) == 0
    assert names(CALLS) == ["train", "evaluate", "report"]
    assert (toy.out / "train" / "run.json").read_text() == "64 2"
    assert toy(epochs=2) == 0 and CALLS == []


def test_deleted_outputs_are_remade_and_what_used_them_needs_overwrite(toy, capsys):
    assert toy() == 0
    (toy.out / "train" / "run.json").unlink()
    capsys.readouterr()
    assert toy() == 2
    assert "evaluate (train reruns)" in capsys.readouterr().err and CALLS == []
    assert toy("--overwrite") == 0
    assert names(CALLS) == ["train", "evaluate", "report"]


def test_leftovers_of_a_killed_run_are_removed_with_a_note_and_the_lock_goes_with_the_run(toy, capsys):
    assert toy() == 0
    staging = toy.out / "sub" / ".staging-k1lled00"
    staging.mkdir(parents=True)
    (staging / "table.csv").write_text("half")
    (toy.out / "evaluate.txt.partial").write_text("half")
    capsys.readouterr()
    assert toy() == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("mscseg: note: removed")]
    assert notes == [f"mscseg: note: removed 2 leftover(s) of a stopped run in {toy.out.absolute()}: "
                     "evaluate.txt.partial, sub/.staging-k1lled00"]
    assert not staging.exists() and not (toy.out / "evaluate.txt.partial").exists()
    assert not (toy.out / ".mscseg.lock").exists()


def test_only_and_from(toy, capsys):
    assert toy() == 0
    capsys.readouterr()
    assert toy("--only", "evaluate") == 0
    assert CALLS == [] and "up to date (add --overwrite to run it again)" in capsys.readouterr().out
    assert toy("--only", "evaluate", "--overwrite") == 0
    assert names(CALLS) == ["evaluate"]
    assert toy("--from", "train", "--overwrite") == 0
    assert names(CALLS) == ["train", "evaluate", "report"]
    assert toy("--only", "trian") == 2
    assert "unknown step 'trian' (did you mean 'train'?)" in capsys.readouterr().err


def test_only_needs_finished_inputs(toy, capsys):
    assert toy("--only", "evaluate") == 2
    assert "step evaluate needs train" in capsys.readouterr().err
    assert CALLS == []


def test_interrupted_step_resumes(toy, capsys):
    BEHAVIOUR["train"] = "interrupt"
    assert toy() == 130
    assert "interrupted; run the same command again to resume" in capsys.readouterr().out
    assert json.loads((toy.out / ".stamps" / "train.json").read_text())["status"] == "interrupted"
    assert toy() == 0
    assert CALLS[0] == ("train", True, False)
    assert names(CALLS) == ["train", "evaluate", "report"]
    assert (toy.out / "train" / "run.json").read_text() == "64 1"


def test_step_interrupted_before_writing_anything_starts_again(toy, capsys):
    BEHAVIOUR["train"] = "interrupt_early"
    assert toy() == 130
    assert toy() == 0
    assert CALLS[0] == ("train", False, True)


def test_failed_step_names_the_step_and_its_log(toy, capsys):
    BEHAVIOUR["evaluate"] = "bad"
    assert toy() == 2
    captured = capsys.readouterr()
    log = toy.out / "logs" / "evaluate.log"
    assert "error: step evaluate failed: img_7.png: image has no pixels" in captured.err and str(log) in captured.err
    assert "report" not in names(CALLS)
    BEHAVIOUR["evaluate"] = "crash"
    assert toy() == 1
    captured = capsys.readouterr()
    assert "step evaluate crashed (ValueError)" in captured.err and str(log) in captured.err
    text = log.read_text()
    assert "Traceback" in text and "boom in the middle" in text
    assert toy() == 0 and names(CALLS) == ["evaluate", "report"]


def test_list_shows_states_without_running(toy, capsys):
    assert toy() == 0
    capsys.readouterr()
    assert toy("--list", epochs=3) == 0
    listing = capsys.readouterr().out
    assert CALLS == []
    lines = {line.split()[0]: line for line in listing.splitlines()[1:]}
    assert "done" in lines["prepare"] and "changed" in lines["train"] and "needs --overwrite" in lines["train"]
    assert "stale" in lines["evaluate"] and "needs --overwrite" in lines["evaluate"]


def test_bad_config_exits_2_with_one_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("semantic:\n  epochs: -1\n")
    assert runner.main(["--config", str(config), "--out", str(tmp_path / "r")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "semantic.epochs: must be at least 1" in error and error.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_missing_pretrained_weights_stop_the_run_before_any_step(tmp_path, offline, capsys):
    config = tmp_path / "paper_synthetic.yaml"
    synthetic = "  dataset: {synthetic: {n_images: 8, size: 64}}\n"
    sam = "  sam: {checkpoint: default}\n"
    cases = [
        ("", sam, "semantic.encoder_weights: none"),
        ("  encoder_weights: none\n", sam, "instance.weights: none"),
        ("  encoder_weights: none\n", sam + "  weights: none\n", "instance.sam.checkpoint: none"),
    ]
    for semantic, instance, hint in cases:
        config.write_text(f"base: paper\nsemantic:\n{synthetic}{semantic}instance:\n{synthetic}{instance}")
        assert runner.main(["--config", str(config), "--out", str(tmp_path / "out")]) == 2
        error = capsys.readouterr().err
        assert hint in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_real_steps_of_the_tiny_preset():
    steps = runner.build_steps(load_config("tiny"))
    assert [s.name for s in steps] == [
        "data", "split", "semantic_train_unet", "semantic_train_deeplabv3plus", "semantic_train_segnet",
        "semantic_train_maskrcnn", "semantic_sweep", "semantic_stats", "semantic_figures", "instance_train",
        "instance_predict", "instance_sam", "instance_sam_finetune", "instance_peer_cellpose", "instance_peer_stardist",
        "instance_eval", "instance_table", "instance_stats", "instance_figures", "report",
    ]
    layout = Layout(Path("r"))
    assert layout.evaluation("sam_box", 11) == Path("r/instance/eval/sam_box/11point")
    assert all(s.resumable == s.name.endswith(("_unet", "_deeplabv3plus", "_segnet", "_maskrcnn", "instance_train",
                                               "instance_sam_finetune", "_cellpose", "_stardist"))
               for s in steps)


# ---------------------------------------------------------------- end to end (tiny preset, real pieces)

EXPECTED_FILES = [
    "config.json", "split.json", "report.html", "instance/split.json",
    "semantic/{model}/run.json", "semantic/{model}/history.csv", "semantic/{model}/best.weights.h5",
    "semantic/{model}/last.weights.h5",
    "semantic/sweep/per_image.csv", "semantic/sweep/summary.csv", "semantic/sweep/optimal.csv", "semantic/sweep/table1.csv",
    "semantic/stats/tests.csv", "semantic/stats/summary.csv", "semantic/stats/dunn_dice.csv",
    "semantic/stats/wilcoxon_dice.csv", "semantic/stats/conover_pixel_accuracy.csv",
    "instance/maskrcnn/run.json", "instance/maskrcnn/history.csv", "instance/maskrcnn/best.pt", "instance/maskrcnn/last.pt",
    "instance/predictions/gt.json", "instance/predictions/maskrcnn.json", "instance/predictions/sam_box.json",
    "instance/predictions/sam_box_point.json", "instance/predictions/sam_box_mask.json",
    "instance/sam_finetune/run.json", "instance/sam_finetune/history.csv", "instance/sam_finetune/best.pth",
    "instance/predictions/sam_ft_box.json", "instance/predictions/sam_ft_gt_box.json",
    "instance/eval/{method}/11point/summary.json", "instance/eval/{method}/11point/per_image.csv",
    "instance/eval/{method}/101point/summary.json", "instance/eval/{method}/101point/per_image.csv",
    "instance/instance_table.csv", "instance/stats/tests.csv", "instance/stats/dunn_ap.csv",
    "figures/fig1.png", "figures/fig1.pdf", "figures/fig2.png", "figures/fig2.pdf", "figures/fig3.png", "figures/fig3.pdf",
    "figures/fig4.png", "figures/fig4.pdf", "figures/instance.png", "figures/instance.pdf",
    "logs/{step}.log", ".stamps/{step}.json",
]


def ensure_tiny_run(tmp_path_factory) -> Path:
    """The tiny preset run once per test session (later calls find every step up to date)."""
    out = tmp_path_factory.getbasetemp() / "mscseg_tiny_run"
    if not (out / ".stamps" / "report.json").is_file():
        code = runner.main(["--config", "tiny", "--out", str(out)])
        assert code == 0, f"tiny run failed with status {code}; see {out / 'logs'}"
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return ensure_tiny_run(tmp_path_factory)


@pytest.mark.slow
def test_tiny_end_to_end_writes_every_file_of_the_layout(tiny_run, capsys, monkeypatch):
    monkeypatch.delenv("MSCSEG_CALLER_CWD", raising=False)
    settings = load_config("tiny")
    steps = [s.name for s in runner.build_steps(settings)]
    absent = absent_methods(Layout(tiny_run), instance_methods(settings.instance))   # a peer whose package is missing
    methods = [m for m in instance_methods(settings.instance) if m not in absent]
    missing = []
    for pattern in EXPECTED_FILES:
        for model in (settings.semantic.models if "{model}" in pattern else [None]):
            for method in (methods if "{method}" in pattern else [None]):
                for step in (steps if "{step}" in pattern else [None]):
                    path = tiny_run / pattern.format(model=model, method=method, step=step)
                    if not path.is_file():
                        missing.append(str(path.relative_to(tiny_run)))
    assert missing == []
    layout = Layout(tiny_run)
    for peer in enabled_peers(settings.instance):
        files = ([layout.prediction_absent(peer)] if peer in absent else
                 [layout.peer_run(peer) / "run.json", layout.peer_run(peer) / "history.csv", layout.prediction(peer),
                  layout.prediction_meta(peer)])
        assert all(path.is_file() for path in files), files
    probs = sorted(p.stem for p in (tiny_run / "semantic" / "unet" / "probs").glob("*.npy"))
    assert probs == json.loads((tiny_run / "split.json").read_text())["val"]
    stamps = [json.loads((tiny_run / ".stamps" / f"{s}.json").read_text()) for s in steps]
    assert all(stamp["status"] == "done" for stamp in stamps)
    capsys.readouterr()
    assert runner.main(["--config", "tiny", "--out", str(tiny_run)]) == 0
    console = capsys.readouterr().out
    assert console.count("skipped (up to date)") == len(steps) and "running" not in console


def test_an_action_reading_an_undeclared_setting_crashes_with_the_setting_named(toy, capsys):
    BEHAVIOUR["prepare"] = "undeclared"
    assert toy() == 1
    assert "step prepare crashed (UndeclaredSetting)" in capsys.readouterr().err
    assert "reads setting 'semantic.seed', which it does not declare" in (toy.out / "logs" / "prepare.log").read_text()

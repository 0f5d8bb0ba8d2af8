"""The step declarations of mscseg: stamps follow exactly the settings each step reads; the
refusal lists exactly what --overwrite replaces; framework steps run (and crash) in their own process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mscseg import run as runner
from mscseg.config import load_config
from mscseg.layout import Layout
from mscseg.steps import (_MISSING, Framework, SettingsView, UndeclaredSetting, build_steps, setting_value,
                          stamp_hashes, successors)

TESTS = Path(__file__).resolve().parent
PRESETS = ("tiny", "paper")


def _set(settings, name: str, value) -> None:
    *parents, last = name.split(".")
    holder = settings
    for part in parents:
        holder = holder[part] if isinstance(holder, dict) else getattr(holder, part)
    if isinstance(holder, dict):
        holder[last] = value
    else:
        setattr(holder, last, value)


def _readers(steps, name: str) -> set[str]:
    """The steps reading setting ``name``, or a part of it, or a setting that holds it."""
    return {step.name for step in steps
            if any(d == name or d.startswith(name + ".") or name.startswith(d + ".") for d in step.reads)}


def _declared(steps) -> list[tuple[str, str]]:
    return [(step.name, name) for step in steps for name in step.reads]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_declared_setting_exists(preset):
    settings = load_config(preset)
    for step, name in _declared(build_steps(settings)):
        parent = name.rsplit(".", 1)[0] if name.count(".") > 1 and ("model_options" in name or "_by_model" in name) else name
        assert setting_value(settings, parent, _MISSING) is not _MISSING, f"{step} declares unknown setting {name}"


@pytest.mark.parametrize("preset", PRESETS)
def test_changing_each_setting_a_step_reads_marks_it_and_its_successors_stale_and_nothing_else(preset):
    settings = load_config(preset)
    steps = build_steps(settings)
    before = stamp_hashes(steps, settings)
    pairs = _declared(steps)
    assert len(pairs) > 30
    for step_name, name in pairs:
        changed = load_config(preset)
        _set(changed, name, ["changed", repr(setting_value(changed, name))])
        after = stamp_hashes(steps, changed)
        readers = _readers(steps, name)
        stale = {step for step in before if before[step] != after[step]}
        assert step_name in stale, f"changing {name} leaves {step_name} up to date"
        assert stale == successors(steps, readers), f"changing {name} marks {sorted(stale)}"


def test_a_setting_only_the_report_shows_remakes_only_the_report():
    settings = load_config("tiny")
    steps = build_steps(settings)
    before = stamp_hashes(steps, settings)
    settings.stats.alpha = 0.01
    settings.semantic.model_options["not_a_model"] = {"x": 1}
    after = stamp_hashes(steps, settings)
    assert {name for name in before if before[name] != after[name]} == {"report"}


def test_an_action_sees_only_the_settings_its_step_declares():
    settings = load_config("tiny")
    view = SettingsView(settings, ("semantic.epochs", "semantic.model_options.unet", "instance.sam"), "demo")
    assert view.semantic.epochs == 1
    assert view.semantic.model_options.get("unet", {}) == {}
    assert view.instance.sam.variant == "vit_tiny"
    for read in (lambda: view.semantic.seed, lambda: view.stats, lambda: view.semantic.model_options.get("segnet"),
                 lambda: view.instance.epochs):
        with pytest.raises(UndeclaredSetting, match="step demo reads setting"):
            read()


def _finished_layout(tmp_path, settings, steps) -> Layout:
    """Stamps and outputs as a finished run of ``steps`` would leave them (no training)."""
    layout = Layout(tmp_path / "results")
    hashes = stamp_hashes(steps, settings)
    ids = {step.name: f"id-{step.name}" for step in steps}
    for step in steps:
        for path in step.outputs(layout):
            target = path / "run.json" if not path.suffix else path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("{}")
        runner.write_stamp(layout, step.name, {
            "step": step.name, "status": "done", "id": ids[step.name], "stamp": hashes[step.name],
            "settings": step.settings(settings), "settings_hash": runner.settings_hash(step, settings),
            "inputs": {name: ids[name] for name in step.inputs}, "wall_s": 1.0, "finished": "earlier"})
    return layout


@pytest.mark.parametrize("name", ["semantic.epochs", "instance.lr", "instance.sam.score", "stats.posthoc", "semantic.metrics"])
def test_the_refusal_lists_exactly_the_steps_overwrite_replaces(tmp_path, name, capsys):
    settings = load_config("tiny")
    steps = build_steps(settings)
    layout = _finished_layout(tmp_path, settings, steps)
    assert all(e.action is runner.Action.SKIP for e in runner.plan(steps, settings, layout))
    _set(settings, name, ["changed"])
    refused = runner.plan(steps, settings, layout)
    conflicts = {e.step.name for e in refused if e.action is runner.Action.CONFLICT}
    readers = _readers(steps, name)
    assert conflicts == successors(steps, readers) - {"report"}
    replaced = {e.step.name for e in runner.plan(steps, settings, layout, overwrite=True) if e.replaces_finished}
    assert replaced == conflicts
    message = runner.conflicts_message(refused, layout)
    assert f"replaced by {len(conflicts)} step(s)" in message
    assert all(f"{step} (" in message for step in conflicts)
    runner.print_list(refused, layout, sys.stdout)
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()[1:] if "needs --overwrite" in line}
    assert listed == conflicts


def test_framework_steps_are_the_ones_importing_tensorflow_or_torch():
    frameworks = {step.name: step.framework for step in build_steps(load_config("tiny"))}
    assert {n for n, f in frameworks.items() if f is Framework.TENSORFLOW} == {
        f"semantic_train_{m}" for m in ("unet", "deeplabv3plus", "segnet", "maskrcnn")} | {"instance_peer_stardist"}
    assert {n for n, f in frameworks.items() if f is Framework.TORCH} == {"instance_train", "instance_predict", "instance_sam",
                                                                                 "instance_sam_finetune", "instance_peer_cellpose"}


# ---------------------------------------------------------------- steps in their own process

@pytest.fixture
def child_run(monkeypatch, tmp_path):
    monkeypatch.setattr(runner, "STEP_FACTORY", "child_steps:build")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("MSCSEG_CALLER_CWD", raising=False)
    out = tmp_path / "results"

    def run(*extra: str) -> int:
        return runner.main(["--config", "tiny", "--out", str(out), *extra])

    run.out = out
    return run


def test_a_framework_step_runs_in_a_process_of_its_own(child_run, capsys):
    assert child_run("--only", "child_ok") == 0
    child_pid = int((child_run.out / "child_ok.txt").read_text())
    assert child_pid != os.getpid()
    log = (child_run.out / "logs" / "child_ok.log").read_text()
    assert "ran child_ok with image_size 64" in log and "in its own process (torch)" in log
    assert json.loads((child_run.out / ".stamps" / "child_ok.json").read_text())["status"] == "done"


def test_bad_input_in_a_child_is_one_line_exit_2(child_run, capsys):
    assert child_run("--only", "child_bad") == 2
    error = capsys.readouterr().err
    log = child_run.out / "logs" / "child_bad.log"
    assert error == f"error: step child_bad failed: img_7.png: image has no pixels (log: {log})\n"


def test_an_exception_in_a_child_is_a_crash_with_its_traceback_in_the_log(child_run, capsys):
    assert child_run("--only", "child_crash") == 1
    log = child_run.out / "logs" / "child_crash.log"
    assert capsys.readouterr().err == f"error: step child_crash crashed (ValueError); the traceback is in {log}\n"
    assert "Traceback" in log.read_text() and "boom in the child" in log.read_text()


def test_a_crashed_child_is_reported_in_one_line_with_its_log(child_run, capsys):
    assert child_run("--only", "child_abort") == 2
    error = capsys.readouterr().err
    log = child_run.out / "logs" / "child_abort.log"
    assert error.count("\n") == 1 and error.startswith("error: step child_abort crashed")
    assert "SIGABRT" in error and str(log) in error
    assert "about to abort" in log.read_text()
    stamp = json.loads((child_run.out / ".stamps" / "child_abort.json").read_text())
    assert stamp["status"] == "failed" and "SIGABRT" in stamp["error"]


def _default_sigint() -> None:
    """In the runner's process: SIGINT back to its default, even when the tests were started ignoring it
    (a background job, nohup), so that Python turns it into KeyboardInterrupt as at a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _poll(condition, deadline_s: float = 120.0) -> bool:
    """Wait for ``condition`` with a generous deadline (a loaded machine), not a fixed sleep."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("to_group", [False, True], ids=["parent only", "terminal (whole group)"])
def test_ctrl_c_stops_the_child_too(tmp_path, to_group):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]))
    script = ("import sys; from mscseg import run; run.STEP_FACTORY = 'child_steps:build'; "
              f"sys.exit(run.main(['--config', 'tiny', '--out', {str(tmp_path)!r}, '--only', 'child_sleep']))")
    parent = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True, preexec_fn=_default_sigint)
    marker = tmp_path / "sleeping.txt"
    started = _poll(lambda: (marker.is_file() and marker.read_text() != "") or parent.poll() is not None)
    assert started and parent.poll() is None, parent.communicate()
    child = int(marker.read_text())
    if to_group:
        os.killpg(parent.pid, signal.SIGINT)
    else:
        parent.send_signal(signal.SIGINT)
    assert parent.wait(timeout=120) == 130
    assert _poll(lambda: _gone(child))
    assert json.loads((tmp_path / ".stamps" / "child_sleep.json").read_text())["status"] == "interrupted"
    assert not (tmp_path / ".mscseg.lock").exists()


def test_planning_and_the_steps_without_a_framework_load_neither_framework(tmp_path):
    script = (
        "import sys\n"
        "from mscseg import run, steps\n"
        "from mscseg.config import load_config\n"
        "import keras_semseg.sweep, keras_semseg.plots, torch_instseg.evaluate, torch_instseg.plots, stats, stats.plots\n"
        "settings = load_config('tiny')\n"
        f"run.plan(steps.build_steps(settings), settings, run.Layout({str(tmp_path)!r}))\n"
        "print(sorted(m for m in ('tensorflow', 'torch') if m in sys.modules))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(TESTS.parent))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

"""mscseg.kaggle and mscseg.kaggle_gpu: the Kaggle notebook's logic, on a Kaggle-like tree in a temporary folder."""
from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import zipfile
from pathlib import Path

import pytest

from mscseg import kaggle, kaggle_gpu
from mscseg.config import load_config

ROOT = Path(__file__).resolve().parents[1]

# Kaggle's GPU image as the issue reads it: Python 3.12, its own TensorFlow with Keras 3 (no
# tf-keras), a CUDA 12.8 torch; the project's missing packages are the five at the end.
KAGGLE_IMAGE = {
    "tensorflow": "2.20.0", "keras": "3.10.0", "torch": "2.8.0+cu128", "torchvision": "0.23.0+cu128",
    "numpy": "2.0.2", "scipy": "1.15.3", "pandas": "2.2.3", "pillow": "11.2.1", "tifffile": "2025.6.11",
    "matplotlib": "3.10.0", "PyYAML": "6.0.2", "tqdm": "4.67.1", "scikit-image": "0.25.2",
    "nvidia-cudnn-cu12": "9.10.2.21", "nvidia-cublas-cu12": "12.8.4.1", "triton": "3.4.0",
    "tf-keras": None, "scikit-posthocs": None, "pycocotools": None, "imagecodecs": None,
    "segmentation-models": None, "segment-anything": None,
}


def _touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _ctc(folder: Path) -> Path:
    _touch(folder / "01" / "t000.tif")
    _touch(folder / "01_GT" / "SEG" / "man_seg000.tif")
    return folder


def test_deep_merge_keeps_the_keys_an_override_does_not_name():
    base = {"instance": {"sam": {"checkpoint": "a.pth", "modes": ["box"]}, "epochs": 50}, "name": "x"}
    override = {"instance": {"sam": {"modes": ["box_point"]}}, "stats": {"alpha": 0.01}}
    merged = kaggle.deep_merge(base, override)
    assert merged == {"instance": {"sam": {"checkpoint": "a.pth", "modes": ["box_point"]}, "epochs": 50}, "name": "x",
                      "stats": {"alpha": 0.01}}
    assert base["instance"]["sam"]["modes"] == ["box"] and "stats" not in base


def test_sam_checkpoint_keys_are_every_checkpoint_setting_of_the_config():
    def checkpoints(obj, prefix=()):
        for item in dataclasses.fields(obj):
            value = getattr(obj, item.name)
            if dataclasses.is_dataclass(value):
                yield from checkpoints(value, prefix + (item.name,))
            elif item.name == "checkpoint":
                yield prefix + (item.name,)

    assert sorted(checkpoints(load_config("tiny"))) == sorted(kaggle.SAM_CHECKPOINT_KEYS)


def test_find_sam_takes_kaggle_models_name_and_the_release_name(tmp_path):
    inputs = tmp_path / "input"
    assert kaggle.find_sam(inputs) is None
    _touch(inputs / "other-model" / "pytorch" / "default" / "1" / "model.pth")
    assert kaggle.find_sam(inputs) is None
    vit_b = _touch(inputs / "segment-anything" / "pytorch" / "vit-b" / "1" / "model.pth")
    assert kaggle.find_sam(inputs, "vit_h") == vit_b
    vit_h = _touch(inputs / "segment-anything" / "pytorch" / "vit-h" / "1" / "model.pth")
    assert kaggle.find_sam(inputs, "vit_h") == vit_h and kaggle.find_sam(inputs, "vit_b") == vit_b
    release = _touch(inputs / "sam-weights" / "sam_vit_h_4b8939.pth")
    assert kaggle.find_sam(inputs, "vit_h") == release
    assert [kaggle.sam_variant_of(p) for p in (vit_b, vit_h, release, "x/vit-tiny/model.pth", "x/model.pth")] == \
        ["vit_b", "vit_h", "vit_h", "vit_tiny", None]


def test_find_ctc_and_semantic(tmp_path):
    inputs = tmp_path / "input"
    other = _ctc(inputs / "a-tracking-set" / "Fluo-N2DH-GOWT1")
    assert kaggle.find_ctc(inputs) == other
    named = _ctc(inputs / "fluo-c2dl-msc" / "Fluo-C2DL-MSC")
    assert kaggle.find_ctc(inputs) == named and kaggle.is_ctc(named) and not kaggle.is_ctc(named / "01")
    semantic = inputs / "msu-smooth-1-20"
    _touch(semantic / "images" / "a.png")
    assert kaggle.find_semantic(inputs) == semantic


def test_find_inputs_says_what_is_missing_and_refuses_a_given_path_that_is_not_there(tmp_path):
    _ctc(tmp_path / "input" / "ctc" / "Fluo-C2DL-MSC")
    found = kaggle.find_inputs(tmp_path, sam_checkpoint=None)
    assert found.semantic is None and found.instance == tmp_path / "input" / "ctc" / "Fluo-C2DL-MSC" and found.sam is None
    assert found.lines[0].startswith("semantic dataset: none found; attach the dataset maximsolopov/msu-smooth-1-20")
    assert found.lines[1].endswith("(found)") and found.lines[2] == "SAM checkpoint: None -> the preset's own"
    with pytest.raises(kaggle.KaggleError, match="missing.pth: SAM checkpoint not found"):
        kaggle.find_inputs(tmp_path, sam_checkpoint=tmp_path / "missing.pth")


def test_notebook_config_gives_the_sam_file_to_every_checkpoint_setting_and_points_study_b_at_the_ctc_folder(tmp_path):
    semantic = tmp_path / "input" / "msu-smooth-1-20"
    semantic.mkdir(parents=True)
    ctc = _ctc(tmp_path / "input" / "fluo" / "Fluo-C2DL-MSC")
    sam = _touch(tmp_path / "input" / "segment-anything" / "pytorch" / "vit-h" / "1" / "model.pth")
    inputs = kaggle.Inputs(semantic, ctc, sam)
    overrides = {"instance": {"sam": {"modes": ["box"]}, "epochs": 2}, "semantic": {"epochs": 3}}
    config = kaggle.notebook_config("paper", "kaggle", inputs, overrides)
    path = kaggle.write_config(tmp_path / "working" / "results" / "kaggle.json", config)
    settings = load_config(path)
    assert settings.semantic.dataset.path == str(semantic) and settings.semantic.epochs == 3
    assert settings.instance.dataset.path == str(ctc) and settings.instance.dataset.format == "ctc"
    assert settings.instance.sam.checkpoint == settings.instance.sam_finetune.checkpoint == str(sam)
    assert settings.instance.sam.variant == settings.instance.sam_finetune.variant == "vit_h"
    assert settings.instance.sam.modes == ["box"] and settings.instance.epochs == 2 and settings.semantic.models == load_config("paper").semantic.models
    lines = kaggle.describe_settings(settings, tmp_path / "work", tmp_path / "out")
    assert lines[2] == f"SAM vit_h: {sam}; fine-tuning vit_h from {sam}" and lines[3] == "untrained: none"
    assert settings.semantic.devices == "auto" and settings.instance.devices == 1


def test_the_notebook_gpus_switch_sets_both_studies_device_counts(tmp_path):
    config = kaggle.notebook_config("tiny", "kaggle", kaggle.Inputs(None, None, None), {"semantic": {"epochs": 2}}, gpus=2)
    settings = load_config(kaggle.write_config(tmp_path / "kaggle.json", config))
    assert settings.semantic.devices == 2 and settings.instance.devices == 2 and settings.semantic.epochs == 2
    one = load_config(kaggle.write_config(tmp_path / "one.json", kaggle.notebook_config("tiny", "one", kaggle.Inputs(None, None, None), gpus=1)))
    assert one.semantic.devices == 1 and one.instance.devices == 1


def test_prepare_code_copies_a_read_only_code_dataset_into_working(tmp_path):
    project = tmp_path / "input" / "code" / "mscseg"
    _touch(project / "setup.cfg")
    _touch(project / "mscseg" / "kaggle.py")
    _touch(project / "mscseg" / "__pycache__" / "kaggle.cpython-312.pyc")
    for path in [*project.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    working = tmp_path / "working"
    _touch(working / "mscseg" / "stale.txt")
    copy = kaggle.prepare_code(project, working)
    assert copy == working / "mscseg" and (copy / "mscseg" / "kaggle.py").is_file()
    assert not (copy / "stale.txt").exists() and not (copy / "mscseg" / "__pycache__").exists()
    (copy / "setup.cfg").write_text("writable")
    assert kaggle.prepare_code(copy, working) == copy
    wheel = _touch(tmp_path / "input" / "w" / "mscseg-0.1.0-py3-none-any.whl")
    assert kaggle.prepare_code(wheel, working) == wheel
    archive = tmp_path / "input" / "z" / "mscseg.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("mscseg/setup.cfg", "[options]")
        handle.writestr("mscseg/mscseg/kaggle.py", "")
    assert kaggle.prepare_code(archive, working) == copy and (copy / "setup.cfg").read_text() == "[options]"
    assert not (copy / "mscseg" / "__init__.py").exists()
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("other/setup.cfg", "")
    with pytest.raises(kaggle.KaggleError, match="not a project archive"):
        kaggle.prepare_code(archive, working)
    for path in [project, *project.rglob("*")]:
        path.chmod(0o755)


SETUP_CFG = """[options]
install_requires =
    numpy>=1.23,<2; python_version < "3.12"
    numpy>=1.26; python_version >= "3.12"
    pandas>=2.0
    tifffile>=2023.7
    scikit-posthocs>=0.10
    pycocotools>=2.0.7

[options.extras_require]
keras =
    tensorflow>=2.15,<2.16; python_version < "3.12"
    tensorflow>=2.16; python_version >= "3.12"
    tf-keras>=2.16; python_version >= "3.12"
    segmentation-models==1.0.1
torch =
    torch>=2.3
    segment-anything>=1.0
test =
    pytest>=7
"""


@pytest.fixture
def project(tmp_path) -> Path:
    """A project folder with a fixed setup.cfg and lock file (the install decisions' known answers)."""
    folder = tmp_path / "project"
    _touch(folder / "setup.cfg", SETUP_CFG)
    _touch(folder / "requirements" / "current.txt", "tensorflow==2.21.0\ntf_keras==2.21.0\ntorch==2.14.1\n")
    return folder


def test_install_plan_on_kaggles_image_adds_tf_keras_and_the_missing_packages_only(project, tmp_path):
    plan = kaggle.install_plan(project, KAGGLE_IMAGE, (3, 12), gpu=True, constraints_path=tmp_path / "c.txt")
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    assert plan.commands == [[*pip, "-c", str(tmp_path / "c.txt"), "tf-keras~=2.20.0", "scikit-posthocs>=0.10", "pycocotools>=2.0.7",
                              "segmentation-models==1.0.1", "segment-anything>=1.0"],
                             [*pip, "--no-deps", "--no-build-isolation", "-e", str(project)]]
    pins = plan.constraints.split()
    assert {"tensorflow==2.20.0", "torch==2.8.0", "torchvision==0.23.0", "numpy==2.0.2", "keras==3.10.0",
            "nvidia-cudnn-cu12==9.10.2.21", "nvidia-cublas-cu12==12.8.4.1", "triton==3.4.0"} == set(pins)
    assert plan.lines[0] == "TensorFlow 2.20.0: kept; adding tf-keras 2.20 (Keras 2 for tf.keras, TF_USE_LEGACY_KERAS=1)"


def test_install_plan_for_this_project_on_kaggles_image_replaces_no_framework():
    from packaging.requirements import Requirement

    plan = kaggle.install_plan(ROOT, KAGGLE_IMAGE, (3, 12))
    names = [kaggle.normalise(Requirement(p).name) for p in plan.packages]
    wanted = {kaggle.normalise(r.name) for r in kaggle.project_requirements(ROOT, (3, 12))}
    assert names[0] == "tf-keras" and plan.packages[0] == "tf-keras~=2.20.0"
    assert set(names) <= wanted and not set(names) & set(kaggle.KEPT)
    assert all(KAGGLE_IMAGE.get(name) is None for name in names)


def test_install_plan_keeps_what_fits_and_installs_a_missing_tensorflow_from_the_lock_file(project):
    everything = {"tensorflow": "2.21.0", "tf-keras": "2.21.0", "numpy": "2.0.2", "pandas": "2.2.3", "tifffile": "2025.1.1",
                  "scikit-posthocs": "0.11.0", "pycocotools": "2.0.8", "segmentation-models": "1.0.1",
                  "torch": "2.8.0+cu128", "segment-anything": "1.0"}
    plan = kaggle.install_plan(project, everything, (3, 12))
    assert plan.packages == [] and len(plan.commands) == 1 and plan.lines[-1] == "every package the project needs is installed"
    paper = everything | {"tensorflow": "2.15.1", "tf-keras": None, "numpy": "1.26.4"}
    plan = kaggle.install_plan(project, paper, (3, 11))
    assert plan.packages == [] and plan.lines[0] == "TensorFlow 2.15.1: kept (Keras 2 built in, no tf-keras needed)"
    old = everything | {"numpy": "1.24.0", "pandas": "1.5.0"}
    plan = kaggle.install_plan(project, old, (3, 12))
    assert plan.packages == ["pandas>=2.0"]
    assert "numpy 1.24.0: kept although the project asks for >=1.26 (frameworks are not replaced here)" in plan.lines
    assert kaggle.install_plan(project, everything | {"tensorflow": None, "tf-keras": None}, (3, 12), gpu=True).packages == [
        "tensorflow[and-cuda]==2.21.0", "tf-keras==2.21.0"]
    assert kaggle.install_plan(project, everything | {"torch": None}, (3, 12)).packages == ["torch==2.14.1"]


def test_install_plan_for_a_wheel_reads_its_metadata_and_installs_it_without_dependencies(tmp_path):
    wheel = tmp_path / "mscseg-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("mscseg-0.1.0.dist-info/METADATA", "\n".join([
            "Name: mscseg", "Requires-Dist: numpy>=1.26; python_version >= \"3.12\"", "Requires-Dist: pycocotools>=2.0.7",
            "Requires-Dist: segment-anything>=1.0; extra == \"torch\"", "Requires-Dist: pytest>=7; extra == \"test\""]))
    plan = kaggle.install_plan(wheel, KAGGLE_IMAGE, (3, 12), gpu=False)
    assert plan.packages == ["tf-keras~=2.20.0", "pycocotools>=2.0.7", "segment-anything>=1.0"]
    assert plan.commands[-1] == [sys.executable, "-m", "pip", "install", "-q", "--no-deps", str(wheel)]


def test_restart_is_needed_only_for_packages_already_imported():
    assert kaggle.restart_needed(["tf-keras~=2.20.0", "pycocotools>=2.0.7"], {"json": None}) == []
    assert kaggle.restart_needed(["tf-keras~=2.20.0", "numpy>=2"], {"numpy": None, "tf_keras": None}) == ["tf-keras", "numpy"]


def test_run_commands_records_or_runs_and_stops_in_one_line_on_failure(tmp_path, capsys):
    record = tmp_path / "record.txt"
    kaggle.run_commands([["pip", "install", "a b"], ["echo", "x"]], record=str(record))
    assert record.read_text() == "pip install 'a b'\necho x\n"
    kaggle.run_commands([[sys.executable, "-c", "print('ran')"]], record="")
    with pytest.raises(kaggle.KaggleError, match=r"-c 'raise SystemExit\(3\)': failed with status 3"):
        kaggle.run_commands([[sys.executable, "-c", "raise SystemExit(3)"]], record="")


def test_install_records_the_commands_and_writes_the_constraints(tmp_path, monkeypatch, capsys):
    image = tmp_path / "image.json"
    image.write_text(json.dumps({"python": "3.12.11", "packages": KAGGLE_IMAGE}))
    monkeypatch.setenv(kaggle.PACKAGES_ENV, str(image))
    monkeypatch.setenv(kaggle.RECORD_ENV, str(tmp_path / "record.txt"))
    plan = kaggle.install(ROOT, work=tmp_path / "work", gpu=True)
    assert (tmp_path / "record.txt").read_text().splitlines() == [shlex.join(command) for command in plan.commands]
    assert (tmp_path / "work" / "constraints.txt").read_text() == plan.constraints
    assert kaggle.install(ROOT, enabled=False, work=tmp_path / "work").commands == plan.commands
    assert "INSTALL is off" in capsys.readouterr().out


@pytest.mark.parametrize("capability, arch, expected", [
    ((6, 0), ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"], False),
    ((7, 5), ["sm_70", "sm_75", "sm_80"], True),
    ((8, 9), ["sm_80", "sm_86"], True),
    ((6, 0), ["sm_50", "compute_50"], True),
    ((6, 0), ["sm_61"], False),
    ((9, 0), ["sm_90a"], True),
])
def test_torch_has_kernels(capability, arch, expected):
    assert kaggle_gpu.torch_has_kernels(capability, arch) is expected


T4 = {"name": "Tesla T4", "capability": [7, 5]}
P100 = {"name": "Tesla P100-PCIE-16GB", "capability": [6, 0]}
TF = {"version": "2.20.0", "keras": "2.20.1", "cuda_build": True, "gpus": 1}
TORCH = {"version": "2.8.0+cu128", "cuda": "12.8", "numpy": "2.0.2", "arch": ["sm_70", "sm_75", "sm_80", "sm_90", "sm_100", "sm_120"], "gpus": [T4]}


def test_gpu_report_one_t4_by_default_both_behind_the_switch():
    lines, problems = kaggle_gpu.gpu_report([T4, T4], TF, TORCH, 1)
    assert problems == []
    assert lines[0].startswith("will run: Python ") and "TensorFlow 2.20.0 (tf.keras 2.20.1), torch 2.8.0+cu128 (CUDA 12.8), numpy 2.0.2" in lines[0]
    assert lines[1] == ("GPUs on this machine: 2 (Tesla T4); GPUS = 1: CUDA_VISIBLE_DEVICES=0, one GPU as the paper's single T4 "
                        "(GPUS = 2: both, for the Keras models and the Mask R-CNN training)")
    assert lines[2] == "TensorFlow 2.20.0 (tf.keras 2.20.1) sees 1 GPU: the Keras models train on it, as the paper's single T4"
    assert lines[3].endswith("Mask R-CNN and SAM run on cuda:0") and "sm_75" in lines[3]
    lines, problems = kaggle_gpu.gpu_report([T4, T4], TF | {"gpus": 2}, TORCH | {"gpus": [T4, T4]}, 2)
    assert problems == [] and "MirroredStrategy" in lines[2] and "CUDA_VISIBLE_DEVICES=0,1" in lines[1]
    assert lines[3].endswith("Mask R-CNN trains on both under torchrun (instance.devices 2); SAM and predictions on cuda:0")


def test_gpu_report_names_the_p100_and_a_missing_gpu_in_one_line_each():
    _, problems = kaggle_gpu.gpu_report([P100], TF, TORCH | {"gpus": [P100]}, 1)
    assert problems == ["torch 2.8.0+cu128 (CUDA 12.8) has no kernels for the Tesla P100-PCIE-16GB (compute capability 6.0; "
                        "built for sm_70 to sm_120): every torch step would fail; switch the accelerator to GPU T4 x2 "
                        "(Settings > Accelerator) and run all cells again"]
    lines, problems = kaggle_gpu.gpu_report([], TF | {"gpus": 0, "cuda_build": False}, TORCH | {"gpus": [], "arch": []}, 1)
    assert lines[1] == "GPUs on this machine: none (nvidia-smi not found)" and len(problems) == 2
    assert problems[0].startswith("TensorFlow 2.20.0 (tf.keras 2.20.1) sees no GPU, a build without CUDA: switch the accelerator")
    assert problems[1].startswith("torch 2.8.0+cu128 (CUDA 12.8) sees no GPU: switch")
    _, problems = kaggle_gpu.gpu_report([], {"error": "SemsegError: x"}, {"error": "ImportError: y"}, 1)
    assert problems == ["TensorFlow cannot be used: SemsegError: x", "torch cannot be used: ImportError: y"]


def test_select_gpus_and_probe():
    environ = {}
    assert kaggle_gpu.select_gpus(1, environ) == "0" and kaggle_gpu.select_gpus(2, environ) == "0,1" == environ["CUDA_VISIBLE_DEVICES"]
    with pytest.raises(kaggle.KaggleError, match="GPUS = 4"):
        kaggle_gpu.select_gpus(4, environ)
    assert kaggle_gpu.probe("print('noise'); print('{\"a\": 1}')") == {"a": 1}
    assert kaggle_gpu.probe("import sys; sys.exit('broken')") == {"error": "exit status 1: broken"}


def test_check_gpus_stops_without_a_gpu_unless_told_not_to(monkeypatch, capsys):
    monkeypatch.setattr(kaggle_gpu, "probe", lambda script, cwd=None: TF | {"gpus": 0} if "keras" in script else TORCH | {"gpus": []})
    monkeypatch.setattr(kaggle_gpu, "machine_gpus", lambda: [])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(kaggle.KaggleError, match="sees no GPU"):
        kaggle_gpu.check_gpus(ROOT, 1, require=True)
    kaggle_gpu.check_gpus(ROOT, 1, require=False)
    assert "(REQUIRE_GPU is off: runs on the CPU)" in capsys.readouterr().out


def test_export_leaves_checkpoints_and_caches_out_unless_asked(tmp_path):
    run = tmp_path / "work" / "run"
    with pytest.raises(kaggle.KaggleError, match="no report.html"):
        kaggle.export_results(run, tmp_path / "out")
    kept = [_touch(run / name) for name in ("report.html", "semantic/unet/run.json", "semantic/unet/probs/a.npy", "logs/x.log")]
    heavy = [_touch(run / name, "12345") for name in ("semantic/unet/best.weights.h5", "semantic/unet/last.optimizer.npz",
                                                       "instance/maskrcnn/best.pth", "instance/sam_finetune/embeddings.pt")]
    export = kaggle.export_results(run, tmp_path / "out")
    assert (export.copied, export.left, export.left_bytes) == (4, sorted(heavy), 20)
    assert sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*") if p.is_file()) == \
        sorted(p.relative_to(run) for p in kept)
    assert "not saved: 4 checkpoint and cache files" in kaggle.describe_export(export, run, tmp_path / "out")
    assert kaggle.export_results(run, tmp_path / "all", keep_weights=True).copied == 8
    with pytest.raises(kaggle.KaggleError, match="exceed Kaggle's output limit"):
        kaggle.export_results(run, tmp_path / "big", keep_weights=True, limit_bytes=10)


def test_importing_the_module_loads_no_third_party_package():
    import subprocess

    code = ("import sys; import mscseg.kaggle, mscseg.kaggle_gpu; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'yaml', 'packaging', 'tensorflow', 'torch', 'pandas', 'IPython'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"

"""mscseg.distributed_predict: mscseg-predict on Dask workers and --resume, against the serial run's files.

Byte identity here means: every per-image file (masks/, labels/, overlays/, cells/, rois/,
geojson/) equal byte for byte, counts.csv equal as text in every column but ``seconds``, and
predict.json equal except ``execution``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.imageio import write_png
from data.outputs import OutputExistsError
from mscseg import distributed_predict, predict
from mscseg.distributed_predict import MARKERS, Execution
from mscseg.errors import RunError
from mscseg.predict import LoadedModel, main

ROOT = Path(__file__).resolve().parents[1]
IMAGE_FOLDERS = ("masks", "labels", "overlays", "cells", "rois", "geojson")
N_IMAGES = 6


def image_files(out: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every per-image file in ``out``."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for folder in IMAGE_FOLDERS if (out / folder).is_dir()
            for p in sorted((out / folder).iterdir()) if p.is_file()}


def assert_same_outputs(reference: Path, other: Path) -> None:
    """``other`` holds the same results as ``reference`` (module docstring), and a done marker per image."""
    expected, found = image_files(reference), image_files(other)
    assert sorted(found) == sorted(expected)
    different = [path for path in expected if found[path] != expected[path]]
    assert not different, f"files differ from the serial run: {different}"
    counts = [pd.read_csv(out / "counts.csv", dtype=str, keep_default_na=False) for out in (reference, other)]
    assert list(counts[0].columns) == list(counts[1].columns) and "seconds" in counts[0].columns
    pd.testing.assert_frame_equal(counts[0].drop(columns="seconds"), counts[1].drop(columns="seconds"))
    records = [json.loads((out / "predict.json").read_text()) for out in (reference, other)]
    assert {key: value for key, value in records[0].items() if key != "execution"} == \
        {key: value for key, value in records[1].items() if key != "execution"}
    assert sorted(p.stem for p in (other / MARKERS).glob("*.json")) == list(counts[1]["image"])
    assert not list(other.glob(".staging-*")) and not list(other.rglob("*.partial"))


def inodes(out: Path, name: str) -> dict[str, int]:
    return {folder: (out / folder / f"{name}{ext}").stat().st_ino
            for folder, ext in (("masks", ".png"), ("cells", ".csv"), (MARKERS, ".json"))}


# ---------------------------------------------------------------- without a model: checks and the serial --resume

def test_bad_combinations_exit_2_in_one_line(tmp_path, capsys):
    write_png(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    common = ["--model", str(tmp_path), "--images", str(tmp_path / "a.png"), "--out", str(tmp_path / "out")]
    for extra, message in ((["--workers", "2", "--scheduler", "tcp://localhost:1"], "give one of them"),
                           (["--resume", "--overwrite"], "--resume keeps the finished images"),
                           (["--workers", "-1"], "--workers must be zero or positive")):
        assert main(common + extra) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_missing_dask_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(RunError, match=r'pip install "dask\[distributed\]"'):
        distributed_predict.import_distributed()


def test_unreachable_scheduler_is_one_line():
    execution = Execution(scheduler="tcp://127.0.0.1:9", connect_timeout_s=1.0)
    with pytest.raises(RunError, match="tcp://127.0.0.1:9: no Dask scheduler answers"):
        with distributed_predict.dask_client(execution):
            pass


@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    """A semantic 'run' whose network says p = channel 0 (no framework), as in test_mscseg_predict."""
    import keras_semseg.predict as keras_predict

    monkeypatch.setattr(keras_predict, "predict_probs", lambda model, images, size, batch_size=8:
                        [image[..., 0].astype(np.float64) for image in images])
    loaded = LoadedModel("semantic", "unet", None, 64, tmp_path / "run")
    monkeypatch.setattr(predict, "load_model", lambda run_dir, which="best", device=None: loaded)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.weights.h5").write_bytes(b"weights")


def _disk_images(folder: Path, count: int) -> Path:
    yy, xx = np.mgrid[0:90, 0:110]
    for index in range(count):
        image = np.zeros((90, 110), np.uint8)
        for cy, cx in ((20 + 5 * index, 25), (60, 40 + 7 * index), (45, 90)):
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 49] = 255
        write_png(folder / f"img{index}.png", image)
    return folder


def test_serial_resume_keeps_complete_images_and_redoes_the_rest(fake_run, tmp_path, capsys):
    images = _disk_images(tmp_path / "images", 5)
    reference = tmp_path / "reference"
    predict.predict_folder(tmp_path / "run", [images], reference, outputs=predict.OutputOptions(rois=True))
    out, resume = tmp_path / "out", Execution(resume=True)
    predict.predict_folder(tmp_path / "run", sorted(images.glob("img[0-2].png")), out, execution=resume,
                           outputs=predict.OutputOptions(rois=True))
    assert sorted(p.stem for p in (out / MARKERS).glob("*.json")) == ["img0", "img1", "img2"]
    (out / "cells" / "img1.csv").unlink()                        # a run stopped while moving img1's files
    (out / "rois" / "img2.zip").write_bytes(b"half a file")      # or one damaged since
    kept = inodes(out, "img0")
    capsys.readouterr()
    table = predict.predict_folder(tmp_path / "run", [images], out, execution=resume, quiet=False,
                                   outputs=predict.OutputOptions(rois=True))
    assert "resume: 1 of 5 image(s) already done" in capsys.readouterr().out
    assert inodes(out, "img0") == kept
    assert list(table["image"]) == [f"img{index}" for index in range(5)]
    assert_same_outputs(reference, out)
    assert json.loads((out / "predict.json").read_text())["execution"]["images_kept_from_earlier_run"] == 1
    # Other settings: no image is complete for them, every one is predicted again.
    capsys.readouterr()
    predict.predict_folder(tmp_path / "run", [images], out, execution=resume, threshold=0.9, quiet=False,
                           outputs=predict.OutputOptions(rois=True))
    assert "resume: 0 of 5 image(s) already done" in capsys.readouterr().out
    assert inodes(out, "img0")["masks"] != kept["masks"]


def test_without_resume_finished_outputs_are_refused(fake_run, tmp_path):
    images = _disk_images(tmp_path / "images", 2)
    predict.predict_folder(tmp_path / "run", [images], tmp_path / "out")
    with pytest.raises(OutputExistsError, match="already exists"):
        predict.predict_folder(tmp_path / "run", [images], tmp_path / "out", execution=Execution(resume=False))


def load_slurm_script():
    spec = importlib.util.spec_from_file_location("predict_on_slurm", ROOT / "scripts" / "predict_on_slurm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_slurm_script_imports_and_says_what_is_missing(monkeypatch, capsys):
    loaded = subprocess.run([sys.executable, "-c", "import runpy, sys; runpy.run_path(sys.argv[1]); print(sorted(name for name "
                             "in ('tensorflow', 'torch', 'distributed', 'dask_jobqueue') if name in sys.modules))",
                             str(ROOT / "scripts" / "predict_on_slurm.py")], capture_output=True, text=True, cwd=ROOT)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "[]", loaded.stderr
    script = load_slurm_script()
    with pytest.raises(SystemExit) as exit_info:
        script.build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0 and "--jobs" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)
    assert script.main(["--jobs", "2", "--", "--model", "run", "--images", "x", "--out", "y"]) == 2
    assert "pip install dask-jobqueue" in capsys.readouterr().err
    assert script.main(["--jobs", "2"]) == 2
    assert "after --" in capsys.readouterr().err
    assert script.main(["--", "--model", "run", "--workers", "2"]) == 2
    assert "set by this script" in capsys.readouterr().err


# ---------------------------------------------------------------- a trained model on Dask workers

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A U-Net trained for one epoch on six sparse synthetic 96 x 96 micrographs, resized to 64."""
    from data.synthetic import write_dataset
    from keras_semseg.train import main as train_main

    work = tmp_path_factory.mktemp("distributed_run")
    write_dataset(work / "data", n_images=6, size=96, density="sparse", seed=3)
    run = work / "unet"
    assert train_main(["--data", str(work / "data"), "--split", str(work / "split.json"), "--out", str(run), "--model",
                       "unet", "--image-size", "64", "--epochs", "1", "--batch-size", "4", "--encoder-weights", "none",
                       "--quiet"]) == 0
    return run


@pytest.fixture(scope="module")
def new_images(tmp_path_factory) -> Path:
    """Six micrographs of 150 x 170 px (larger than the training images: tiles)."""
    from data.synthetic import generate_sample

    folder = tmp_path_factory.mktemp("distributed_images")
    for index in range(N_IMAGES):
        sample = generate_sample((150, 170), "sparse", seed=20 + index, name=f"frame{index}")
        write_png(folder / f"frame{index}.png", (sample.image[..., 0] * 255).astype(np.uint8))
    return folder


def _predict_args(run: Path, images: Path | list[Path], out: Path, *extra: str) -> list[str]:
    paths = [str(p) for p in images] if isinstance(images, list) else [str(images)]
    return ["--model", str(run), "--images", *paths, "--out", str(out), "--rois", "--geojson", "--threshold", "0.5", *extra]


@pytest.fixture(scope="module")
def serial_out(trained_run, new_images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "out"
    assert main(_predict_args(trained_run, new_images, out)) == 0
    return out


@pytest.fixture(scope="module")
def cluster():
    """A local Dask cluster of two worker processes, one thread each (what --workers 2 starts)."""
    from distributed import Client

    with distributed_predict.local_cluster(2) as local:
        with Client(local) as client:
            client.wait_for_workers(2)
            local.client = client
            yield local


def _holed_blocks(seed: int) -> np.ndarray:
    """One large cell (a few hundred px wide, five round holes): its moments go through a multi-threaded BLAS."""
    rng = np.random.default_rng(seed)
    height, width = rng.integers(300, 1000, 2)
    yy, xx = np.mgrid[0:height, 0:width]
    labels = np.ones((height, width), np.int32)
    for _ in range(5):
        cy, cx, radius = rng.integers(0, height), rng.integers(0, width), rng.integers(10, 100)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < radius * radius] = 0
    return labels


@pytest.mark.slow
def test_workers_measure_as_this_process(cluster):
    """Dask's default workers run BLAS with one thread, which changes the last bit of large cells' axis lengths on
    many of these shapes; the workers of ``local_cluster`` keep this process's thread settings."""
    names = distributed_predict.THREAD_VARIABLES
    expected = {name: os.environ.get(name) for name in names}
    for environ in cluster.client.run(lambda: {name: os.environ.get(name) for name in names}).values():
        assert environ == expected
    for seed in (12, 17, 19, 21, 29):
        labels = _holed_blocks(seed)
        there = cluster.client.submit(predict.measure_cells, labels, "cell", pure=False).result()
        assert there.to_csv(index=False) == predict.measure_cells(labels, "cell").to_csv(index=False), seed


@pytest.mark.slow
def test_workers_2_write_the_serial_runs_files(trained_run, new_images, serial_out, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_predict_args(trained_run, new_images, out, "--workers", "2")) == 0
    assert "Dask: 2 worker(s)" in capsys.readouterr().out
    assert_same_outputs(serial_out, out)
    execution = json.loads((out / "predict.json").read_text())["execution"]
    assert execution["workers"] == 2 and "local Dask cluster" in execution["where"]


@pytest.mark.slow
def test_scheduler_address_and_one_model_load_per_worker(trained_run, new_images, serial_out, cluster, tmp_path):
    for attempt in ("first", "second"):
        out = tmp_path / attempt
        assert main(_predict_args(trained_run, new_images, out, "--scheduler", cluster.scheduler_address)) == 0
        assert_same_outputs(serial_out, out)
    stats = cluster.client.run(distributed_predict.worker_stats)
    assert sum(s["images"] for s in stats.values()) >= 2 * N_IMAGES
    for worker, counts in stats.items():
        assert counts["model_loads"] == (1 if counts["images"] else 0), (worker, counts)


@pytest.mark.slow
def test_resume_after_a_stopped_distributed_run(trained_run, new_images, serial_out, cluster, tmp_path, capsys):
    out, scheduler = tmp_path / "out", ["--scheduler", cluster.scheduler_address]
    first = sorted(new_images.glob("*.png"))[:3]
    assert main(_predict_args(trained_run, first, out, *scheduler, "--resume")) == 0
    (out / "overlays" / "frame1.png").unlink()                    # stopped while frame1's files were moved
    kept = {name: inodes(out, name) for name in ("frame0", "frame2")}
    before = cluster.client.run(distributed_predict.worker_stats)
    capsys.readouterr()
    assert main(_predict_args(trained_run, new_images, out, *scheduler, "--resume")) == 0
    assert f"resume: 2 of {N_IMAGES} image(s) already done" in capsys.readouterr().out
    after = cluster.client.run(distributed_predict.worker_stats)
    assert sum(after[w]["images"] - before[w]["images"] for w in after) == N_IMAGES - 2
    assert {name: inodes(out, name) for name in kept} == kept
    assert_same_outputs(serial_out, out)


@pytest.mark.slow
def test_killed_serial_run_continues_with_resume(trained_run, new_images, serial_out, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mscseg.predict", *_predict_args(trained_run, new_images, out, "--resume")]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not list((out / MARKERS).glob("*.json")) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert child.poll() is None, "the run ended before it could be stopped"
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert not (out / "counts.csv").exists()
    done = len(list((out / MARKERS).glob("*.json")))
    assert 1 <= done < N_IMAGES
    assert main(_predict_args(trained_run, new_images, out, "--resume")) == 0
    assert_same_outputs(serial_out, out)
    assert json.loads((out / "predict.json").read_text())["execution"]["images_kept_from_earlier_run"] >= done


@pytest.mark.slow
def test_slurm_script_runs_on_a_local_cluster(trained_run, new_images, serial_out, cluster, tmp_path):
    out = tmp_path / "out"
    assert load_slurm_script().predict_on_cluster(cluster, _predict_args(trained_run, new_images, out)) == 0
    assert_same_outputs(serial_out, out)


@pytest.mark.slow
def test_describe_model_tells_what_load_model_does(trained_run):
    described, loaded = distributed_predict.describe_model(trained_run), predict.load_model(trained_run)
    assert described.model is None
    assert (described.kind, described.name, described.input_size, described.geometry) == \
        (loaded.kind, loaded.name, loaded.input_size, loaded.geometry)

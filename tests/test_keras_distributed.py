"""semseg-train on several devices and workers (keras_semseg.distribute), on CPUs; and checkpoints that a full disk
cannot break.

Every distributed run is ``semseg-train``'s own ``main`` in a fresh process (``python
tests/test_keras_distributed.py ...``), since the devices and collectives of TensorFlow are
fixed at program start: two logical CPU devices for ``MirroredStrategy``, or two local
workers named by ``TF_CONFIG`` for ``MultiWorkerMirroredStrategy`` (CPU ring collectives).
The NCCL path between GPUs is not exercised here.

Tolerances: without batch normalisation two replicas compute the same global batch mean as one
device, up to the order of float32 sums: weights agree within 1e-5. The U-Net normalises each
replica's half batch with its own statistics (by design of ``tf.distribute``), so its losses
after the same steps agree only within ``UNET_LOSS_RTOL``.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = "tiny_nobn"
COMMON = ["--encoder-weights", "none", "--batch-size", "4", "--seed", "0", "--quiet"]
TINY_ARGS = ["--model", TINY, "--image-size", "32", "--epochs", "2", "--steps-per-epoch", "3", *COMMON]
WEIGHT_ATOL = 1e-5
UNET_LOSS_RTOL = 0.03
CHILD_TIMEOUT_S = 150


def build_tiny(input_shape, encoder_weights=None, **options):
    """A network without batch normalisation: B x H x W x 3 -> B x H x W x 1 probabilities (two convolutions)."""
    from keras_semseg.tf_env import tensorflow

    keras = tensorflow().keras
    inputs = keras.Input(shape=input_shape)
    hidden = keras.layers.Conv2D(4, 3, padding="same", activation="tanh")(inputs)
    logits = keras.layers.Conv2D(1, 1)(hidden)
    return keras.Model(inputs, keras.layers.Activation("sigmoid", dtype="float32")(logits), name=TINY)


def _child(argv: list[str]) -> int:
    """``devices COUNTS OUT`` (COUNTS like ``1,2``: one run per count, into ``OUT_<count>``, on that many logical CPU
    devices) or ``worker`` (devices and cluster from TF_CONFIG), then semseg-train's arguments."""
    from keras_semseg import distribute, registry
    from keras_semseg.tf_env import tensorflow

    registry.MODELS[TINY] = registry.ModelEntry(TINY, "__main__:build_tiny", "mask", "vgg16")
    from keras_semseg.train import main

    if argv[0] == "worker":
        return main(argv[1:])
    counts, out, rest = [int(count) for count in argv[1].split(",")], argv[2], argv[3:]
    tf = tensorflow()
    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(max(counts))])
    for count in counts:
        tf.keras.backend.clear_session()
        distribute.local_devices = lambda count=count: [f"/cpu:{i}" for i in range(count)] if count > 1 else []
        status = main([*rest, "--out", f"{out}_{count}"])
        if status:
            return status
    return 0


def _environment(tf_config: dict | None = None, scratch: Path | None = None) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
        environment["TMPDIR"] = str(scratch)
    environment["PYTHONPATH"] = str(ROOT) + os.pathsep + environment.get("PYTHONPATH", "")
    environment["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if tf_config is not None:
        environment["TF_CONFIG"] = json.dumps(tf_config)
    return environment


def _start(args: list[str], tf_config: dict | None = None, log: Path | None = None,
           scratch: Path | None = None) -> subprocess.Popen:
    output = open(log, "w") if log else subprocess.PIPE
    return subprocess.Popen([sys.executable, __file__, *args], cwd=ROOT, env=_environment(tf_config, scratch), stdout=output,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(process: subprocess.Popen, timeout: float = CHILD_TIMEOUT_S) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"child timed out after {timeout} s:\n{output}")
    return output or ""


def _run(args: list[str]) -> str:
    process = _start(args)
    output = _finish(process)
    assert process.returncode == 0, output
    return output


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _cluster(index: int, ports: list[int]) -> dict:
    return {"cluster": {"worker": [f"localhost:{port}" for port in ports]}, "task": {"type": "worker", "index": index}}


def _weights(path: Path) -> dict[str, np.ndarray]:
    import h5py

    arrays: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays


def _assert_same_weights(first: Path, second: Path) -> float:
    a, b = _weights(first), _weights(second)
    assert a.keys() == b.keys() and a
    largest = max(float(np.max(np.abs(a[name] - b[name]))) for name in a)
    assert largest <= WEIGHT_ATOL, f"weights differ by {largest}"
    return largest


def _data_args(data: Path, split: Path, out: Path) -> list[str]:
    return ["--data", str(data), "--split", str(split), "--out", str(out)]


@pytest.fixture(scope="module")
def data_and_split(tmp_path_factory):
    """12 synthetic 64 x 64 micrographs and a split file (10 training images, 2 validation)."""
    from data.split import load_or_make_split
    from data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("distributed")
    write_dataset(root / "data", n_images=12, size=64, density="sparse", seed=0)
    names = sorted(path.stem for path in (root / "data" / "images").iterdir())
    load_or_make_split(root / "split.json", names, seed=0)
    return root


@pytest.fixture(scope="module")
def local_runs(data_and_split):
    """The tiny network trained on one device and on two (MirroredStrategy): {1: folder, 2: folder}."""
    root = data_and_split
    _run(["devices", "1,2", str(root / "local"), "--data", str(root / "data"), "--split", str(root / "split.json"), *TINY_ARGS])
    return {count: root / f"local_{count}" for count in (1, 2)}


@pytest.mark.slow
def test_two_devices_give_the_one_device_weights(local_runs):
    record = json.loads((local_runs[2] / "run.json").read_text())
    devices = record["details"]["devices"]
    assert devices["strategy"] == "MirroredStrategy" and devices["replicas"] == 2
    assert (devices["global_batch"], devices["per_replica_batch"]) == (4, 2)
    assert record["status"] == "finished" and record["epochs_done"] == 2
    reference = json.loads((local_runs[1] / "run.json").read_text())
    assert reference["details"]["devices"]["replicas"] == 1 and reference["status"] == "finished"
    _assert_same_weights(local_runs[1] / "last.weights.h5", local_runs[2] / "last.weights.h5")


@pytest.mark.slow
def test_unet_losses_on_two_devices_agree_with_one(data_and_split):
    """Batch norm sees half batches on each replica, so only the losses are compared (UNET_LOSS_RTOL)."""
    import pandas as pd

    root = data_and_split
    unet = ["--model", "unet", "--image-size", "64", "--epochs", "1", "--steps-per-epoch", "2", "--no-augment",
            "--model-options", '{"decoder_filters": [16, 8, 8, 4, 4]}', *COMMON]
    _run(["devices", "1,2", str(root / "unet"), "--data", str(root / "data"), "--split", str(root / "split.json"), *unet])
    losses = {count: pd.read_csv(root / f"unet_{count}" / "history.csv")[["loss", "val_loss"]].to_numpy() for count in (1, 2)}
    assert losses[1].shape == losses[2].shape == (1, 2)
    np.testing.assert_allclose(losses[2], losses[1], rtol=UNET_LOSS_RTOL)


@pytest.mark.slow
def test_two_workers_give_the_one_device_weights_and_only_the_chief_writes(data_and_split, local_runs):
    root = data_and_split
    out = root / "two_workers"
    ports = _free_ports(2)
    scratch = [root / f"tmp_worker{i}" for i in range(2)]
    workers = [_start(["worker", *_data_args(root / "data", root / "split.json", out), *TINY_ARGS], _cluster(i, ports),
                      scratch=scratch[i]) for i in range(2)]
    outputs = [_finish(worker) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    record = json.loads((out / "run.json").read_text())
    devices = record["details"]["devices"]
    assert devices["strategy"] == "MultiWorkerMirroredStrategy" and devices["workers"] == 2 and devices["replicas"] == 2
    assert devices["task"] == "worker 0 of 2 tasks" and devices["per_replica_batch"] == 2
    assert record["status"] == "finished" and record["epochs_done"] == 2
    assert sorted(path.name for path in out.iterdir()) == sorted(
        ["run.json", "history.csv", "best.weights.h5", "last.weights.h5", "last.optimizer.npz", "probs"])
    assert "finished after 2 of 2 epochs" in outputs[0] and "finished after 2 of 2 epochs" in outputs[1]
    assert [list(folder.glob("semseg-worker-*")) for folder in scratch] == [[], []]
    _assert_same_weights(local_runs[1] / "last.weights.h5", out / "last.weights.h5")


@pytest.mark.slow
def test_a_killed_worker_leaves_a_run_that_resumes(data_and_split, tmp_path):
    root = data_and_split
    out = tmp_path / "killed"
    epochs = 12
    args = [*_data_args(root / "data", root / "split.json", out), *TINY_ARGS, "--epochs", str(epochs)]
    ports = _free_ports(2)
    chief, other = (_start(["worker", *args], _cluster(i, ports), tmp_path / f"worker{i}.log") for i in range(2))
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    try:
        while not (out / "last.weights.h5").is_file():
            assert chief.poll() is None and other.poll() is None, (tmp_path / "worker0.log").read_text()
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.05)
        os.killpg(other.pid, signal.SIGKILL)
        other.wait()
        try:
            chief.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(chief.pid, signal.SIGKILL)
            chief.wait()
    finally:
        for process in (chief, other):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    stopped = json.loads((out / "run.json").read_text())
    if chief.returncode == 2:
        assert stopped["status"].startswith("failed: training failed: a worker of the cluster stopped answering"), stopped["status"]
        assert (tmp_path / "worker0.log").read_text().strip().splitlines()[-1].startswith(f"error: {out}: training failed")
    assert 1 <= stopped["epochs_done"] < epochs and stopped["status"] != "finished"
    output = _run(["worker", *args, "--resume"])
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished" and record["epochs_done"] == epochs, output
    import pandas as pd

    assert pd.read_csv(out / "history.csv")["epoch"].tolist() == list(range(1, epochs + 1))


def test_a_batch_that_does_not_split_over_the_replicas_is_refused(data_and_split, tmp_path):
    root = data_and_split
    process = _start(["devices", "2", str(tmp_path / "odd"), "--data", str(root / "data"), "--split", str(root / "split.json"),
                      *TINY_ARGS, "--batch-size", "3"])
    output = _finish(process)
    assert process.returncode == 2
    assert output.strip().splitlines()[-1] == ("error: batch_size 3 does not split over 2 replicas (2 devices); "
                                                "use a multiple of 2 (the global batch)")
    assert not (tmp_path / "odd_2").exists()


@pytest.mark.parametrize("text, problem", [
    ("{", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "task 'worker' 3 is not in the cluster"),
    ('{"cluster": {"ps": ["a:1"], "worker": ["a:2"]}, "task": {"type": "worker", "index": 0}}', "only chief and worker"),
    ('{"cluster": {"worker": ["nohost"]}, "task": {"type": "worker", "index": 0}}', 'lists of "host:port"'),
])
def test_a_bad_tf_config_is_one_line(text, problem):
    from keras_semseg import SemsegError
    from keras_semseg.distribute import cluster_from_env

    with pytest.raises(SemsegError, match=problem):
        cluster_from_env({"TF_CONFIG": text})


@pytest.mark.parametrize("config, chief, tasks", [
    ({}, True, 1),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, True, 2),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, False, 2),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}, False, 2),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}, True, 2),
])
def test_the_chief_is_the_chief_task_or_worker_zero(config, chief, tasks):
    from keras_semseg.distribute import cluster_from_env

    cluster = cluster_from_env({"TF_CONFIG": json.dumps(config) if config else ""})
    assert (cluster.chief, cluster.tasks) == (chief, tasks)


@pytest.mark.parametrize("failing", ["last.weights.h5", "last.optimizer.npz", "best.weights.h5"])
def test_a_full_disk_keeps_the_previous_checkpoint_byte_for_byte(failing, tmp_path, monkeypatch):
    """The disk fills while one of the checkpoint's files is written: one line names it, and every file of the
    previous checkpoint stays as it was (the ones written before it are not moved into place either)."""
    from keras_semseg import SemsegError
    from keras_semseg.tf_env import tensorflow
    from keras_semseg.train import make_optimizer, save_checkpoint

    tf = tensorflow()
    model = build_tiny((32, 32, 3))
    model.compile(optimizer=make_optimizer(), loss="binary_crossentropy")
    model.fit(np.zeros((2, 32, 32, 3), np.float32), np.ones((2, 32, 32, 1), np.float32), verbose=0)
    save_checkpoint(model, tmp_path, improved=True)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert sorted(before) == ["best.weights.h5", "last.optimizer.npz", "last.weights.h5"]
    model.fit(np.ones((2, 32, 32, 3), np.float32), np.zeros((2, 32, 32, 1), np.float32), verbose=0)

    def full_disk(path) -> None:
        Path(path).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    if failing == "last.optimizer.npz":
        monkeypatch.setattr(np, "savez", lambda handle, *arrays: full_disk(handle.name))
    else:
        save_weights = tf.keras.Model.save_weights
        monkeypatch.setattr(tf.keras.Model, "save_weights", lambda self, path, *args, **kwargs: full_disk(path)
                            if Path(path).name.startswith(failing.split(".")[0]) else save_weights(self, path, *args, **kwargs))
    with pytest.raises(SemsegError) as raised:
        save_checkpoint(model, tmp_path, improved=True)
    assert str(raised.value) == f"{tmp_path / failing}: cannot be written (No space left on device); the previous checkpoint is kept"
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


@pytest.mark.slow
def test_semseg_train_stops_on_a_full_disk_with_one_line_and_keeps_the_last_checkpoint(data_and_split, tmp_path, monkeypatch, capsys):
    from keras_semseg import registry
    from keras_semseg.tf_env import tensorflow
    from keras_semseg.train import main

    tf = tensorflow()
    monkeypatch.setitem(registry.MODELS, TINY, registry.ModelEntry(TINY, f"{__name__}:build_tiny", "mask", "vgg16"))
    root, out = data_and_split, tmp_path / "full"
    kept: dict[str, bytes] = {}
    save_weights = tf.keras.Model.save_weights

    def full_disk_after_the_first_epoch(self, path, *args, **kwargs):
        if (out / "last.weights.h5").is_file():
            kept["last"] = (out / "last.weights.h5").read_bytes()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return save_weights(self, path, *args, **kwargs)

    monkeypatch.setattr(tf.keras.Model, "save_weights", full_disk_after_the_first_epoch)
    assert main([*_data_args(root / "data", root / "split.json", out), *TINY_ARGS, "--epochs", "3"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == f"error: {out / 'last.weights.h5'}: cannot be written (No space left on device); the previous checkpoint is kept"
    assert (out / "last.weights.h5").read_bytes() == kept["last"]
    record = json.loads((out / "run.json").read_text())
    assert record["epochs_done"] == 1 and record["status"].startswith("failed: cannot be written")
    assert not list(out.glob("*partial*"))


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))

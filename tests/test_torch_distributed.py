"""torch_instseg.distributed: training under torchrun on this CPU (gloo), 2 processes against 1, resume after a killed worker.

The multi-process tests start real processes (``python -m torch.distributed.run --standalone``) that run
this file as a script (``_child``): each process sends its stdout and stderr to ``rank<N>.log`` and
records the files it writes (``writes<N>.json``: opened for writing, renamed, ``torch.save``d).
The nccl path (GPUs) is not exercised here.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from data.cli import one_line  # noqa: E402
from torch_instseg import distributed as D  # noqa: E402
from torch_instseg.errors import InstsegError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240
SMALL = {"box_batch_size_per_image": 32, "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100,
         "rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 50}
RUN_FILES = {"run.json", "history.csv", "best.pt", "last.pt"}
TRAIN_LOSS_RTOL = 0.05   # Mask R-CNN at lr 3e-4, 2 processes against 1, the same 2 epochs (measured: 0.6% and 2.2%)
VAL_LOSS_RTOL = 0.10     # its validation loss (measured: 0.4% and 2.7%)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ---------------------------------------------------------------- the global batch and each epoch's order (no processes)

def test_every_world_size_sees_the_same_global_batches():
    one = D.epoch_order(5, 4, seed=3, epoch=2)
    assert one.shape == (2, 4) and sorted(one[0].tolist() + one[1][:1].tolist()) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(one[1][1:], one[0][:3])
    np.testing.assert_array_equal(one, D.epoch_order(5, 4, seed=3, epoch=2))
    assert not np.array_equal(one, D.epoch_order(5, 4, seed=3, epoch=3))
    parts = [D.spread(one, D.Processes(2, rank)) for rank in (0, 1)]
    assert [part.shape for part in parts] == [(2, 2), (2, 2)]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), one)
    samplers = [D.EpochSampler(5, 4, D.Processes(2, rank), seed=3) for rank in (0, 1)]
    for sampler in samplers:
        sampler.set_epoch(2)
    assert [list(s) for s in samplers] == [parts[0].ravel().tolist(), parts[1].ravel().tolist()] and len(samplers[0]) == 4


def test_a_batch_that_does_not_split_and_a_bad_environment_are_refused(monkeypatch):
    assert D.batch_per_process(4, D.Processes(2, 1)) == 2
    with pytest.raises(InstsegError, match="batch_size: 3 images per step cannot be split evenly over 2 processes"):
        D.batch_per_process(3, D.Processes(2, 0))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(InstsegError, match="WORLD_SIZE=2, RANK=2"):
        D.launch_environment()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(InstsegError, match="RANK='one' is not a whole number"):
        D.launch_environment()
    for name in D.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    assert D.launch_environment() == D.Processes(1, 0, 0)


# ---------------------------------------------------------------- processes

def _env() -> dict[str, str]:
    launched = D.ENVIRONMENT + ("LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {key: value for key, value in os.environ.items() if key not in launched}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])), OMP_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1", TORCH_CPP_LOG_LEVEL="ERROR")
    return env


def _launch(logs: Path, nproc: int, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``torchrun --standalone --nproc_per_node nproc`` of this file with ``args``; its own output in logs/torchrun.log."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "torchrun.log", "w") as output:
        return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                                 "--monitor-interval", "0.1", __file__, str(logs), *args],
                                env=env or _env(), cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)


def _wait(process: subprocess.Popen, logs: Path, timeout: float = TIMEOUT_S) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"torchrun did not end in {timeout} s:\n{_logs(logs)}")


def _logs(logs: Path) -> str:
    return "\n".join(f"--- {path.name}\n{path.read_text()[-3000:]}" for path in sorted(logs.glob("*.log")))


def _run(logs: Path, nproc: int, *args: str) -> None:
    code = _wait(_launch(logs, nproc, *args), logs)
    assert code == 0, _logs(logs)


def _writes(logs: Path, rank: int, under: Path) -> set[str]:
    """What process ``rank`` wrote under ``under`` (names relative to it)."""
    paths = json.loads((logs / f"writes{rank}.json").read_text())
    return {str(Path(p).relative_to(under)) for p in paths if Path(p).is_relative_to(under)}


def _small_network_run(out: Path, epochs: int = 3) -> None:
    """3 epochs of a 2-layer network (no batch norm) on 10 samples, global batch 4, through ``distributed``'s loader,
    DDP wrapper and ``run_batches``; each process saves its weights and epoch losses to ``out/rank<N>.pt``."""
    processes, device = D.start("cpu")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    start = {name: value.clone() for name, value in model.state_dict().items()}
    rng = np.random.default_rng(1)
    inputs = torch.as_tensor(rng.normal(size=(10, 3)), dtype=torch.float32)
    targets = inputs @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1
    dataset = list(zip(inputs, targets))
    loader, sampler = D.training_loader(dataset, 4, processes, seed=0)
    net = D.wrap(model, processes, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def losses_of(batch):
        x, y = batch
        return {"loss": torch.nn.functional.mse_loss(net(x), y)}, len(x)

    losses = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        losses.append(D.run_batches(loader, losses_of, processes, device, optimizer)["loss"])
    torch.save({"start": start, "weights": model.state_dict(), "losses": losses, "world": processes.world,
                "steps": len(loader)}, out / f"rank{processes.rank}.pt")
    D.stop()


@pytest.mark.slow
def test_two_processes_give_the_weights_of_one_with_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    _small_network_run(one)
    _run(two, 2, "small")
    alone, rank0, rank1 = (torch.load(path, weights_only=True) for path in (one / "rank0.pt", two / "rank0.pt", two / "rank1.pt"))
    assert (alone["world"], rank0["world"], alone["steps"], rank0["steps"]) == (1, 2, 3, 3)
    for name, value in alone["weights"].items():
        assert not torch.allclose(value, alone["start"][name], atol=1e-3)
        torch.testing.assert_close(rank0["weights"][name], value, rtol=0, atol=1e-5)
        assert torch.equal(rank0["weights"][name], rank1["weights"][name])
    np.testing.assert_allclose(rank0["losses"], alone["losses"], rtol=0, atol=1e-5)
    assert alone["losses"][-1] < alone["losses"][0]


def _maskrcnn_args(folder: Path, work: Path, epochs: int, *extra: str) -> list[str]:
    return ["--data", str(folder), "--split", str(work / "split.json"), "--out", str(work / "run"), "--image-size", "64",
            "--weights", "none", "--head-channels", "8", "--model-options", json.dumps(SMALL), "--batch-size", "2",
            "--lr", "3e-4", "--device", "cpu", "--epochs", str(epochs), *extra]


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    """8 synthetic 64 x 64 micrographs (6 for training, 2 for validation)."""
    from data.synthetic import write_dataset

    folder = tmp_path_factory.mktemp("ddp_cells")
    write_dataset(folder, n_images=8, size=64, density="sparse", seed=4)
    return folder


@pytest.mark.slow
def test_maskrcnn_on_two_processes_against_one_and_only_rank_0_writes(tmp_path, cells, capsys):
    import pandas as pd

    from torch_instseg.maskrcnn import main

    alone, pair = tmp_path / "one", tmp_path / "two"
    assert main(_maskrcnn_args(cells, alone, 2, "--quiet")) == 0
    _run(pair / "logs", 2, "maskrcnn", *_maskrcnn_args(cells, pair, 2))

    assert {"split.json", *(f"run/{name}" for name in RUN_FILES)} <= _writes(pair / "logs", 0, pair)
    assert _writes(pair / "logs", 1, pair) == set()
    assert {path.name for path in (pair / "run").iterdir()} == RUN_FILES
    rank0, rank1 = ((pair / "logs" / f"rank{rank}.log").read_text() for rank in (0, 1))
    assert "maskrcnn_resnet50_fpn_v2 epoch 2/2" in rank0 and f"{pair / 'run'}: finished after 2 of 2 epochs" in rank0
    assert rank1.strip() == ""
    record = json.loads((pair / "run" / "run.json").read_text())
    assert (record["status"], record["epochs_done"]) == ("finished", 2)
    assert {key: record["details"][key] for key in ("world_size", "backend", "global_batch", "batch_per_process")} == {
        "world_size": 2, "backend": "gloo", "global_batch": 2, "batch_per_process": 1}
    assert json.loads((alone / "run" / "run.json").read_text())["details"]["world_size"] == 1

    # The same global batches and the same start; what differs by design: batch norm statistics per process (with
    # weights none torchvision's backbone has BatchNorm2d, not the FrozenBatchNorm2d of a pretrained one; the FPN and
    # the v2 heads have BatchNorm2d in any case), each process's own RPN and RoI sampling, and the validation's
    # running statistics, gathered by rank 0 from its own images (DDP broadcasts rank 0's buffers).
    one, two = pd.read_csv(alone / "run" / "history.csv"), pd.read_csv(pair / "run" / "history.csv")
    shown = pd.concat({"one": one, "two": two})[["epoch", "train_loss", "val_loss"]].to_string()
    assert list(two["epoch"]) == [1, 2]
    np.testing.assert_allclose(two["train_loss"], one["train_loss"], rtol=TRAIN_LOSS_RTOL, err_msg=shown)
    np.testing.assert_allclose(two["val_loss"], one["val_loss"], rtol=VAL_LOSS_RTOL, err_msg=shown)


@pytest.mark.slow
def test_sam_finetuning_on_two_processes_writes_one_run(tmp_path, cells):
    logs, out = tmp_path / "logs", tmp_path / "run"
    args = ["--data", str(cells), "--split", str(tmp_path / "split.json"), "--out", str(out), "--variant", "vit_tiny",
            "--checkpoint", "none", "--epochs", "2", "--prompts-per-image", "2", "--iterations", "1", "--device", "cpu"]
    _run(logs, 2, "sam", *args)
    record = json.loads((out / "run.json").read_text())
    assert (record["status"], record["epochs_done"], record["details"]["world_size"], record["details"]["backend"]) == (
        "finished", 2, 2, "gloo")
    assert {"run.json", "history.csv", "best.pth", "last.pth", "resume.pt", "embeddings.pt"} <= _writes(logs, 0, out)
    assert _writes(logs, 1, tmp_path) == set()
    assert (logs / "rank1.log").read_text().strip() == ""
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".partial")) == []


@pytest.mark.slow
def test_a_killed_worker_stops_the_group_and_the_run_resumes_on_one_process_then_two(tmp_path, cells):
    import pandas as pd

    from torch_instseg.maskrcnn import main

    logs, run = tmp_path / "logs", tmp_path / "run"
    env = dict(_env(), DDP_TEST_HOLD="1:2")  # rank 1 blocks when epoch 2 starts, so the kill falls inside the run
    process = _launch(logs, 2, "maskrcnn", *_maskrcnn_args(cells, tmp_path, 3, "--quiet"), env=env)
    held = logs / "held1"
    try:
        while not held.is_file() and process.poll() is None:
            threading.Event().wait(0.05)
    finally:
        if not held.is_file():
            os.killpg(process.pid, signal.SIGKILL)
    assert held.is_file(), _logs(logs)
    assert (run / "last.pt").is_file() and torch.load(run / "last.pt", weights_only=False)["epoch"] == 1
    os.kill(int(held.read_text()), signal.SIGKILL)
    assert _wait(process, logs) != 0
    before = pd.read_csv(run / "history.csv")
    assert list(before["epoch"]) == [1] and json.loads((run / "run.json").read_text())["status"] != "finished"

    assert main(_maskrcnn_args(cells, tmp_path, 2, "--quiet", "--resume")) == 0
    record = json.loads((run / "run.json").read_text())
    assert (record["status"], record["epochs_done"], record["details"]["world_size"]) == ("finished", 2, 1)

    _run(tmp_path / "logs2", 2, "maskrcnn", *_maskrcnn_args(cells, tmp_path, 3, "--quiet", "--resume"))
    record = json.loads((run / "run.json").read_text())
    history = pd.read_csv(run / "history.csv")
    assert (record["status"], record["epochs_done"], record["details"]["world_size"]) == ("finished", 3, 2)
    assert list(history["epoch"]) == [1, 2, 3] and np.isfinite(history[["train_loss", "val_loss"]].to_numpy()).all()
    pd.testing.assert_frame_equal(history.iloc[:1], before)
    assert record["best_epoch"] == int(history["val_loss"].idxmin()) + 1
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == 3


# ---------------------------------------------------------------- a full disk during a Mask R-CNN checkpoint

def test_a_full_disk_during_a_maskrcnn_checkpoint_names_the_file_and_keeps_the_previous_ones(tmp_path, monkeypatch):
    from torch_instseg.maskrcnn_train import TrainingState, save_checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = TrainingState(model, optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer))
    save_checkpoint(tmp_path, state, 1, True, 0.5)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert set(before) == {"best.pt", "last.pt"}
    with torch.no_grad():
        model.weight.add_(1.0)
    tried: list[str] = []
    save = torch.save

    def full(obj, path, *args, **kwargs):
        if str(path).endswith("last.pt.partial"):
            tried.append(str(path))
            Path(path).write_bytes(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as raised:
        save_checkpoint(tmp_path, state, 2, True, 0.4)
    assert tried == [str(tmp_path / "last.pt.partial")]
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "last.pt")
    assert one_line(raised.value).startswith(f"{tmp_path / 'last.pt'}: No space left on device; the outputs written before")
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


@pytest.mark.slow
def test_a_full_disk_stops_instseg_train_with_one_line(tmp_path, cells, monkeypatch, capsys):
    from torch_instseg.maskrcnn import main

    args = _maskrcnn_args(cells, tmp_path, 1, "--quiet")
    assert main(args) == 0
    run = tmp_path / "run"
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    capsys.readouterr()
    save = torch.save

    def full(obj, path, *args, **kwargs):
        if str(path).endswith(".pt.partial"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full)
    assert main(_maskrcnn_args(cells, tmp_path, 2, "--quiet", "--resume")) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {run}/") and "No space left on device" in lines[0]
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before


# ---------------------------------------------------------------- the processes' side (torchrun runs this file)

def _record_writes(logs: Path) -> list[str]:
    """Record every path this process opens for writing, renames or ``torch.save``s (outside ``logs``)."""
    written: list[str] = []
    logs_text = str(logs.resolve())

    def note(path) -> None:
        text = os.path.abspath(os.fsdecode(path)) if isinstance(path, (str, bytes, os.PathLike)) else None
        if text and not text.startswith(logs_text):
            written.append(text)

    def hook(event: str, args: tuple) -> None:
        if event == "open" and len(args) >= 3:
            mode, flags = args[1], args[2] or 0
            if (mode and any(c in mode for c in "wax+")) or (flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                note(args[0])
        elif event in ("os.rename", "os.replace") and len(args) >= 2:
            note(args[1])
        elif event == "os.mkdir" and args:
            note(args[0])

    sys.addaudithook(hook)
    save = torch.save

    def recorded_save(obj, path, *args, **kwargs):
        note(path)
        return save(obj, path, *args, **kwargs)

    torch.save = recorded_save
    return written


def _hold(rank: int, epoch: int, logs: Path) -> None:
    """Make process ``rank`` block when Mask R-CNN epoch ``epoch`` starts, after writing its pid to logs/held<rank>."""
    from torch_instseg import maskrcnn_train

    train_one_epoch = maskrcnn_train.train_one_epoch

    def holding(*args, **kwargs):
        if args[6] + 1 >= epoch:
            (logs / f"held{rank}.partial").write_text(str(os.getpid()))
            os.replace(logs / f"held{rank}.partial", logs / f"held{rank}")
            threading.Event().wait()
        return train_one_epoch(*args, **kwargs)

    maskrcnn_train.train_one_epoch = holding


def _child(logs: Path, what: str, argv: list[str]) -> int:
    rank = int(os.environ.get("RANK", "0"))
    log = os.open(logs / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    if what == "small":
        _small_network_run(logs)
        return 0
    written = _record_writes(logs)
    hold = os.environ.get("DDP_TEST_HOLD")
    if hold and int(hold.split(":")[0]) == rank:
        _hold(rank, int(hold.split(":")[1]), logs)
    if what == "maskrcnn":
        from torch_instseg.maskrcnn import main
    else:
        from torch_instseg.sam_finetune import main
    try:
        return main(argv)
    finally:
        (logs / f"writes{rank}.json").write_text(json.dumps(sorted(set(written))))


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(_child(Path(sys.argv[1]), sys.argv[2], sys.argv[3:]))

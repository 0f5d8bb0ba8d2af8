"""SAM fine-tuning: prompt sampling and loss known answers, a tiny vit_tiny run, resume, checkpoints, bad input."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from data.dataset import in_memory
from data.errors import MscsegError
from data.sample import Sample
from data.synthetic import generate
from torch_instseg import sam_finetune as F

torch = pytest.importorskip("torch")
pytest.importorskip("segment_anything")

FAST = dict(variant="vit_tiny", checkpoint="none", epochs=1, lr=3e-3, prompts_per_image=4, iterations=1, seed=0)
TINY_EPOCHS = 4  # 3 images x 4 epochs: the loss on fixed prompts drops 0.99 -> 0.96 (after 2 epochs only by 0.002)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ---------------------------------------------------------------- prompt sampling


def test_jittered_boxes_stay_in_the_frame_and_within_the_shift():
    rng = np.random.default_rng(0)
    boxes = np.array([[0, 0, 10, 10], [50, 40, 90, 100], [5, 90, 60, 100], [98, 2, 100, 4]], np.float64)
    for _ in range(50):
        jittered = F.jitter_boxes(boxes, rng, frame=(100, 100), fraction=0.5, max_shift=6.0)
        assert jittered.shape == (4, 4)
        assert (jittered[:, [0, 2]] >= 0).all() and (jittered[:, [0, 2]] <= 100).all()
        assert (jittered[:, [1, 3]] >= 0).all() and (jittered[:, [1, 3]] <= 100).all()
        assert (np.abs(jittered - boxes) <= 6.0 + 1e-4).all()
        assert (jittered[:, 2] > jittered[:, 0]).all() and (jittered[:, 3] > jittered[:, 1]).all()


def test_jitter_with_no_noise_returns_the_box():
    boxes = np.array([[3, 4, 20, 30]], np.float64)
    assert np.array_equal(F.jitter_boxes(boxes, np.random.default_rng(1), (64, 64), fraction=0.0), boxes.astype(np.float32))


def test_jitter_noise_scales_with_the_box_side():
    rng = np.random.default_rng(2)
    boxes = np.tile([[100.0, 100.0, 200.0, 140.0]], (4000, 1))
    shift = F.jitter_boxes(boxes, rng, (1000, 1000), fraction=0.1, max_shift=1000.0) - boxes
    assert abs(shift[:, 0].std() - 10.0) < 0.6
    assert abs(shift[:, 1].std() - 4.0) < 0.3


def test_positive_points_inside_the_mask_negative_inside_the_box_outside_it():
    mask = np.zeros((1, 12, 12), bool)
    mask[0, 3:6, 4:8] = True
    box = np.array([[2, 1, 10, 8]], np.float64)
    pixels, labels = F.sample_points(mask, box, 5, 5, np.random.default_rng(3))
    assert pixels.shape == (1, 10, 2) and list(labels[0]) == [1] * 5 + [0] * 5
    for (row, col), label in zip(pixels[0], labels[0]):
        assert mask[0, row, col] == (label == 1)
        assert 1 <= row < 8 and 2 <= col < 10


def test_no_negative_point_when_the_mask_fills_its_box():
    mask = np.zeros((1, 8, 8), bool)
    mask[0, 2:4, 2:5] = True
    pixels, labels = F.sample_points(mask, np.array([[2, 2, 5, 4]]), 1, 2, np.random.default_rng(0))
    assert list(labels[0]) == [1, F.PAD_LABEL, F.PAD_LABEL]


def test_correction_point_comes_from_the_larger_error():
    target = np.zeros((3, 6, 6), bool)
    target[:, 1:4, 1:4] = True
    predicted = target.copy()
    predicted[0, 1:4, 1:3] = False          # 6 missed pixels -> positive point among them
    predicted[1, 4:6, :] = True             # 12 extra pixels -> negative point among them
    pixels, labels = F.correction_points(predicted, target, np.random.default_rng(4))
    assert list(labels) == [1, 0, F.PAD_LABEL]
    assert target[0][tuple(pixels[0])] and not predicted[0][tuple(pixels[0])]
    assert predicted[1][tuple(pixels[1])] and not target[1][tuple(pixels[1])]


def test_grid_cells_map_to_the_centres_of_their_input_pixels():
    assert np.allclose(F.grid_to_input(np.array([[0, 1], [2, 0]])), [[5.5, 1.5], [1.5, 9.5]])


# ---------------------------------------------------------------- losses


def test_focal_and_dice_at_zero_logits():
    logits = torch.zeros(1, 2, 2)
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    assert float(F.dice_loss(logits, target)) == pytest.approx(1 - (2 * 1 + 1) / (2 + 2 + 1))
    assert float(F.focal_loss(logits, target)) == pytest.approx(math.log(2) * 0.25 * (0.25 + 0.25 + 0.75 + 0.75) / 4)


def test_losses_vanish_for_a_confident_correct_mask():
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    logits = (target * 2 - 1) * 30
    assert float(F.focal_loss(logits, target)) < 1e-12
    assert float(F.dice_loss(logits, target)) == pytest.approx(0.0, abs=1e-6)


def test_mask_iou_known_answer():
    logits = torch.tensor([[[1.0, -1.0], [1.0, 1.0]]])
    target = torch.tensor([[[1, 1], [0, 0]]])
    assert float(F.mask_iou(logits, target)) == pytest.approx(0.25)
    assert float(F.mask_iou(-torch.ones(1, 2, 2), torch.zeros(1, 2, 2))) == 1.0


def test_sam_loss_keeps_the_best_of_three_masks_and_fits_the_iou_head():
    target = torch.zeros(1, 4, 4)
    target[0, :2, :2] = 1
    good = (target[0] * 2 - 1) * 30
    low_res = torch.stack([-good, good, torch.zeros(4, 4)])[None]
    predicted_iou = torch.tensor([[0.0, 1.0, 0.25]])
    loss, parts, best = F.sam_loss(low_res, predicted_iou, target)
    assert int(best[0]) == 1
    assert float(parts["mask_iou"]) == 1.0
    # IoU of the masks with the target: 0 (inverted), 1 (exact), 0 (logit 0 is background: empty mask)
    assert float(parts["iou_mse"]) == pytest.approx(((0 - 0) ** 2 + (1 - 1) ** 2 + (0.25 - 0) ** 2) / 3)
    assert float(loss) == pytest.approx(float(parts["iou_mse"]), abs=1e-6)


# ---------------------------------------------------------------- a tiny fine-tune


def _samples(n: int = 3, size: int = 72) -> list[Sample]:
    return generate(n, size, "sparse", seed=11)


@pytest.fixture(scope="module")
def tiny_data():
    samples = _samples(4)
    dataset = in_memory(samples, root="memory://tiny")
    split = {"train": [s.name for s in samples[:3]], "val": [samples[3].name]}
    return dataset, split


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_data):
    dataset, split = tiny_data
    out = tmp_path_factory.mktemp("sam_ft") / "run"
    record = F.finetune_sam(dataset, split, out, dict(FAST, epochs=TINY_EPOCHS), device="cpu")
    return out, record


def test_fine_tuning_lowers_the_training_loss(tiny_data, tiny_run):
    dataset, split = tiny_data
    out, record = tiny_run
    settings = F.FinetuneSettings(**dict(FAST, epochs=TINY_EPOCHS))
    settings.check()
    from torch_instseg.sam import build_sam

    start = F.build_for_training(settings, "cpu")
    trained = build_sam("vit_tiny", out / "last.pth", "cpu")
    images = [F.prepare_image(s, 256) for s in dataset.subset(split["train"])]
    embeddings = F.embed_all(start, dataset, split["train"])
    before = F.evaluate_loss(start, images, settings, 7, embeddings)["loss"]
    after = F.evaluate_loss(trained, images, settings, 7, embeddings)["loss"]
    assert after < before - 0.01
    assert record["status"] == "finished" and record["epochs_done"] == TINY_EPOCHS and record["trainer"] == "sam_finetune"


def test_run_folder_holds_the_record_history_and_checkpoints(tiny_run):
    out, _ = tiny_run
    for name in ("run.json", "history.csv", "best.pth", "last.pth", "resume.pt", "embeddings.pt"):
        assert (out / name).is_file(), name
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["focal_weight"] == 0.0          # random start: Dice alone
    assert run["split"]["val"] and 1 <= run["best_epoch"] <= TINY_EPOCHS
    import pandas as pd

    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == list(range(1, TINY_EPOCHS + 1))
    assert {"train_loss", "val_loss", "val_mask_iou", "time_s"} <= set(history.columns)


@pytest.mark.parametrize("trainable, changed", [
    ("decoder", {"mask_decoder"}),
    ("decoder+prompt", {"mask_decoder", "prompt_encoder"}),
    ("all", {"image_encoder", "mask_decoder", "prompt_encoder"}),
])
def test_only_the_trainable_parts_change(tmp_path, tiny_data, trainable, changed):
    dataset, split = tiny_data
    settings = dict(FAST, trainable=trainable)
    F.finetune_sam(dataset, split, tmp_path / "run", settings, device="cpu")
    resolved = F.FinetuneSettings(**settings)
    resolved.check()
    start = F.build_for_training(resolved, "cpu").state_dict()
    trained = torch.load(str(tmp_path / "run" / "last.pth"), weights_only=True)
    assert set(trained) == set(start)
    assert {name.split(".")[0] for name in start if not torch.equal(start[name], trained[name])} == changed
    assert (tmp_path / "run" / "embeddings.pt").is_file() == (trainable != "all")


def test_fine_tuned_checkpoint_loads_in_build_sam(tiny_run):
    from torch_instseg.sam import build_sam

    out, _ = tiny_run
    sam = build_sam("vit_tiny", out / "best.pth", "cpu")
    assert sam.mscseg_info["untrained"] is False
    assert sam.mscseg_info["fine_tuned"] is True and sam.mscseg_info["random_encoder"] is True
    with pytest.raises(MscsegError, match="best.pth: checkpoint is SAM vit_tiny, not vit_b"):
        build_sam("vit_b", out / "best.pth", "cpu")


@pytest.mark.slow
def test_saved_state_loads_in_segment_anythings_registry(tmp_path):
    from segment_anything import sam_model_registry

    from torch_instseg.sam import build_sam

    torch.manual_seed(0)
    sam = build_sam("vit_b", "none", "cpu")
    path = F.save_sam_state(sam, tmp_path / "best.pth")
    loaded = sam_model_registry["vit_b"](checkpoint=str(path))
    name = "mask_decoder.iou_prediction_head.layers.0.weight"
    assert torch.equal(loaded.state_dict()[name], sam.state_dict()[name])


def test_resume_continues_and_changed_settings_are_refused(tmp_path, tiny_data):
    dataset, split = tiny_data
    out = tmp_path / "run"
    F.finetune_sam(dataset, split, out, dict(FAST, epochs=1), device="cpu")
    record = F.finetune_sam(dataset, split, out, dict(FAST, epochs=2), device="cpu", resume=True)
    assert record["epochs_done"] == 2
    assert (out / "history.csv").read_text().count("\n") == 3
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(MscsegError, match=r"run.json: cannot resume with other settings: lr=0.003 \(now 0.01\)"):
        F.finetune_sam(dataset, split, out, dict(FAST, epochs=3, lr=0.01), device="cpu", resume=True)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_an_existing_run_is_not_overwritten(tmp_path, tiny_data):
    dataset, split = tiny_data
    out = tmp_path / "run"
    F.finetune_sam(dataset, split, out, dict(FAST), device="cpu")
    with pytest.raises(MscsegError, match="holds a finished sam_vit_tiny run"):
        F.finetune_sam(dataset, split, out, dict(FAST), device="cpu")


# ---------------------------------------------------------------- the runner's step and --prompts gt


def _write_predictions_dir(folder: Path, dataset, names) -> Path:
    from torch_instseg import coco
    from torch_instseg.maskrcnn import labels_to_instances

    gt = coco.dataset_to_coco(list(dataset.subset(names)))
    coco.write_coco(folder / "gt.json", gt)
    ids = coco.image_id_by_name(gt)
    results = []
    for sample in dataset.subset(names):
        masks, _ = labels_to_instances(sample.labels)
        results += coco.instances_to_results(ids[sample.name], masks, np.linspace(0.9, 0.5, len(masks)))
    coco.write_results(folder / "maskrcnn.json", results)
    return folder


def test_finetune_and_predict_writes_every_fine_tuned_method(tmp_path, tiny_data):
    dataset, split = tiny_data
    predictions = _write_predictions_dir(tmp_path / "predictions", dataset, split["val"])
    result = F.finetune_and_predict(dict(FAST), dataset, split, tmp_path / "sam_finetune", predictions, device="cpu")
    names = sorted(p.name for p in predictions.glob("sam_ft*.json") if not p.name.endswith(".meta.json"))
    assert names == ["sam_ft_box.json", "sam_ft_box_mask.json", "sam_ft_box_point.json", "sam_ft_gt_box.json", "sam_ft_gt_box_point.json"]
    n_instances = len(json.loads((predictions / "gt.json").read_text())["annotations"])
    assert len(json.loads((predictions / "sam_ft_gt_box.json").read_text())) == n_instances
    meta = json.loads((predictions / "sam_ft_gt_box.meta.json").read_text())
    assert meta["prompts"] == "gt" and meta["score_source"] == "sam_iou" and meta["fine_tuned"] is True
    assert meta["random_encoder"] is True and "random features" in meta["warning"]
    assert result.record["status"] == "finished"


def test_instseg_sam_prompts_gt_with_a_fine_tuned_checkpoint(tmp_path, tiny_data, tiny_run, capsys):
    from torch_instseg import sam as S

    dataset, split = tiny_data
    out, _ = tiny_run
    folder = tmp_path / "data"
    _write_folder_dataset(folder, list(dataset))
    (tmp_path / "split.json").write_text(json.dumps(split))
    _write_predictions_dir(tmp_path, dataset, split["val"])
    args = ["--data", str(folder), "--split", str(tmp_path / "split.json"), "--gt", str(tmp_path / "gt.json"),
            "--prompts", "gt", "--variant", "vit_tiny", "--checkpoint", str(out / "best.pth"), "--method-prefix", "sam_ft", "--quiet"]
    assert S.main(args) == 0
    assert (tmp_path / "sam_ft_gt_box.json").is_file() and (tmp_path / "sam_ft_gt_box_point.json").is_file()
    assert S.main(args + ["--modes", "box_mask", "--overwrite"]) == 2
    assert "unknown prompt mode 'box_mask' for gt prompts" in capsys.readouterr().err


# ---------------------------------------------------------------- command line, bad input


def _write_folder_dataset(folder: Path, samples) -> Path:
    from data.imageio import write_labels, write_png

    for sample in samples:
        write_png(folder / "images" / f"{sample.name}.png", (sample.image[..., 0] * 255).astype(np.uint8))
        write_labels(folder / "masks" / f"{sample.name}.png", sample.labels)
    return folder


def _cli(tmp_path, samples, *extra) -> tuple[int, Path]:
    folder = _write_folder_dataset(tmp_path / "data", samples)
    out = tmp_path / "run"
    code = F.main(["--data", str(folder), "--split", str(tmp_path / "split.json"), "--out", str(out), "--epochs", "1",
                   "--prompts-per-image", "2", "--iterations", "0", "--device", "cpu", "--quiet", "--variant", "vit_tiny",
                   "--trainable", "decoder", *extra])
    return code, out


def _assert_one_line(capsys, *fragments) -> None:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_cli_trains_and_writes_the_split(tmp_path):
    code, out = _cli(tmp_path, _samples(3, 64))
    assert code == 0
    assert (tmp_path / "split.json").is_file() and (out / "best.pth").is_file()


def test_cli_refuses_a_checkpoint_of_another_variant(tmp_path, tiny_run, capsys):
    out_tiny, _ = tiny_run
    code, out = _cli(tmp_path, _samples(3, 64), "--variant", "vit_b", "--checkpoint", str(out_tiny / "best.pth"))
    assert code == 2
    _assert_one_line(capsys, "best.pth", "checkpoint is SAM vit_tiny, not vit_b")
    assert not out.exists() and not (tmp_path / "split.json").exists()


def test_cli_refuses_a_dataset_without_instances(tmp_path, capsys):
    blank = [Sample(s.image, np.zeros_like(s.labels), s.name, s.source) for s in _samples(3, 64)]
    code, out = _cli(tmp_path, blank, "--checkpoint", "none")
    assert code == 2
    _assert_one_line(capsys, str(tmp_path / "data"), "hold no instances")
    assert not out.exists() and not (tmp_path / "split.json").exists()


def test_cli_refuses_an_image_smaller_than_the_prompt_size(tmp_path, capsys):
    code, out = _cli(tmp_path, _samples(3, 48))
    assert code == 2
    _assert_one_line(capsys, ".png", "image is 48x48, smaller than SAM's mask prompt size 64x64")
    assert not out.exists() and not (tmp_path / "split.json").exists()


def test_cli_refuses_a_resume_with_changed_settings(tmp_path, capsys):
    samples = _samples(3, 64)
    assert _cli(tmp_path, samples)[0] == 0
    out = tmp_path / "run"
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, _ = _cli(tmp_path, samples, "--resume", "--epochs", "2", "--lr", "0.5")
    assert code == 2
    _assert_one_line(capsys, str(out / "run.json"), "cannot resume with other settings", "lr=")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_bad_settings_are_listed_in_one_error():
    settings = F.FinetuneSettings(trainable="encoder", epochs=0, point_probability=2.0, mask_prompt_probability=-0.1)
    with pytest.raises(MscsegError) as caught:
        settings.check()
    message = str(caught.value)
    assert "trainable: must be one of decoder, decoder+prompt, all, got 'encoder'" in message and "epochs: must be at least 1" in message and "point_probability" in message
    assert "mask_prompt_probability: must be between 0 and 1" in message


def test_detector_like_masks_are_logits_near_each_instance():
    targets = np.zeros((2, 16, 16), bool)
    targets[0, 4:10, 4:10] = True
    targets[1, 12, 12] = True
    rng = np.random.default_rng(0)
    for _ in range(20):
        logits = F.detector_like_masks(targets, rng)
        assert logits.shape == (2, 1, 16, 16) and logits.dtype == np.float32
        bound = math.log((1 - 1e-3) / 1e-3)
        assert np.all(np.abs(logits) <= bound + 1e-4)
        inside = logits[:, 0] > 0
        assert inside[0, 6:8, 6:8].all() and not inside[0, :2].any() and not inside[0, :, 13:].any()
        assert not inside[1, :8].any()


def test_mask_prompt_rounds_train_with_a_mask_input(tiny_data):
    dataset, split = tiny_data
    settings = F.FinetuneSettings(**dict(FAST, iterations=0, mask_prompt_probability=1.0))
    settings.check()
    sam = F.build_for_training(settings, "cpu")
    image = F.prepare_image(dataset.subset(split["train"])[0], 256)
    seen = []
    original = sam.prompt_encoder.forward

    def spy(points, boxes, masks):
        seen.append(masks)
        return original(points, boxes, masks)

    sam.prompt_encoder.forward = spy
    embedding = F.embed_all(sam, dataset, split["train"][:1])[image.name]
    loss, _ = F.prompt_rounds(sam, embedding, image, np.arange(min(2, len(image.targets))), settings, np.random.default_rng(0))
    assert len(seen) == 1 and seen[0] is not None and tuple(seen[0].shape[1:]) == (1, 64, 64)
    assert math.isfinite(float(loss.detach()))


# ---------------------------------------------------------------- config presets


@pytest.mark.parametrize("preset", ["paper", "small", "tiny"])
def test_preset_sections_make_valid_settings(preset):
    from mscseg.config import load_config

    from mscseg.steps import settings_of

    section = load_config(preset).instance.sam_finetune
    settings = settings_of(F.FinetuneSettings, section).checked()
    if preset == "paper":
        assert (settings.variant, settings.trainable, settings.focal_weight) == ("vit_h", "decoder+prompt", 20.0)
    else:
        variant = {"small": "vit_tiny_512", "tiny": "vit_tiny"}[preset]
        assert (settings.variant, settings.checkpoint, settings.trainable, settings.focal_weight) == (variant, None, "decoder", 0.0)


def test_config_checkpoint_default_means_the_released_file(tmp_path):
    from mscseg.config import from_mapping

    from torch_instseg.settings import build_sam_checkpoint, untrained_start

    settings = from_mapping({"instance": {"sam_finetune": {"variant": "vit_b", "checkpoint": "default"}}})
    finetune = settings.instance.sam_finetune
    assert build_sam_checkpoint(finetune.checkpoint) is None and not untrained_start(finetune.variant, finetune.checkpoint)
    assert F.FinetuneSettings(variant="vit_b", checkpoint="default").checked().checkpoint == "default"
    assert F.FinetuneSettings(variant="vit_tiny", checkpoint="default").checked().checkpoint is None
    assert build_sam_checkpoint(None) == "none" and build_sam_checkpoint("none") == "none"
    with pytest.raises(MscsegError, match="instance.sam_finetune.*trainable"):
        from_mapping({"instance": {"sam_finetune": {"trainable": "encoder"}}})

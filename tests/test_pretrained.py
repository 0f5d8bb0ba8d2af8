"""Pretrained files: every missing file listed at once, corrupt checkpoints caught by the pre-flight."""
from __future__ import annotations

import pytest

import torch_instseg.weights
from mscseg import run as runner
from mscseg.config import load_config
from mscseg.errors import RunError
from mscseg.pretrained import check_pretrained, missing_pretrained
from torch_instseg.errors import InstsegError


def _paper(tmp_path, extra: str = ""):
    config = tmp_path / "paper_synthetic.yaml"
    synthetic = "  dataset: {synthetic: {n_images: 8, size: 64}}\n"
    config.write_text(f"base: paper\nsemantic:\n{synthetic}instance:\n{synthetic}  sam: {{checkpoint: default}}\n"
                      f"  sam_finetune: {{checkpoint: default}}\n{extra}")
    return load_config(config)


def _torch_checkpoint(path):
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.zeros(64, 64)}, path)
    return path


def test_every_missing_file_of_the_paper_preset_is_listed_at_once(offline):
    settings = _paper(offline)
    missing = missing_pretrained(settings)
    names = sorted(item.path.name for item in missing)
    assert names == sorted([
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
        "sam_vit_h_4b8939.pth",
    ])
    with pytest.raises(RunError) as caught:
        check_pretrained(settings)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("5 pretrained file(s) missing")
    for item in missing:
        assert item.path.name in message and str(item.path.parent) in message
    for key in ("semantic.encoder_weights: none", "instance.weights: none", "instance.sam.checkpoint: none"):
        assert key in message


def test_only_the_steps_about_to_run_need_their_files(offline):
    settings = _paper(offline)
    names = [item.path.name for item in missing_pretrained(settings, {"semantic_train_segnet", "instance_sam"})]
    assert names == ["vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "sam_vit_h_4b8939.pth"]


def test_a_truncated_sam_checkpoint_stops_the_run_before_training(offline, capsys):
    settings = _paper(offline, "")
    checkpoint = _torch_checkpoint(offline / "sam" / "sam_vit_h_4b8939.pth")
    assert torch_instseg.weights.check_checkpoint_file(checkpoint) == checkpoint
    checkpoint.write_bytes(checkpoint.read_bytes()[:-200])
    with pytest.raises(InstsegError, match="corrupt or truncated"):
        torch_instseg.weights.resolve_sam_checkpoint("vit_h", None)
    with pytest.raises(RunError) as caught:
        check_pretrained(settings, {"instance_sam"})
    assert caught.value.path == str(checkpoint) and "instance.sam.checkpoint: none" in str(caught.value)
    config = offline / "sam_only.yaml"
    config.write_text("base: small\ninstance:\n  sam: {checkpoint: default, variant: vit_h}\n")
    assert runner.main(["--config", str(config), "--out", str(offline / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(checkpoint) in error and "corrupt or truncated" in error
    assert not (offline / "out").exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated"])
def test_bad_checkpoint_files_are_named(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(InstsegError) as caught:
        torch_instseg.weights.check_checkpoint_file(path)
    assert caught.value.path == str(path)


def test_coco_weights_in_the_cache_are_used_without_network(offline):
    cached = _torch_checkpoint(torch_instseg.weights.coco_weights_path())
    assert torch_instseg.weights.ensure_coco_weights(download=True) == cached

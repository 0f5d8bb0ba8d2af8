"""Where the pretrained weights of the instance study live, and the one offline message.

- Mask R-CNN COCO weights: torchvision's ``MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1``,
  kept in torchvision's cache ``$TORCH_HOME/hub/checkpoints/`` (``torch.hub.get_dir()``).
- SAM checkpoints: ``sam_vit_h_4b8939.pth``, ``sam_vit_l_0b3195.pth``, ``sam_vit_b_01ec64.pth``
  from the segment-anything release, looked for in ``$MSCSEG_SAM_DIR`` or ``~/.cache/mscseg/sam/``
  unless a path is given. SAM checkpoints are never downloaded by the project (2.4 GB for ViT-H).

Online, the COCO file is downloaded into torchvision's cache with torch.hub's progress
bar, as ``torchvision.models`` does. Offline, the messages name each file, its folder and
URL; ``mscseg.pretrained`` lists every missing file of a run at once. A checkpoint's
header (its zip directory and pickle) is checked before use, so a truncated or corrupt
file is reported before training starts. This module imports torch only inside functions.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

from .errors import InstsegError

COCO_WEIGHTS_URL = "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth"
COCO_WEIGHTS_FILE = COCO_WEIGHTS_URL.rsplit("/", 1)[-1]

SAM_RELEASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM_CHECKPOINT_FILES = {
    "vit_h": "sam_vit_h_4b8939.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_b": "sam_vit_b_01ec64.pth",
}


def torch_checkpoint_dir() -> Path:
    """torchvision's weight cache: ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``)."""
    try:
        import torch

        return Path(torch.hub.get_dir()) / "checkpoints"
    except ImportError:
        torch_home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
        return Path(os.path.expanduser(torch_home)) / "hub" / "checkpoints"


def coco_weights_path() -> Path:
    """Where torchvision keeps (or would keep) the COCO Mask R-CNN v2 weights."""
    return torch_checkpoint_dir() / COCO_WEIGHTS_FILE


def coco_weights_message() -> str:
    folder = torch_checkpoint_dir()
    return (
        f"COCO weights for Mask R-CNN not found and cannot be downloaded: put {COCO_WEIGHTS_FILE} "
        f"(from {COCO_WEIGHTS_URL}) in {folder}/ (torchvision's cache; set TORCH_HOME to move it), "
        "or run without them: --weights none (random init) or --weights PATH (a local .pth)"
    )


def _download(url: str, destination: Path) -> None:
    import torch

    destination.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(destination), progress=True)


def check_checkpoint_file(path: str | Path) -> Path:
    """``InstsegError`` unless ``path`` is a readable torch checkpoint: a zip whose directory lists a
    ``data.pkl`` that reads back with a good checksum (or a legacy pickle file)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as error:
        raise InstsegError(f"cannot read the checkpoint ({error.strerror or error})", path) from None
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") or name == "data.pkl"]
                if not pickles:
                    raise zipfile.BadZipFile("no data.pkl")
                archive.read(pickles[0])
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as error:
            raise InstsegError(f"corrupt or truncated torch checkpoint ({error}); delete it and download it again", path) from None
        return path
    if head[:1] != b"\x80":
        raise InstsegError("not a torch checkpoint (neither a zip archive nor a pickle); delete it and download it again", path)
    return path


def fetch_coco_weights(download: bool = True) -> Path | None:
    """The cached COCO weights, downloaded (progress bar) when missing and ``download``; None when unavailable."""
    path = coco_weights_path()
    if path.is_file():
        return path
    if download:
        try:
            _download(COCO_WEIGHTS_URL, path)
        except Exception:  # noqa: BLE001 - any network or disk failure means "not available"
            pass
    return path if path.is_file() else None


def ensure_coco_weights(download: bool = True) -> Path:
    """Path of the cached, header-checked COCO weights, downloading them once if allowed; ``InstsegError`` when offline."""
    path = fetch_coco_weights(download)
    if path is None:
        raise InstsegError(coco_weights_message())
    return check_checkpoint_file(path)


def sam_checkpoint_dir() -> Path:
    """Default folder of SAM checkpoints: ``$MSCSEG_SAM_DIR`` or ``~/.cache/mscseg/sam``."""
    return Path(os.path.expanduser(os.environ.get("MSCSEG_SAM_DIR", "~/.cache/mscseg/sam")))


def sam_checkpoint_message(variant: str, looked_at: Path) -> str:
    name = SAM_CHECKPOINT_FILES[variant]
    return (
        f"{looked_at}: SAM {variant} checkpoint not found: download {name} from {SAM_RELEASE_URL}{name} "
        f"and put it in {sam_checkpoint_dir()}/ (or pass --sam-checkpoint PATH); "
        "to run without it, --sam-checkpoint none builds SAM with random weights (outputs labelled untrained)"
    )


def sam_checkpoint_path(variant: str, checkpoint: str | os.PathLike | None) -> Path | None:
    """Where the checkpoint of ``variant`` is looked for (not checked); ``None`` for ``"none"``.

    ``checkpoint`` None means the default file in ``sam_checkpoint_dir()``; a folder means the
    variant's file inside it.
    """
    if isinstance(checkpoint, str) and checkpoint.strip().lower() == "none":
        return None
    if variant not in SAM_CHECKPOINT_FILES:
        if checkpoint is None:
            raise InstsegError(f"SAM variant '{variant}' has no released checkpoint; pass --sam-checkpoint none or a file")
        return Path(checkpoint).expanduser()
    if checkpoint is None:
        return sam_checkpoint_dir() / SAM_CHECKPOINT_FILES[variant]
    path = Path(checkpoint).expanduser()
    return path / SAM_CHECKPOINT_FILES[variant] if path.is_dir() else path


def resolve_sam_checkpoint(variant: str, checkpoint: str | os.PathLike | None) -> Path | None:
    """The header-checked checkpoint file to load for ``variant``; ``None`` for ``"none"`` (random weights).

    A missing file raises ``InstsegError`` naming it and the folder (see ``sam_checkpoint_path``).
    """
    path = sam_checkpoint_path(variant, checkpoint)
    if path is None:
        return None
    if not path.is_file():
        if variant in SAM_CHECKPOINT_FILES:
            raise InstsegError(sam_checkpoint_message(variant, path))
        raise InstsegError(f"{path}: SAM checkpoint not found")
    return check_checkpoint_file(path)

"""report.html renders in headless Chromium (marker ``browser``; skipped without /usr/bin/chromium)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def screenshot(html: Path, png: Path, profile: Path, height: int = 2000) -> subprocess.CompletedProcess:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
               f"--window-size=1280,{height}", html.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.browser
@pytest.mark.slow
def test_report_renders_in_chromium(tmp_path_factory, tmp_path):
    from PIL import Image

    from test_mscseg_run import ensure_tiny_run

    root = ensure_tiny_run(tmp_path_factory)
    png = tmp_path / "report.png"
    result = screenshot(root / "report.html", png, tmp_path / "profile")
    assert png.is_file() and png.stat().st_size > 10_000, result.stderr[-2000:]
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1280)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50                                   # text, tables, banner: not a blank page
    banner = np.all(pixels == (255, 244, 214), axis=-1).mean()  # the demo banner's background colour
    assert banner > 0.001
    keep = os.environ.get("MSCSEG_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(keep) / "report_tiny.png")

"""`direct-nextaccel doctor` reports what a user needs to know about their installation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_doctor_reports_plugins_and_weights(tmp_path):
    script = Path(sys.executable).parent / "direct-nextaccel"
    result = subprocess.run(
        [str(script), "doctor"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DIRECT_NEXTACCEL_WEIGHTS_DIR": str(tmp_path)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "DIRECT 2.2" in out and "torch" in out
    assert "plugin hook: active at interpreter start" in out
    assert "alias direct.nn.nextaccel" in out and "alias direct.nn.miar" in out
    for mask in ("NestedCartesianX", "NestedCartesianY", "NestedGaussian2D", "NestedRadial"):
        assert mask in out
    for loss in ("haarpsi_loss", "gmsd_loss", "lpips_loss", "ssim_magnitude_loss"):
        assert loss in out
    # A fresh HOME and weights dir hold no pretrained weights: every entry must say so instead of downloading.
    for name in ("alexnet", "vgg16", "dists", "biomedclip", "var_vqvae"):
        line = next(line for line in out.splitlines() if line.strip().startswith(name))
        assert "absent" in line, line


def test_doctor_finds_local_weights(tmp_path):
    (tmp_path / "vae_ch160v4096z32.pth").write_bytes(b"not used, only located")
    script = Path(sys.executable).parent / "direct-nextaccel"
    result = subprocess.run(
        [str(script), "doctor"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DIRECT_NEXTACCEL_WEIGHTS_DIR": str(tmp_path)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("var_vqvae"))
    assert f"found {tmp_path / 'vae_ch160v4096z32.pth'}" in line

"""End to end through DIRECT's own command line: simulate data, `direct train`, `direct predict`.

These run real subprocesses, exactly as a user types the commands in the README, so they exercise the `.pth` hook,
the plugin mask and the plugin loss inside DIRECT's unmodified training and inference loops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BRAIN_NPZ = REPO.parent / "shared" / "data" / "brain" / "tcga_du_7294_skullstripped.npz"

pytestmark = pytest.mark.slow


def run(command: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a console script of this environment; fail the test with its output if it fails."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def synthetic_head(slices: int = 4, size: int = 80) -> np.ndarray:
    """An ellipse phantom volume standing in for the shared brain data on a fresh clone."""
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    volume = np.zeros((slices, size, size), dtype=np.int16)
    for index in range(slices):
        head = (xx / 0.7) ** 2 + (yy / 0.85) ** 2 < 1
        inner = ((xx - 0.2) / 0.15) ** 2 + ((yy + 0.1 * index) / 0.3) ** 2 < 1
        volume[index] = 600 * head + 400 * inner
    return volume


@pytest.fixture(scope="module")
def simulated_root(tmp_path_factory) -> Path:
    """fastMRI-layout files written by `direct-nextaccel simulate` (real anatomy when the shared data exists)."""
    work = tmp_path_factory.mktemp("simulated")
    if BRAIN_NPZ.exists():
        source = BRAIN_NPZ
    else:
        source = work / "phantom_0001.npz"
        volume = synthetic_head()
        np.savez(source, t1=volume, t1c=volume, t2=volume[:, ::-1], flair=volume, voxel_size_mm=np.ones(3))
    output = work / "data"
    run(
        [
            "direct-nextaccel",
            "simulate",
            str(source),
            "--output",
            str(output),
            "--matrix",
            "64",
            "64",
            "--coils",
            "4",
            "--max-slices",
            "2",
            "--contrasts",
            "t1",
            "t2",
        ],
        cwd=work,
    )
    files = sorted(output.glob("file_brain_*.h5"))
    assert [f.name.split("_")[2] for f in files] == ["AXT1", "AXT2"]
    return output


def test_direct_train_and_predict_with_plugin_mask_and_loss(simulated_root, tmp_path):
    config = REPO / "direct_nextaccel" / "configs" / "tiny_varnet_cartesian_y.yaml"
    run(
        [
            "direct",
            "train",
            str(tmp_path / "runs"),
            "--cfg",
            str(config),
            "--name",
            "tiny",
            "--training-root",
            str(simulated_root),
            "--validation-root",
            str(simulated_root),
            "--device",
            "cpu",
            "--num-gpus",
            "0",
            "--num-workers",
            "0",
        ],
        cwd=tmp_path,
    )
    run_dir = tmp_path / "runs" / "tiny"
    checkpoints = sorted(run_dir.glob("model_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    assert checkpoints, f"no checkpoint in {sorted(p.name for p in run_dir.iterdir())}"

    # The plugin loss took part in training: DIRECT logs every loss term by name.
    metrics_lines = (run_dir / "metrics.json").read_text().splitlines()
    logged = set().union(*(json.loads(line) for line in metrics_lines))
    assert "ssim_magnitude_loss" in logged, sorted(logged)

    output = tmp_path / "predictions"
    run(
        [
            "direct",
            "predict",
            str(output),
            "--cfg",
            str(config),
            "--checkpoint",
            str(checkpoints[-1]),
            "--data-root",
            str(simulated_root),
            "--device",
            "cpu",
            "--num-gpus",
            "0",
            "--num-workers",
            "0",
        ],
        cwd=tmp_path,
    )
    for source in simulated_root.glob("file_brain_*.h5"):
        with h5py.File(output / source.name, "r") as written, h5py.File(source, "r") as original:
            reconstruction = written["reconstruction"][()]
            assert reconstruction.shape[0] == original["kspace"].shape[0]
            assert np.isfinite(reconstruction).all() and reconstruction.max() > 0

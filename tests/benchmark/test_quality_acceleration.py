"""``direct-nextaccel benchmark --acceleration R``: every nested masking (each run's config and the zero-filled
reference) at R, and one multi-family NextAccel scored on the family asked for (issue 16)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
from helpers import CONFIGS, phantom
from omegaconf import OmegaConf

from direct_nextaccel.cli import main
from direct_nextaccel.data.fastmri_h5 import rss_reconstruction, write_fastmri_h5
from direct_nextaccel.data.simulate import simulate_volume
from direct_nextaccel.masks.nested import FAMILIES, level_map
from direct_nextaccel.metrics import psnr


def test_acceleration_sets_every_nested_masking_and_the_reference(tmp_path, monkeypatch):
    from direct_nextaccel.benchmark.quality import PredictStats, prediction

    data = tmp_path / "data"
    kspace, _ = simulate_volume(600 * phantom(), coils=4, matrix=(64, 64), seed=1)
    write_fastmri_h5(data / "file_brain_AXT1_100_1.h5", kspace, "AXT1")
    nextaccel = OmegaConf.load(CONFIGS / "tiny_nextaccel.yaml")
    nextaccel.model.mask_families = list(FAMILIES)
    OmegaConf.save(nextaccel, tmp_path / "nextaccel_all.yaml")
    miar = CONFIGS / "tiny_miar.yaml"  # a super-resolution mask: not a nested family, its accelerations stay
    checkpoint = tmp_path / "model_1.pt"
    checkpoint.write_bytes(b"")
    seen = {}

    def fake_predict(config: Path, checkpoint: Path, data: Path, output: Path, device: str) -> PredictStats:
        seen[output.name] = OmegaConf.load(config).inference.dataset.transforms.masking
        output.mkdir(parents=True, exist_ok=True)
        for volume in data.glob("*.h5"):
            with h5py.File(volume, "r") as file, h5py.File(output / volume.name, "w") as written:
                written.create_dataset("reconstruction", data=file["reconstruction_rss"][()])
        return PredictStats(0.5, 100.0)

    monkeypatch.setattr(prediction, "run_direct_predict", fake_predict)
    output = tmp_path / "out"
    argv = ["benchmark", "--run", f"nextaccel={tmp_path / 'nextaccel_all.yaml'}:{checkpoint}",
            f"varnet={CONFIGS / 'tiny_varnet_radial.yaml'}:{checkpoint}", f"miar={miar}:{checkpoint}",
            "--family", "radial", "--acceleration", "16", "--data", str(data), "--output", str(output),
            "--metrics", "psnr", "--no-figures"]  # fmt: skip
    assert main(argv) == 0
    assert (seen["nextaccel"].name, list(seen["nextaccel"].accelerations)) == ("NestedRadial", [16])
    assert (seen["varnet"].name, list(seen["varnet"].accelerations)) == ("NestedRadial", [16])
    assert list(seen["miar"].accelerations) == list(
        OmegaConf.load(miar).inference.dataset.transforms.masking.accelerations
    )
    families = json.loads((output / "benchmark.json").read_text())["families"]
    radial = families["radial"]
    assert radial["acceleration"] == "16"
    assert [row["method"] for row in radial["rows"]][1:] == ["nextaccel", "varnet"]
    # The zero-filled reference is the same nested radial mask at R = 16, seeded by the file name.
    with h5py.File(data / "file_brain_AXT1_100_1.h5", "r") as file:
        target, full = file["reconstruction_rss"][()], file["kspace"][()]
    mask = level_map("radial", (64, 64), seed=tuple(map(ord, "file_brain_AXT1_100_1.h5")), center_fraction=1 / 64) <= 1
    expected = psnr(target, rss_reconstruction(full * mask, target.shape[-2:]))
    assert np.isclose(radial["rows"][0]["scores"]["psnr"]["T1"], expected, rtol=1e-4)
    # A single-family config keeps its own family: asking it for another is refused on its row.
    argv = ["benchmark", "--run", f"varnet@cartesian_x={CONFIGS / 'tiny_varnet_radial.yaml'}:{checkpoint}",
            "--acceleration", "8", "--data", str(data), "--output", str(tmp_path / "out2"), "--metrics", "psnr",
            "--no-figures"]  # fmt: skip
    assert main(argv) == 1

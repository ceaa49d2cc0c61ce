"""The AQ-VAE inside DIRECT: plain `direct train` / `direct predict`, engine losses, and the NaN guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from direct.data.transforms import fft2, ifft2
from helpers import phantom
from omegaconf import OmegaConf

from direct_nextaccel.core.errors import NonFiniteError
from direct_nextaccel.data.fastmri_h5 import fastmri_filename, write_fastmri_h5
from direct_nextaccel.data.simulate import simulate_volume
from direct_nextaccel.nextaccel.aqvae import AQVAE
from direct_nextaccel.nextaccel.aqvae_engine import LEVEL_NAMES, AQVAEEngine
from direct_nextaccel.nextaccel.config import AQVAEConfig

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "direct_nextaccel" / "configs" / "tiny_aqvae.yaml"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("aqvae_data")
    for acquisition, subject in (("AXT1", "900_0001"), ("AXT2", "900_0002")):
        kspace, _ = simulate_volume(phantom(), coils=4, matrix=(64, 64), seed=int(subject[-1]))
        write_fastmri_h5(root / fastmri_filename(acquisition, subject), kspace, acquisition)
    return root


def tiny_config(tmp_path: Path, **training) -> Path:
    config = OmegaConf.load(TINY_CONFIG)
    config.training.num_iterations = training.get("num_iterations", 6)
    config.training.checkpointer.checkpoint_steps = config.training.num_iterations
    config.training.validation_steps = config.training.num_iterations
    config.logging.log_interval = 1
    path = tmp_path / "tiny_aqvae.yaml"
    OmegaConf.save(config, path)
    return path


def run(command: list[str], cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{command[:2]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.mark.slow
def test_direct_train_and_predict_tiny_aqvae(data_root, tmp_path):
    config = tiny_config(tmp_path)
    cpu = ["--device", "cpu", "--num-gpus", "0", "--num-workers", "0"]
    run(
        [
            "direct",
            "train",
            str(tmp_path / "runs"),
            "--cfg",
            str(config),
            "--name",
            "aq",
            "--training-root",
            str(data_root),
            "--validation-root",
            str(data_root),
            *cpu,
        ],
        cwd=tmp_path,
    )
    run_dir = tmp_path / "runs" / "aq"
    logged = set().union(*(json.loads(line) for line in (run_dir / "metrics.json").read_text().splitlines()))
    for name in LEVEL_NAMES:
        assert f"codebook_usage_{name}" in logged and f"codebook_perplexity_{name}" in logged
    assert {"commitment_loss", "ssim_magnitude_loss"} <= logged
    assert any("fastmri_psnr" in key for key in logged), sorted(logged)

    assert (run_dir / "model_best.pt").exists()  # selected by validation SSIM, as in the paper
    assert (run_dir / "last_model.txt").read_text() == "5"  # --resume still continues from the last iteration
    checkpoint = run_dir / "model_5.pt"
    run(
        [
            "direct",
            "predict",
            str(tmp_path / "out"),
            "--cfg",
            str(config),
            "--checkpoint",
            str(checkpoint),
            "--data-root",
            str(data_root),
            *cpu,
        ],
        cwd=tmp_path,
    )
    for source in data_root.glob("*.h5"):
        with h5py.File(tmp_path / "out" / source.name, "r") as written:
            reconstruction = written["reconstruction"][()]
        assert reconstruction.shape[0] == 2 and np.isfinite(reconstruction).all()


def engine_and_batch(nan: bool = False, with_kspace: bool = True):
    config = OmegaConf.load(TINY_CONFIG)
    config.model = OmegaConf.merge(OmegaConf.structured(AQVAEConfig), config.model)  # as DIRECT does
    model_keys = {k: v for k, v in config.model.items() if k in AQVAE.__init__.__code__.co_varnames}
    model = AQVAE(**{k: tuple(v) if OmegaConf.is_list(v) else v for k, v in model_keys.items()})
    engine = AQVAEEngine(config, model, "cpu", fft2, ifft2)
    kspace_np, _ = simulate_volume(phantom(), coils=4, matrix=(64, 64), seed=3)
    kspace = torch.view_as_real(torch.from_numpy(kspace_np))  # slices, coils, H, W, 2
    if nan:
        kspace[1, 0, 5, 5, 0] = float("nan")
    coil_images = ifft2(kspace, dim=(2, 3))
    rss = coil_images.pow(2).sum(dim=(1, 4)).sqrt()
    batch = {
        "sensitivity_map": coil_images / rss[:, None, :, :, None].clamp_min(1e-6),
        "target": rss,
        "filename": ["file_brain_AXT1_001_0001.h5", "file_brain_AXT1_001_0001.h5"],
        "slice_no": torch.tensor([0, 1]),
    }
    if with_kspace:
        batch["kspace"] = kspace
    return engine, batch


def test_engine_loss_names_take_yaml_multipliers():
    engine, _ = engine_and_batch()
    losses = engine.build_loss()
    assert list(losses) == ["ssim_magnitude_loss", "l1_loss", "commitment_loss"]
    assert losses["commitment_loss"].source_key == "commitment_loss"
    assert losses["commitment_loss"](torch.tensor(2.0), None, "mean", None).item() == pytest.approx(2.0)


def test_training_iteration_updates_model_and_reports_losses():
    engine, batch = engine_and_batch()
    engine.model.train()
    from direct.utils.events import EventStorage

    with EventStorage(0):
        output = engine._do_iteration(batch, engine.build_loss())
    assert output.output_image.shape == (2, 64, 64)
    assert set(output.data_dict) == {"ssim_magnitude_loss", "l1_loss", "commitment_loss"}
    grads = [p.grad for p in engine.model.encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_nonfinite_batch_stops_before_the_update():
    engine, batch = engine_and_batch(nan=True)
    engine.model.train()
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    # Only the offending slice (index 1) is named.
    message = r"^non-finite kspace in file_brain_AXT1_001_0001\.h5 slice 1: training stopped before the update"
    with pytest.raises(NonFiniteError, match=message):
        engine._do_iteration(batch, engine.build_loss())
    assert not issubclass(NonFiniteError, RuntimeError)  # DIRECT checkpoints on RuntimeError; this must not
    for key, value in engine.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    engine.model.eval()  # during `direct predict` nothing is "training"
    with pytest.raises(NonFiniteError, match=message.split(": ")[0] + ": not written$"):
        engine._do_iteration(batch, engine.build_loss())


def test_a_slice_without_reference_scale_is_named_before_the_forward_pass():
    """The reference scale is checked with the inputs' one read (no read of its own), before the model sees the
    batch: an all-zero calibration centre names its file and slice and leaves the model untouched."""
    from direct_nextaccel.core.intensity import IntensityError
    from direct_nextaccel.masks.nested import shared_calibration_mask

    engine, batch = engine_and_batch()
    centre = torch.from_numpy(shared_calibration_mask((64, 64), engine.center_fraction))
    batch["kspace"][1, :, centre] = 0.0
    engine.model.train()
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    message = r"^file_brain_AXT1_001_0001\.h5 slice 1: reference scale 0\.0 .*all zero"
    with pytest.raises(IntensityError, match=message):
        engine._do_iteration(batch, engine.build_loss())
    for key, value in engine.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_missing_fully_sampled_kspace_is_a_clear_error():
    engine, batch = engine_and_batch(with_kspace=False)
    with pytest.raises(ValueError, match="delete_kspace: false"):
        engine._do_iteration(batch, engine.build_loss())


def test_adversarial_term_trains_its_own_discriminator():
    engine, batch = engine_and_batch()
    OmegaConf.update(engine.cfg, "model.discriminator_backbone", "patch")
    engine.cfg.training.loss.losses.append({"function": "adversarial_loss", "multiplier": 0.1})
    engine._build_discriminator()
    assert "discriminator" in engine.models  # saved in checkpoints with the tokenizer
    heads_before = [p.detach().clone() for p in engine.discriminator.parameters()]
    engine.model.train()
    from direct.utils.events import EventStorage

    with EventStorage(0) as storage:
        output = engine._do_iteration(batch, engine.build_loss())
        assert "discriminator_loss" in storage.latest()
    assert output.data_dict["adversarial_loss"].item() > 0
    assert any(not torch.equal(a, b) for a, b in zip(heads_before, engine.discriminator.parameters(), strict=True))
    assert all(p.grad is None for p in engine.discriminator.parameters())  # nothing left for DIRECT's optimizer
    assert any(p.grad is not None for p in engine.model.decoder.parameters())


def test_adversarial_loss_without_a_discriminator_is_refused():
    engine, _ = engine_and_batch()
    engine.cfg.training.loss.losses.append({"function": "adversarial_loss", "multiplier": 0.1})
    with pytest.raises(ValueError, match="discriminator_backbone is 'none'"):
        engine._build_discriminator()


@pytest.mark.parametrize("path", [TINY_CONFIG, REPO / "projects" / "fastmri_brain" / "configs" / "aqvae.yaml"])
def test_configs_build_the_tokenizer(path):
    """Both configs merge into AQVAEConfig as DIRECT merges them and build the model (paper size on meta)."""
    config = OmegaConf.merge(OmegaConf.structured(AQVAEConfig), OmegaConf.load(path).model)
    keys = {k: config[k] for k in AQVAE.__init__.__code__.co_varnames[1:] if k in config}
    keys = {k: tuple(v) if OmegaConf.is_list(v) else v for k, v in keys.items()}
    with torch.device("meta"):
        model = AQVAE(**keys)
    assert model.quantizer.codebook.shape == (config.codebook_size, config.latent_dim)
    if config.codebook_size == 4096:
        assert sum(p.numel() for p in model.parameters()) == 108_922_498


def test_output_levels_decode_a_subset_of_tokens_at_evaluation():
    engine, batch = engine_and_batch()
    engine.model.eval()
    with torch.no_grad():
        everything = engine._do_iteration(dict(batch)).output_image
        engine.output_levels = (0,)
        r32_only = engine._do_iteration(dict(batch)).output_image
        again = engine._do_iteration(dict(batch)).output_image
    assert everything.shape == r32_only.shape and not torch.equal(everything, r32_only)
    assert torch.equal(r32_only, again)


def test_bad_output_levels_are_refused():
    config = OmegaConf.merge(OmegaConf.structured(AQVAEConfig), OmegaConf.load(TINY_CONFIG).model)
    config.output_levels = (0, 6)
    with pytest.raises(ValueError, match=r"output_levels \[0, 6\]"):
        AQVAEEngine(OmegaConf.create({"model": config}), None, "cpu", fft2, ifft2)


def captured_indices(engine) -> list[list[torch.Tensor]]:
    """Token maps of every AQ-VAE forward pass of ``engine`` from now on (one list of six (B, g, g) per pass)."""
    captured: list[list[torch.Tensor]] = []
    engine.model.register_forward_hook(lambda module, args, result: captured.append(list(result["indices"])))
    return captured


def test_kspace_scale_leaves_every_token_and_scales_the_output():
    engine, batch = engine_and_batch()
    engine.model.eval()
    captured = captured_indices(engine)
    scaled = {**batch, "kspace": 100 * batch["kspace"], "target": 100 * batch["target"]}
    with torch.no_grad():
        first = engine._do_iteration(batch).output_image
        second = engine._do_iteration(scaled).output_image
    assert len(captured) == 2
    for level, (a, b) in enumerate(zip(*captured, strict=True)):
        assert torch.equal(a, b), f"level {level}"
    torch.testing.assert_close(second, 100 * first, rtol=1e-4, atol=1e-4 * float(second.max()))


def test_fully_sampled_tokens_do_not_depend_on_directs_mask_family(tmp_path):
    """DIRECT's normalisation divides by a percentile of the masked k-space (a different factor per family); the
    engine's own scale comes from samples every family shares, so the fully sampled level's tokens are the same."""
    from direct.data.datasets import FastMRIDataset
    from direct.data.mri_transforms import build_mri_transforms
    from torch.utils.data import default_collate

    from direct_nextaccel.masks.nested import FAMILIES, mask_func_for_family

    kspace_np, _ = simulate_volume(phantom(), coils=4, matrix=(64, 64), seed=3)
    write_fastmri_h5(tmp_path / fastmri_filename("AXT1", "900_0001"), kspace_np, "AXT1")
    engine, _ = engine_and_batch()
    engine.model.eval()
    captured = captured_indices(engine)
    scaling = {}
    for family in FAMILIES:
        transforms = build_mri_transforms(
            forward_operator=fft2,
            backward_operator=ifft2,
            mask_func=mask_func_for_family(family, (32,), [1 / 64]),
            crop=None,
            sensitivity_maps_type="unit",  # DIRECT's ACS-based estimates differ by family; the intensity must not
            delete_kspace=False,
            scaling_key="masked_kspace",
            scale_percentile=0.99,
        )
        batch = default_collate([FastMRIDataset(tmp_path, transform=transforms)[index] for index in range(2)])
        scaling[family] = batch["scaling_factor"]
        with torch.no_grad():
            engine._do_iteration(batch)
    fully_sampled = [indices[-1] for indices in captured]
    assert all(torch.equal(fully_sampled[0], other) for other in fully_sampled[1:])
    factors = torch.stack(list(scaling.values()))  # families, B
    assert float((factors.amax(dim=0) / factors.amin(dim=0)).min()) > 1.5  # DIRECT's scale does differ by family

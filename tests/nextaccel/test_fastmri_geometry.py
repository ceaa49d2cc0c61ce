"""Real fastMRI geometry (issue 14): 640 x 320 k-space with readout oversampling and a 320 x 320 reconstruction size,
read by DIRECT's own FastMRI dataset, through the AQ-VAE engine and NextAccel's reconstruction at a 64 x 64 working
size. Outputs have DIRECT's matrix, zero only in the readout oversampling, and hold the anatomy outside the central
64 x 64 that the old centre crop kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from direct.data.transforms import fft2, ifft2
from direct.utils.events import EventStorage
from helpers import build_model, merged_config, phantom

from direct_nextaccel.core.images import WorkingGrid, center_crop_or_pad
from direct_nextaccel.data.fastmri_h5 import fastmri_filename, write_fastmri_h5
from direct_nextaccel.data.simulate import simulate_volume
from direct_nextaccel.masks.nested import mask_func_for_family
from direct_nextaccel.nextaccel.aqvae import AQVAE
from direct_nextaccel.nextaccel.aqvae_engine import AQVAEEngine
from direct_nextaccel.nextaccel.config import AQVAEConfig, NextAccelConfig
from direct_nextaccel.nextaccel.nextaccel import NextAccel
from direct_nextaccel.nextaccel.tokenizer_loading import tokenizer_arguments
from direct_nextaccel.nextaccel.transformer_engine import NextAccelEngine

MATRIX, REGION, WORKING = (640, 320), (320, 320), (64, 64)
ROWS = slice(160, 480)  # the reconstruction region's rows; the rest is readout oversampling


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> dict:
    """Two slices of a 640 x 320 fastMRI-layout file as DIRECT's FastMRIDataset and transforms batch them.

    The anatomy fills the 320 x 320 reconstruction region (a 320 x 320 phantom at 1 mm, which ``simulate_volume``
    zero-pads along the readout H to 640, the oversampling of fastMRI brain data), the header says (320, 320), and
    the sensitivity maps are the simulated coils' exactly, so the coil-combined fully sampled image is the target.
    """
    from direct.data.datasets import FastMRIDataset
    from direct.data.mri_transforms import build_mri_transforms
    from torch.utils.data import default_collate

    root = tmp_path_factory.mktemp("fastmri_640x320")
    kspace, _ = simulate_volume(phantom(size=320), coils=4, matrix=MATRIX, seed=3)
    write_fastmri_h5(root / fastmri_filename("AXT1", "900_0001"), kspace, "AXT1", reconstruction_size=REGION)
    transforms = build_mri_transforms(
        forward_operator=fft2,
        backward_operator=ifft2,
        mask_func=mask_func_for_family("cartesian_y", (32,), [1 / 64]),
        crop=None,
        sensitivity_maps_type="unit",
        delete_kspace=False,
        scaling_key="masked_kspace",
        scale_percentile=0.99,
    )
    dataset = FastMRIDataset(root, transform=transforms)
    data = default_collate([dataset[index] for index in range(2)])
    coil_images = ifft2(data["kspace"], dim=(2, 3))
    rss = coil_images.pow(2).sum(dim=(1, 4)).sqrt()
    data["sensitivity_map"] = coil_images / rss[:, None, :, :, None].clamp_min(1e-6)
    return data


def band_limited(image: torch.Tensor) -> torch.Tensor:
    """What a 64 x 64 working grid can hold of (B, 2, 640, 320) images: their round trip through the map."""
    grid = WorkingGrid(MATRIX, REGION, WORKING)
    return grid.from_working(grid.to_working(image))


def relative_error(image: torch.Tensor, target: torch.Tensor) -> float:
    """Relative L2 error inside the reconstruction region (DIRECT's ``crop: header``)."""
    image, target = image[:, ROWS], target[:, ROWS]
    return float(torch.linalg.vector_norm(image - target) / torch.linalg.vector_norm(target))


def test_directs_batch_holds_the_header_reconstruction_size(batch):
    assert tuple(batch["kspace"].shape[2:4]) == MATRIX
    assert WorkingGrid.of_batch(batch, MATRIX, WORKING) == WorkingGrid(MATRIX, REGION, WORKING)
    target = batch["target"]
    assert not target[:, :160].gt(1e-3).any() and not target[:, 480:].gt(1e-3).any()  # oversampling: no anatomy
    old_crop = center_crop_or_pad(center_crop_or_pad(torch.ones(MATRIX), WORKING), MATRIX).bool()
    assert target[:, ROWS][:, ~old_crop[ROWS]].gt(0.5).float().mean() > 0.3  # plenty outside the old centre crop


def aqvae_engine() -> AQVAEEngine:
    config = merged_config("tiny_aqvae.yaml", AQVAEConfig)
    assert tuple(config.model.image_size) == WORKING
    torch.manual_seed(0)
    return AQVAEEngine(config, build_model(AQVAE, config.model), "cpu", fft2, ifft2)


def test_aqvae_engine_returns_directs_matrix_with_the_whole_anatomy(batch):
    engine = aqvae_engine()
    engine.model.eval()
    with torch.no_grad():
        plain = engine._do_iteration(dict(batch)).output_image
    assert plain.shape == (2, *MATRIX) and torch.isfinite(plain).all()
    assert not plain[:, :160].any() and not plain[:, 480:].any()  # zero only in the oversampling

    # A tokenizer that returns its fully sampled input: the engine's output is then the map's round trip of the
    # coil-combined image, i.e. the target as the 64 x 64 working grid holds it, over the whole 320 x 320 region.
    engine.model.register_forward_hook(lambda module, args, result: {**result, "reconstruction": args[0][:, -1]})
    with torch.no_grad():
        output = engine._do_iteration(dict(batch)).output_image
    target = batch["target"]
    expected = band_limited(torch.stack([target, torch.zeros_like(target)], dim=1)).norm(dim=1)
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-4 * float(target.max()))
    assert relative_error(output, target) < 0.15  # only the detail finer than 64 x 64 is missing
    old = center_crop_or_pad(center_crop_or_pad(target, WORKING), MATRIX)  # what the old centre crop kept
    assert relative_error(old, target) > 0.8


def test_aqvae_engine_trains_on_the_640x320_batch(batch):
    engine = aqvae_engine()
    engine.model.train()
    with EventStorage(0):
        output = engine._do_iteration(dict(batch), engine.build_loss())
    assert output.output_image.shape == (2, *MATRIX)
    assert all(torch.isfinite(value) for value in output.data_dict.values())
    grads = [p.grad for p in engine.model.decoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.fixture(scope="module")
def nextaccel_engine(tmp_path_factory) -> NextAccelEngine:
    """The tiny NextAccel on a randomly initialised tiny AQ-VAE (geometry does not depend on the weights)."""
    config = merged_config("tiny_nextaccel.yaml", NextAccelConfig)
    del config["additional_models"]  # the batch brings its sensitivity maps
    torch.manual_seed(0)
    arguments = tokenizer_arguments(config.model)
    tokenizer = AQVAE(**arguments, context_strides=tuple(config.model.context_strides))
    path = Path(tmp_path_factory.mktemp("tokenizer")) / "model_0.pt"
    torch.save({"model": tokenizer.state_dict()}, path)
    config.model.tokenizer_checkpoint = str(path)
    engine = NextAccelEngine(config, build_model(NextAccel, config.model), "cpu", fft2, ifft2)
    engine.ndim = 2
    engine.model.eval()
    return engine


def test_nextaccel_reconstructs_directs_matrix_from_the_r32_input(batch, nextaccel_engine):
    engine = nextaccel_engine
    with torch.no_grad():
        outputs = engine.reconstruct(dict(batch), want_probs=True)
    image, uncertainty = outputs["output_image"], outputs["uncertainty"]
    assert image.shape == (2, *MATRIX, 2) and uncertainty.shape == (2, *MATRIX)
    assert not image[:, :160].any() and not image[:, 480:].any()
    assert 0 <= float(uncertainty.min()) and float(uncertainty.max()) <= 1
    assert not uncertainty[:, :160].any() and uncertainty[:, ROWS].gt(0).float().mean() > 0.9

    # With a decoder that returns the R32 image the transformer was conditioned on, the output is the map's round
    # trip of DIRECT's R32 SENSE image: the whole region, at DIRECT's scale.
    from direct_nextaccel.core.images import sense_adjoint

    seen = {}
    encode, decode = engine.tokenizer.encode, engine.tokenizer.decode_indices

    def capture(images, *args, **kwargs):
        seen["image32"] = images[:, 0]
        return encode(images, *args, **kwargs)

    engine.tokenizer.encode = capture
    engine.tokenizer.decode_indices = lambda tokens, *args, **kwargs: seen["image32"]
    try:
        with torch.no_grad():
            output = engine.reconstruct(dict(batch))["output_image"]
    finally:
        engine.tokenizer.encode, engine.tokenizer.decode_indices = encode, decode
    image32 = sense_adjoint(
        batch["masked_kspace"], batch["sensitivity_map"], batch["sampling_mask"][:, 0, :, :, 0], ifft2
    ).permute(0, 3, 1, 2)
    expected = band_limited(image32).permute(0, 2, 3, 1)
    torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    magnitude, target = output.norm(dim=-1), batch["target"]
    old_crop = center_crop_or_pad(center_crop_or_pad(torch.ones(MATRIX), WORKING), MATRIX).bool()
    outside = magnitude[:, ROWS][:, ~old_crop[ROWS]]
    assert float(outside.sum()) > 0.5 * float(target[:, ROWS][:, ~old_crop[ROWS]].sum())

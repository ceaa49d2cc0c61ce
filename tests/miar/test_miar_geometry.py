"""Real fastMRI geometry (issue 14) in MIAR's engines: a 640 x 320 matrix with readout oversampling and a 320 x 320
reconstruction size (as DIRECT collates the header's) at the tiny 64 x 64 working size."""

import torch
from direct.data.transforms import ifft2
from helpers import phantom

from direct_nextaccel.core.images import WorkingGrid, center_crop_or_pad
from direct_nextaccel.data.simulate import simulate_volume
from direct_nextaccel.masks.superresolution import superresolution_mask
from direct_nextaccel.miar.config import MIARConfig, MSVQVAEConfig
from direct_nextaccel.miar.images import low_resolution_image
from direct_nextaccel.miar.miar import MIAR
from direct_nextaccel.miar.msvqvae import MSVQVAE
from direct_nextaccel.miar.msvqvae_engine import MSVQVAEEngine
from direct_nextaccel.miar.transformer_engine import MIAREngine

MATRIX, REGION, WORKING = (640, 320), (320, 320), (64, 64)


def fastmri_sr_batch(factor: int = 4) -> dict:
    """Two slices of 640 x 320 k-space whose anatomy fills the central 320 x 320 (readout oversampling), DIRECT's
    collated ``reconstruction_size`` and the SuperResolution mask."""
    kspace_np, _ = simulate_volume(phantom(size=320), coils=2, matrix=MATRIX, seed=3)
    kspace = torch.view_as_real(torch.from_numpy(kspace_np))  # S, C, H, W, 2
    mask = torch.from_numpy(superresolution_mask(MATRIX, factor))[None, None, :, :, None]
    coil_images = ifft2(kspace, dim=(2, 3))
    rss = coil_images.pow(2).sum(dim=(1, 4)).sqrt()
    return {
        "kspace": kspace,
        "masked_kspace": kspace * mask,
        "sampling_mask": mask.expand(2, -1, -1, -1, -1),
        "sensitivity_map": coil_images / rss[:, None, :, :, None].clamp_min(1e-6),
        "target": rss,
        "filename": ["file_brain_AXT2_001_0001.h5"] * 2,
        "slice_no": torch.tensor([0, 1]),
        "reconstruction_size": [torch.tensor([320, 320]), torch.tensor([320, 320]), torch.tensor([1, 1])],
    }


def outside_old_crop(image: torch.Tensor) -> torch.Tensor:
    """The pixels of (B, H, W) inside the reconstruction region but outside the old central 64 x 64 crop."""
    old_crop = center_crop_or_pad(center_crop_or_pad(torch.ones(MATRIX), WORKING), MATRIX).bool()
    return image[:, 160:480][:, ~old_crop[160:480]]


def test_msvqvae_engine_returns_directs_matrix(make_engine):
    torch.manual_seed(0)
    engine = make_engine("tiny_msvqvae.yaml", MSVQVAEConfig, MSVQVAE, MSVQVAEEngine)
    engine.model.eval()
    with torch.no_grad():
        output = engine._do_iteration(fastmri_sr_batch()).output_image
    assert output.shape == (2, *MATRIX) and torch.isfinite(output).all()
    assert not output[:, :160].any() and not output[:, 480:].any()
    assert outside_old_crop(output).gt(0).float().mean() > 0.9


def test_miar_sees_the_whole_region_and_predicts_directs_matrix(make_engine, tokenizer_checkpoint):
    torch.manual_seed(1)
    engine = make_engine("tiny_miar.yaml", MIARConfig, MIAR, MIAREngine, tokenizer_checkpoint=str(tokenizer_checkpoint))
    engine.model.eval()
    batch = fastmri_sr_batch()
    factor = engine.intensity_factor(batch)
    lr = engine.lr_image(batch, factor)
    expected = low_resolution_image(batch["masked_kspace"], batch["sampling_mask"], batch["sensitivity_map"], ifft2)
    grid = WorkingGrid(MATRIX, REGION, WORKING)
    torch.testing.assert_close(lr, grid.to_working(expected * factor[:, None, None, None]))
    back = grid.from_working(lr).norm(dim=1) / factor[:, None, None]  # the LR input at DIRECT's matrix and scale
    target = outside_old_crop(batch["target"])
    assert float(outside_old_crop(back).sum()) > 0.5 * float(target.sum())
    del batch["kspace"]
    with torch.no_grad():
        output = engine._do_iteration(batch).output_image
    assert output.shape == (2, *MATRIX) and torch.isfinite(output).all()
    assert not output[:, :160].any() and not output[:, 480:].any()

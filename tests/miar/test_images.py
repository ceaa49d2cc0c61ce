"""The images MIAR's engines form from a DIRECT batch: the LR input is the zero-filled image of the centre block."""

import pytest
import torch
from direct.data import transforms as T
from direct.data.transforms import ifft2

from direct_nextaccel.core.images import coil_combined
from direct_nextaccel.masks.superresolution import centre_block
from direct_nextaccel.miar.images import low_resolution_image, sr_factor_of_mask


@pytest.mark.parametrize("coils", [1, 4])
def test_low_resolution_image_is_the_coil_combined_zero_filled_centre_block(make_batch, coils):
    batch = make_batch(coils=coils)
    lr = low_resolution_image(batch["masked_kspace"], batch["sampling_mask"], batch["sensitivity_map"], ifft2)
    assert lr.shape == (2, 2, 64, 64)
    rows, cols = centre_block((64, 64), 4)
    block_only = torch.zeros_like(batch["kspace"])
    block_only[:, :, rows, cols] = batch["kspace"][:, :, rows, cols]
    expected = T.reduce_operator(ifft2(block_only, dim=(2, 3)), batch["sensitivity_map"], dim=1)
    torch.testing.assert_close(lr, expected.permute(0, 3, 1, 2))
    if coils == 1:  # one coil: the combination is the magnitude of the zero-filled image (maps are pure phase)
        magnitude = torch.linalg.vector_norm(ifft2(block_only, dim=(2, 3))[:, 0], dim=-1)
        torch.testing.assert_close(torch.linalg.vector_norm(lr, dim=1), magnitude, atol=1e-5, rtol=1e-4)


def test_blur_only_changes_the_input_when_asked(make_batch):
    batch = make_batch()
    args = (batch["masked_kspace"], batch["sampling_mask"], batch["sensitivity_map"], ifft2)
    sharp, blurred = low_resolution_image(*args), low_resolution_image(*args, blur_sigma=0.8)
    assert blurred.norm() < sharp.norm()  # a low-pass filter with unit DC gain removes energy


def test_fully_sampled_image_and_factor(make_batch):
    batch = make_batch(factor=2)
    assert sr_factor_of_mask(batch["sampling_mask"]) == 2
    hr = coil_combined(batch["kspace"], batch["sensitivity_map"], ifft2)
    assert hr.shape == (2, 2, 64, 64)


def test_a_mask_outside_the_centre_block_is_refused():
    mask = torch.zeros(1, 1, 64, 64, 1, dtype=torch.bool)
    mask[..., ::4, :, :] = True  # equispaced rows: an accelerated acquisition, not a low-resolution one
    with pytest.raises(ValueError, match=r"not the k-space centre block.*masking\.name: SuperResolution"):
        sr_factor_of_mask(mask)

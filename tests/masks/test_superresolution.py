"""The super-resolution task inside DIRECT: the mask keeps the k-space centre, its zero-filled image is the
zero-padding upsampling of the low-resolution image, and the optional blur is a k-space multiplication."""

import numpy as np
import pytest
import torch
from direct.common.subsample import build_masking_function
from direct.data import transforms as T
from direct.data.mri_transforms import CreateSamplingMask

from direct_nextaccel.masks.superresolution import (
    SuperResolutionMaskFunc,
    centre_block,
    lr_blur_kspace_weights,
    superresolution_mask,
)


def random_image(shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(
        *shape,
        2,
        generator=generator,
    )  # H, W, complex (DIRECT FFTs are complex64 only)


@pytest.mark.parametrize(("shape", "factor"), [((64, 64), 4), ((256, 256), 4), ((60, 48), 4), ((96, 160), 2)])
def test_mask_is_the_dc_centred_block(shape, factor):
    mask = superresolution_mask(shape, factor)
    rows, cols = shape[0] // factor, shape[1] // factor
    assert mask.sum() == rows * cols
    kept_rows, kept_cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    assert len(kept_rows) == rows and len(kept_cols) == cols  # a rectangle, contiguous below
    assert kept_rows[-1] - kept_rows[0] == rows - 1 and kept_cols[-1] - kept_cols[0] == cols - 1
    # DC (index N // 2) sits at the block's own centred-FFT DC index n // 2, also for odd n (60 / 4 = 15).
    assert shape[0] // 2 - kept_rows[0] == rows // 2 and shape[1] // 2 - kept_cols[0] == cols // 2


@pytest.mark.parametrize(("shape", "factor"), [((64, 64), 4), ((60, 48), 4), ((96, 160), 2)])
def test_zero_filled_image_is_the_zero_padded_low_resolution_acquisition(shape, factor):
    """SR input == k-space centre crop: the zero-filled image of the mask is the zero-padded IFFT of the crop, and on
    the coarse grid it is the low-resolution image itself (orthonormal FFTs scale it by n / N per axis)."""
    kspace = T.fft2(random_image(shape), dim=(0, 1))
    mask = build_masking_function("SuperResolution", accelerations=[factor**2], sr_factor=factor)(
        (*shape, 2), seed=None
    )[0]  # H, W, 1
    zero_filled = T.ifft2(kspace * mask, dim=(0, 1))

    rows, cols = centre_block(shape, factor)
    crop = kspace[rows, cols]  # n_r, n_c, 2: what a low-resolution scan measures
    padded = (
        torch.nn.functional.pad(
            crop.permute(2, 0, 1), (cols.start, shape[1] - cols.stop, rows.start, shape[0] - rows.stop)
        )
        .permute(1, 2, 0)
        .contiguous()
    )
    assert torch.allclose(zero_filled, T.ifft2(padded, dim=(0, 1)), atol=1e-5)

    low_res = T.ifft2(crop, dim=(0, 1))  # n_r, n_c: the low-resolution image on its own grid
    n_r, n_c = crop.shape[:2]
    # image position 0 is index N // 2 on the fine grid and n // 2 on the coarse one
    fine_rows = shape[0] // 2 + factor * (torch.arange(n_r) - n_r // 2)
    fine_cols = shape[1] // 2 + factor * (torch.arange(n_c) - n_c // 2)
    sampled = zero_filled[fine_rows][:, fine_cols]
    scale = np.sqrt(n_r * n_c / (shape[0] * shape[1]))
    assert torch.allclose(sampled, scale * low_res, atol=1e-5)


def test_direct_builds_the_mask_by_name_and_records_the_acceleration():
    """`masking.name: SuperResolution` with `sr_factor` passes through DIRECT's builder and its mask transform."""
    mask_func = build_masking_function("SuperResolution", accelerations=[16], sr_factor=4)
    assert isinstance(mask_func, SuperResolutionMaskFunc)
    kspace = T.fft2(random_image((64, 64)), dim=(0, 1))[None]  # one coil: magnitude slices use this path
    sample = CreateSamplingMask(mask_func, use_seed=True, return_acs=True)({"kspace": kspace, "filename": "a.h5"})
    assert sample["sampling_mask"].shape == (1, 64, 64, 1)
    assert sample["sampling_mask"].sum() == 16 * 16
    assert torch.equal(sample["acs_mask"], sample["sampling_mask"])  # sensitivity estimation from the LR block
    assert sample["acceleration"].item() == 16 and sample["center_fraction"].item() == 0.25


def test_factor_is_derived_from_a_square_acceleration():
    assert SuperResolutionMaskFunc(accelerations=[16]).factors == {16.0: 4}
    assert SuperResolutionMaskFunc(accelerations=[4, 16]).factors == {4.0: 2, 16.0: 4}
    # DIRECT's typed inference config always passes its default centre fraction; the block does not change.
    with_default = SuperResolutionMaskFunc(accelerations=[16], center_fractions=[0.1])((64, 64, 2))
    assert torch.equal(with_default, SuperResolutionMaskFunc(accelerations=[16])((64, 64, 2)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"accelerations": [16], "sr_factor": 3}, r"acceleration 16 does not match sr_factor 3"),
        ({"accelerations": [8]}, r"acceleration 8 is not the square of an integer"),
        ({"accelerations": [16], "sr_factor": 0}, r"factor 0 must be an integer >= 1"),
        ({"accelerations": [16], "sr_factor": True}, r"factor True must be an integer >= 1"),
        ({"accelerations": []}, r"accelerations \[\] must be a non-empty"),
    ],
)
def test_bad_configuration_names_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SuperResolutionMaskFunc(**kwargs)


def test_factor_not_dividing_the_matrix_names_both():
    mask_func = SuperResolutionMaskFunc(accelerations=[9], sr_factor=3)
    with pytest.raises(ValueError, match=r"^super-resolution factor 3 does not divide the 64 x 64 k-space matrix$"):
        mask_func((64, 64, 2))


@pytest.mark.parametrize(("shape", "factor", "sigma"), [((64, 64), 4, 0.8), ((60, 48), 4, 1.5)])
def test_blur_weights_are_a_circular_3x3_gaussian_on_the_low_resolution_grid(shape, factor, sigma):
    kspace = T.fft2(random_image(shape, seed=1), dim=(0, 1))
    rows, cols = centre_block(shape, factor)
    weights = lr_blur_kspace_weights(shape, factor, sigma)
    assert weights[shape[0] // 2, shape[1] // 2] == pytest.approx(1.0)
    blurred = T.ifft2(kspace[rows, cols] * weights[rows, cols, None], dim=(0, 1))

    low_res = T.ifft2(kspace[rows, cols], dim=(0, 1))
    side = np.exp(-1 / (2 * sigma**2))
    taps = {-1: side / (1 + 2 * side), 0: 1 / (1 + 2 * side), 1: side / (1 + 2 * side)}
    convolved = sum(taps[i] * taps[j] * torch.roll(low_res, shifts=(i, j), dims=(0, 1)) for i in taps for j in taps)
    assert torch.allclose(blurred, convolved, atol=1e-5)


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan")])
def test_blur_sigma_must_be_positive(sigma):
    with pytest.raises(ValueError, match=r"lr_blur_sigma .* must be a positive number"):
        lr_blur_kspace_weights((64, 64), 4, sigma)

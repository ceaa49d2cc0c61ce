"""The intensity convention: reference scale from shared samples, its homogeneity, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from direct.data.transforms import ifft2

from direct_nextaccel.core.intensity import (
    GAIN_KEY,
    IntensityError,
    check_convention,
    reference_scale,
    register_gain,
)
from direct_nextaccel.masks.nested import FAMILIES, calibration_mask, nested_masks, shared_calibration_mask


def kspace(seed: int = 0, batch: int = 2, coils: int = 3, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, coils, size, size, 2, generator=generator)


@pytest.mark.parametrize(
    ("shape", "center"), [((64, 64), 1 / 64), ((256, 256), 1 / 64), ((64, 64), 2), ((640, 320), 1 / 64)]
)
def test_shared_calibration_is_in_every_family_and_every_level(shape, center):
    shared = shared_calibration_mask(shape, center)
    assert shared.any()
    for family in FAMILIES:
        assert not (shared & ~calibration_mask(family, shape, center)).any()
        assert not (shared & ~nested_masks(family, shape, seed=7, center_fraction=center)[0]).any()  # R = 32


def test_reference_scale_is_homogeneous_of_degree_one_and_reads_only_the_region():
    data = kspace(size=64)
    region = torch.from_numpy(shared_calibration_mask((64, 64), 2))  # a 2 x 2 block
    scale = reference_scale(data, region, ifft2)
    assert scale.shape == (2,) and (scale > 0).all()
    torch.testing.assert_close(reference_scale(100 * data, region, ifft2), 100 * scale)
    outside = data.clone()
    outside[:, :, ~region] = 0.0
    torch.testing.assert_close(reference_scale(outside, region, ifft2), scale)
    # The value is the maximum of the root-sum-of-squares image of the region's k-space (by hand, with numpy).
    complex_kspace = (data[..., 0] + 1j * data[..., 1]).numpy() * region.numpy()
    coil_images = np.fft.fftshift(
        np.fft.ifft2(np.fft.ifftshift(complex_kspace, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )
    expected = np.sqrt((np.abs(coil_images) ** 2).sum(axis=1)).reshape(2, -1).max(axis=1)
    np.testing.assert_allclose(scale.numpy(), expected, rtol=1e-5)


def test_zero_or_nonfinite_reference_names_the_slice():
    data = kspace()
    region = torch.from_numpy(shared_calibration_mask((32, 32), 1 / 64))
    data[1] = 0.0
    with pytest.raises(IntensityError, match=r"^b\.h5 slice 7: reference scale 0\.0 .*all zero"):
        reference_scale(data, region, ifft2, ["a.h5", "b.h5"], torch.tensor([3, 7]))
    data = kspace()
    data[0, 0, 16, 16, 0] = float("inf")
    with pytest.raises(IntensityError, match=r"^a\.h5 slice 3: .*not finite"):
        reference_scale(data, region, ifft2, ["a.h5", "b.h5"], torch.tensor([3, 7]))


def test_checkpoints_without_the_gain_are_refused_by_name():
    module = torch.nn.Linear(2, 2)
    register_gain(module, 0.5)
    state = module.state_dict()
    assert float(state[GAIN_KEY]) == 0.5
    check_convention(state, "model_5.pt")
    del state[GAIN_KEY]
    with pytest.raises(ValueError, match=r"^old/model_5\.pt was trained under DIRECT's intensity normalisation"):
        check_convention(state, "old/model_5.pt")
    with pytest.raises(ValueError, match=r"has no 'tokenizer\.intensity_gain'"):
        check_convention({}, "miar.pt", prefix="tokenizer.")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="intensity_gain"):
            register_gain(torch.nn.Linear(1, 1), bad)

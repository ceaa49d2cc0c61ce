"""The six-level hierarchy every NextAccel engine builds from one fully sampled acquisition."""

from __future__ import annotations

import numpy as np
import torch
from direct.data.transforms import fft2, ifft2

from direct_nextaccel.core.images import center_crop_or_pad
from direct_nextaccel.masks.nested import level_map
from direct_nextaccel.nextaccel import acquisition


def test_level_masks_follow_directs_file_seed_and_are_nested():
    names = ["file_brain_AXT1_001_0001.h5", "file_brain_AXT2_001_0002.h5"]
    masks = acquisition.level_masks(names, ["cartesian_y", "radial"], (32, 48), None)
    assert masks.shape == (2, 6, 32, 48) and masks.dtype == torch.bool
    assert masks[:, 5].all()
    assert (masks[:, :-1] <= masks[:, 1:]).all()  # R32 within R16 within ... within FS
    expected = level_map("radial", (32, 48), seed=tuple(map(ord, names[1]))) <= 0
    assert np.array_equal(masks[1, 0].numpy(), expected)
    fresh = acquisition.level_masks(names, ["cartesian_y", "radial"], (32, 48), None, seeds=[(1, 2), (3, 4)])
    assert not torch.equal(fresh, masks)


def test_choose_families_fixed_by_file_or_random_with_a_generator():
    names = [f"file_{i}.h5" for i in range(16)]
    fixed = acquisition.choose_families(names, ["cartesian_x", "radial"], None)
    assert fixed == acquisition.choose_families(names, ["cartesian_x", "radial"], None)
    drawn = acquisition.choose_families(names, ["cartesian_x", "radial"], torch.Generator().manual_seed(0))
    assert set(drawn) == {"cartesian_x", "radial"}


def test_hierarchy_of_full_mask_with_exact_coil_maps_is_the_image():
    torch.manual_seed(0)
    image = torch.randn(1, 16, 16, 2)
    maps = torch.randn(1, 4, 16, 16, 2)
    norm = maps.pow(2).sum(dim=(1, 4), keepdim=True).sqrt()
    maps = maps / norm  # sum_c |S_c|^2 = 1
    coil_images = torch.view_as_real(torch.view_as_complex(maps) * torch.view_as_complex(image)[:, None])
    kspace = fft2(coil_images, dim=(2, 3))
    masks = torch.ones(1, 6, 16, 16, dtype=torch.bool)
    images = acquisition.hierarchy_images(kspace, maps, masks, ifft2)
    assert images.shape == (1, 6, 2, 16, 16)
    torch.testing.assert_close(images[0, 5], image[0].permute(2, 0, 1), rtol=1e-4, atol=1e-5)


def test_center_crop_or_pad_round_trip_keeps_the_centre():
    image = torch.arange(2 * 6 * 8, dtype=torch.float32).reshape(2, 6, 8)
    small = center_crop_or_pad(image, (4, 4))
    back = center_crop_or_pad(small, (6, 8))
    assert back.shape == image.shape
    torch.testing.assert_close(back[:, 1:5, 2:6], image[:, 1:5, 2:6])
    assert back[:, 0].abs().sum() == 0 and back[:, :, :2].abs().sum() == 0

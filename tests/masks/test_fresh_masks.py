"""Nested masks off the training path (issue 14, item 4): per-file masks unchanged bit for bit, fresh masks built by
torch on the engine's device with the structure and density of the per-file ones, reproducible from a generator."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from direct_nextaccel.masks.nested import (
    FAMILIES,
    FULLY_SAMPLED,
    LEVELS,
    calibration_mask,
    fresh_level_maps,
    level_map,
)
from direct_nextaccel.nextaccel import acquisition

FILE_SEED = tuple(map(ord, "file_brain_AXT1_900_0001.h5"))

# sha256 (first 16 hex digits) of level maps made by the numpy construction before the masks moved to torch.
GOLDEN = [
    ("cartesian_x", (64, 64), 7, None, "33c15d899676e2c2"),
    ("cartesian_y", (64, 64), 7, None, "ac07bd75de4b52e4"),
    ("gaussian2d", (64, 64), 7, None, "886eada76e191079"),
    ("radial", (64, 64), 7, None, "926c7afc5269c5a2"),
    ("cartesian_x", (96, 160), (1, 2, 3), 1 / 64, "627fb0de5aa1e9fd"),
    ("cartesian_y", (96, 160), (1, 2, 3), 1 / 64, "1f06f5cb19f914dd"),
    ("gaussian2d", (96, 160), (1, 2, 3), 1 / 64, "c7cb0ff7e249e686"),
    ("radial", (96, 160), (1, 2, 3), 1 / 64, "b692f9ace7c8bcb5"),
    ("cartesian_x", (640, 320), FILE_SEED, None, "d4e73b3f46e59d4e"),
    ("cartesian_y", (640, 320), FILE_SEED, None, "d958ed16e7fb037d"),
    ("gaussian2d", (640, 320), FILE_SEED, None, "9a1c07a98b582ac2"),
    ("radial", (640, 320), FILE_SEED, None, "fa44de17d575b557"),
    ("cartesian_x", (256, 256), 11, 8, "5e4c9db07e528c95"),
    ("cartesian_y", (256, 256), 11, 8, "ed62b6c023c59eda"),
    ("gaussian2d", (256, 256), 11, 8, "dcffa6e88b089a32"),
    ("radial", (256, 256), 11, 8, "41d805533628d5a2"),
]


@pytest.mark.parametrize(("family", "shape", "seed", "center", "digest"), GOLDEN)
def test_per_file_masks_are_those_of_the_numpy_construction(family, shape, seed, center, digest):
    levels = level_map(family, shape, seed, center)
    assert hashlib.sha256(levels.tobytes()).hexdigest()[:16] == digest


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", [(48, 64), (40, 33)])
def test_fresh_masks_have_the_structure_of_the_per_file_masks(family, shape):
    maps = fresh_level_maps([family] * 6, shape, None, torch.Generator().manual_seed(0))
    assert maps.shape == (6, *shape) and maps.dtype == torch.int8
    file_map = torch.from_numpy(level_map(family, shape, 3))
    centre = torch.from_numpy(calibration_mask(family, shape))
    for levels in maps:
        assert (levels[centre] == 0).all()  # the same calibration centre, in every level
        for index in range(FULLY_SAMPLED):  # nested by construction (a level map); the same budget per level
            assert int((levels <= index).sum()) == int((file_map <= index).sum())
        if family.startswith("cartesian"):  # whole lines
            lines = levels if family == "cartesian_y" else levels.T
            assert (lines == lines[:1]).all()
    assert len({levels.numpy().tobytes() for levels in maps}) == 6  # a new acquisition per slice


@pytest.mark.parametrize("family", FAMILIES)
def test_fresh_masks_sample_with_the_density_of_the_per_file_masks(family):
    """Mean mask per location over 400 draws of each construction; a difference of two means of 400 Bernoulli draws
    has a standard deviation of at most 0.035, so the largest of 1024 locations stays below 0.2 (5.6 sigma) and the
    average difference below 0.035."""
    shape, draws = (32, 32), 400
    numpy_maps = np.stack([level_map(family, shape, seed) for seed in range(draws)])
    torch_maps = fresh_level_maps([family] * draws, shape, None, torch.Generator().manual_seed(1)).numpy()
    for index in range(len(LEVELS)):
        difference = np.abs((numpy_maps <= index).mean(axis=0) - (torch_maps <= index).mean(axis=0))
        assert difference.max() < 0.2, (LEVELS[index], difference.max())
        assert difference.mean() < 0.035, (LEVELS[index], difference.mean())


def test_fresh_masks_come_from_the_generator_alone():
    families = ["radial", "gaussian2d", "cartesian_y", "radial"]

    def draw(seed: int) -> torch.Tensor:
        return acquisition.level_masks(["a.h5"] * 4, families, (40, 48), None, torch.Generator().manual_seed(seed))

    assert torch.equal(draw(5), draw(5))
    assert not torch.equal(draw(5), draw(6))
    masks = draw(5)
    assert masks.shape == (4, 6, 40, 48) and masks[:, 5].all() and (masks[:, :-1] <= masks[:, 1:]).all()
    seeds = [(1, 2), 3, (4,), (5, 6)]  # one per sample, as the engines drew them: one generator for the batch
    seeded = acquisition.level_masks(["a.h5"] * 4, families, (40, 48), None, seeds)
    assert torch.equal(seeded, acquisition.level_masks(["a.h5"] * 4, families, (40, 48), None, seeds))


def test_per_file_masks_are_kept_once_per_file():
    names = [f"file_{index}.h5" for index in range(3)]
    first = acquisition.level_masks(names, ["radial", "cartesian_x", "gaussian2d"], (40, 48), 1 / 64)
    cached = acquisition._FILE_MAPS.maps
    for name, family in zip(names, ["radial", "cartesian_x", "gaussian2d"], strict=True):
        key = (family, (40, 48), name, 1 / 64, torch.device("cpu"))
        assert key in cached
        assert np.array_equal(cached[key].numpy(), level_map(family, (40, 48), tuple(map(ord, name)), 1 / 64))
    assert cached[("cartesian_x", (40, 48), names[1], 1 / 64, torch.device("cpu"))].untyped_storage().nbytes() == 40
    again = acquisition.level_masks(names, ["radial", "cartesian_x", "gaussian2d"], (40, 48), 1 / 64)
    assert torch.equal(first, again)

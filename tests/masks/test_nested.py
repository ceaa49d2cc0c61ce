"""Properties of the nested multi-acceleration mask families and their DIRECT integration."""

import numpy as np
import pytest
import torch
from direct.common.subsample import build_masking_function
from direct.data.mri_transforms import CreateSamplingMask
from direct.types import MaskFuncMode, RangeMode

from direct_nextaccel.masks.nested import (
    FAMILIES,
    LEVELS,
    MASK_NAMES,
    NestedCartesianYMaskFunc,
    NestedGaussian2DMaskFunc,
    NestedMaskFunc,
    NestedRadialMaskFunc,
    calibration_mask,
    family_index,
    family_of,
    level_map,
    mask_func_for_family,
    nested_masks,
)

SHAPES = [(64, 64), (256, 256), (640, 320), (96, 160)]
SEEDS = [0, 12345, tuple(map(ord, "file_brain_AXT2_200_2000019.h5"))]


def expected_counts(family: str, shape: tuple[int, int]) -> list[int]:
    """Sampled points per level (R32 ... R2, fully sampled): round(N / R) whole lines or round(H * W / R) points."""
    rows, cols = shape
    if family == "cartesian_y":
        return [round(cols / level) * rows for level in LEVELS] + [rows * cols]
    if family == "cartesian_x":
        return [round(rows / level) * cols for level in LEVELS] + [rows * cols]
    return [round(rows * cols / level) for level in LEVELS] + [rows * cols]


@pytest.mark.parametrize("seed", SEEDS, ids=["int0", "int12345", "filename"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: f"{shape[0]}x{shape[1]}")
@pytest.mark.parametrize("family", FAMILIES)
def test_exact_counts_nesting_and_centre(family, shape, seed):
    levels = level_map(family, shape, seed)
    masks = nested_masks(family, shape, seed)
    centre = calibration_mask(family, shape)

    assert levels.shape == shape and levels.dtype == np.int8
    assert masks.shape == (len(LEVELS) + 1, *shape) and masks.dtype == bool
    assert masks.sum(axis=(1, 2)).tolist() == expected_counts(family, shape)
    assert masks[-1].all()
    for index in range(len(LEVELS)):
        assert np.array_equal(masks[index], levels <= index)
        assert not (masks[index] & ~masks[index + 1]).any(), f"R{LEVELS[index]} not inside R{LEVELS[index + 1]}"
        assert masks[index][centre].all(), f"calibration centre missing at R{LEVELS[index]}"
    assert np.array_equal(levels[centre], np.zeros(centre.sum(), dtype=np.int8))


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_family_and_different_seeds_differ(family):
    shape = (96, 160)
    assert np.array_equal(level_map(family, shape, (1, 2, 3)), level_map(family, shape, [1, 2, 3]))
    assert np.array_equal(level_map(family, shape, 7), level_map(family, shape, np.int64(7)))
    distinct = {level_map(family, shape, seed).tobytes() for seed in range(6)}
    assert len(distinct) == 6
    assert not np.array_equal(level_map(family, (640, 320), None), level_map(family, (640, 320), None))


def test_returned_level_map_is_a_private_copy():
    levels = level_map("radial", (64, 64), 3)
    levels[:] = 0
    assert (level_map("radial", (64, 64), 3) > 0).any()


@pytest.mark.parametrize("seed", SEEDS[:2])
@pytest.mark.parametrize("shape", [(64, 64), (640, 320), (96, 160)])
def test_cartesian_x_is_transposed_cartesian_y(shape, seed):
    rows, cols = shape
    cartesian_x = level_map("cartesian_x", shape, seed)
    assert np.array_equal(cartesian_x, level_map("cartesian_y", (cols, rows), seed).T)
    assert np.array_equal(calibration_mask("cartesian_x", shape), calibration_mask("cartesian_y", (cols, rows)).T)
    # A real change of orientation, not the same columns.
    assert not np.array_equal(cartesian_x, level_map("cartesian_y", shape, seed))


@pytest.mark.parametrize("shape", [(64, 64), (640, 320), (96, 160)])
def test_cartesian_masks_sample_whole_lines(shape):
    cartesian_y = level_map("cartesian_y", shape, 11)
    cartesian_x = level_map("cartesian_x", shape, 11)
    assert (cartesian_y == cartesian_y[:1]).all(), "Cartesian-Y must sample whole columns"
    assert (cartesian_x == cartesian_x[:, :1]).all(), "Cartesian-X must sample whole rows"
    assert len(np.unique(cartesian_y[0])) == len(LEVELS) + 1


@pytest.mark.parametrize("num_lines", [64, 96, 320, 368, 640])
def test_cartesian_lines_are_nearly_equispaced(num_lines):
    # Gaps are measured between outer lines with the calibration block removed; nesting with exact counts makes
    # gaps differ by a few lines, random line selection would leave gaps several times the mean.
    for seed in range(4):
        levels = level_map("cartesian_y", (4, num_lines), seed)[0]
        outer = ~calibration_mask("cartesian_y", (4, num_lines))[0]
        for index, level in enumerate(LEVELS):
            position = np.flatnonzero(levels[outer] <= index)
            if position.size < 3:
                continue
            gaps = np.diff(position)
            assert gaps.max() <= 1.6 * gaps.mean() + 1, f"R{level} gaps {gaps.tolist()} (seed {seed})"


def test_centre_follows_direct_center_fractions():
    # Cartesian: round(N * fraction) lines placed like DIRECT's center_mask_func, or an integer line count.
    lines = calibration_mask("cartesian_y", (8, 320), 1 / 64)[0]
    assert np.flatnonzero(lines).tolist() == list(range(158, 163))
    assert calibration_mask("cartesian_y", (8, 320), 4)[0].sum() == 4
    assert calibration_mask("cartesian_y", (8, 320), 4.0)[0].sum() == 4
    assert calibration_mask("cartesian_y", (8, 320))[0].sum() == 5  # default 1/64
    # 2D: the largest centred disc with at most round(H * W * fraction) points, symmetric about the DC point.
    disc = calibration_mask("gaussian2d", (64, 64), 1 / 64)
    assert 0 < disc.sum() <= 64 and disc[32, 32]
    assert np.array_equal(disc[1:, 1:], disc[1:, 1:][::-1, ::-1])
    block = calibration_mask("radial", (64, 48), 3)
    assert np.array_equal(np.argwhere(block).min(0), [31, 23]) and block.sum() == 9
    assert np.array_equal(
        calibration_mask("radial", (640, 320), 1 / 128), calibration_mask("gaussian2d", (640, 320), 1 / 128)
    )


def angular_concentration(mask: np.ndarray, centre: tuple[int, int], min_radius: float) -> float:
    """Share of the sampled points beyond ``min_radius`` that fall in the 10% fullest of 720 direction bins."""
    rows, cols = np.nonzero(mask)
    keep = np.hypot(rows - centre[0], cols - centre[1]) > min_radius
    angles = np.arctan2(rows[keep] - centre[0], cols[keep] - centre[1])
    counts = np.sort(np.histogram(angles, bins=720, range=(-np.pi, np.pi))[0])[::-1]
    return counts[:72].sum() / counts.sum()


def point_symmetric_share(mask: np.ndarray, centre: np.ndarray) -> float:
    """Share of the sampled non-centre points whose mirror through the DC point (H // 2, W // 2) is sampled too."""
    inner = mask[1:, 1:]  # even sizes: drop the first row and column, which have no mirror
    rows, cols = np.nonzero(inner & ~centre[1:, 1:])
    return inner[::-1, ::-1][rows, cols].mean()


@pytest.mark.parametrize("seed", [0, 5])
def test_radial_samples_spokes_through_the_centre(seed):
    shape = (256, 256)
    mask = nested_masks("radial", shape, seed)[LEVELS.index(8)]
    # Spokes through the DC point are point-symmetric and few in direction; only the random top-up points are not.
    assert point_symmetric_share(mask, calibration_mask("radial", shape)) > 0.95
    assert angular_concentration(mask, (128, 128), min_radius=64) > 0.6


@pytest.mark.parametrize("seed", [0, 5])
def test_gaussian_is_variable_density_and_not_radial(seed):
    shape = (256, 256)
    mask = nested_masks("gaussian2d", shape, seed)[LEVELS.index(8)]
    radius = np.hypot(*np.meshgrid(np.arange(256) - 128, np.arange(256) - 128, indexing="ij"))
    assert mask[(radius > 20) & (radius < 40)].mean() > 2 * mask[radius > 100].mean() > 0
    assert point_symmetric_share(mask, calibration_mask("gaussian2d", shape)) < 0.5
    assert angular_concentration(mask, (128, 128), min_radius=64) < 0.3


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_func_level_map_does_not_depend_on_chosen_acceleration(family):
    shape = (1, 96, 160, 2)
    seed = tuple(map(ord, "file_a.h5"))
    reference = nested_masks(family, shape[1:3], seed)
    all_levels = mask_func_for_family(family, accelerations=LEVELS)
    for index, level in enumerate(LEVELS):
        mask_func = mask_func_for_family(family, accelerations=[level])
        assert np.array_equal(mask_func.level_map(shape[1:3], seed), level_map(family, shape[1:3], seed))
        mask, acceleration, center_fraction = mask_func(shape, seed=seed, return_acceleration=True)
        assert mask.shape == (1, 1, 96, 160, 1) and mask.dtype == torch.bool
        assert np.array_equal(mask[0, 0, :, :, 0].numpy(), reference[index])
        assert (acceleration, center_fraction) == (float(level), 1 / 64)
    for seed in range(8):
        mask, acceleration, _ = all_levels(shape, seed=seed, return_acceleration=True)
        index = LEVELS.index(int(acceleration))
        assert np.array_equal(mask[0, 0, :, :, 0].numpy(), nested_masks(family, shape[1:3], seed)[index])


@pytest.mark.parametrize("family", FAMILIES)
def test_direct_build_masking_function_and_create_sampling_mask(family):
    mask_func = build_masking_function(MASK_NAMES[family], accelerations=[8], center_fractions=[1 / 64])
    assert type(mask_func).family == family
    transform = CreateSamplingMask(mask_func, return_acs=True)
    kspace = torch.zeros(3, 96, 160, 2)  # C, H, W, 2
    slices = [transform({"kspace": kspace, "filename": "file_a.h5", "slice_no": index}) for index in range(3)]
    expected = nested_masks(family, (96, 160), tuple(map(ord, "file_a.h5")))[LEVELS.index(8)]
    for sample in slices:
        assert sample["sampling_mask"].shape == (1, 96, 160, 1)
        assert np.array_equal(sample["sampling_mask"][0, :, :, 0].numpy(), expected)
        assert np.array_equal(sample["acs_mask"][0, :, :, 0].numpy(), calibration_mask(family, (96, 160)))
        assert sample["acceleration"].item() == 8
        assert sample["center_fraction"].item() == pytest.approx(1 / 64)
    other = transform({"kspace": kspace, "filename": "file_b.h5", "slice_no": 0})
    assert not torch.equal(other["sampling_mask"], slices[0]["sampling_mask"])


def test_families_names_and_factory():
    assert [family_index(family) for family in FAMILIES] == [0, 1, 2, 3]
    assert family_index("NestedRadial") == FAMILIES.index("radial")
    assert family_of("NestedGaussian2DMaskFunc") == "gaussian2d"
    assert isinstance(mask_func_for_family("NestedCartesianY", accelerations=(16, 4)), NestedCartesianYMaskFunc)
    # One centre value serves every acceleration; equal per-acceleration values are accepted too.
    assert NestedRadialMaskFunc([32, 2], center_fractions=[2, 2]).center_fractions == [2.0, 2.0]
    assert NestedRadialMaskFunc([32, 2], center_fractions=[0.01]).center_fractions == [0.01, 0.01]


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: level_map("spiral", (64, 64)), "'spiral'"),
        (lambda: family_index("NestedSpiral"), "'NestedSpiral'"),
        (lambda: mask_func_for_family("radial", accelerations=[12]), "acceleration 12 "),
        (lambda: NestedRadialMaskFunc([]), "accelerations []"),
        (lambda: NestedRadialMaskFunc([8], center_fractions=[0.08]), "0.08"),
        (lambda: NestedRadialMaskFunc([8, 4], center_fractions=[0.01, 0.02]), "[0.01, 0.02]"),
        (lambda: NestedRadialMaskFunc([8], center_fractions=[2.5]), "2.5"),
        (lambda: NestedRadialMaskFunc([8], center_fractions=[-1]), "-1"),
        (lambda: NestedRadialMaskFunc([8], mode=MaskFuncMode.DYNAMIC), "dynamic"),
        (lambda: NestedRadialMaskFunc([8], range_mode=RangeMode.UNIFORM), "uniform"),
        (lambda: level_map("cartesian_y", (64, 64), center_fraction=4), "4 lines"),
        (lambda: level_map("gaussian2d", (64, 64), center_fraction=80), "80 x 80"),
        (lambda: level_map("radial", (64, 64), center_fraction=12), "12 x 12"),
        (lambda: level_map("cartesian_y", (64, 31)), "got 31"),
        (lambda: level_map("cartesian_x", (31, 64)), "got 31"),
        (lambda: level_map("radial", (4, 7)), "got 28"),
        (lambda: level_map("radial", (64,)), "(64,)"),
        (lambda: level_map("gaussian2d", (1, 64, 64)), "(1, 64, 64)"),
        (lambda: level_map("gaussian2d", (64, 0)), "(64, 0)"),
        (lambda: level_map("radial", (64, 64), seed=-3), "-3"),
        (lambda: level_map("radial", (64, 64), seed="file_a.h5"), "file_a.h5"),
        (lambda: NestedGaussian2DMaskFunc([8]).mask_func((64, 64)), "(64, 64)"),
    ],
)
def test_bad_input_raises_value_error_naming_the_value(call, fragment):
    with pytest.raises(ValueError) as error:
        call()
    message = str(error.value)
    assert fragment in message and "\n" not in message


def test_base_class_has_no_family():
    with pytest.raises(TypeError, match="NestedMaskFunc"):
        NestedMaskFunc([8])

"""Nested multi-acceleration undersampling masks: one seed gives R=32 ⊂ R=16 ⊂ R=8 ⊂ R=4 ⊂ R=2 ⊂ fully sampled.

NextAccel predicts k-space scale by scale, from the most to the least accelerated acquisition, so the masks of one
acquisition must be nested and share one fully sampled calibration centre. Every family is described by a *level map*:
an ``(H, W)`` ``int8`` array whose value at a k-space location is the index in :data:`LEVELS` of the coarsest level
that samples it (0 = R32 ... 4 = R2) and 5 where only the fully sampled data has it. The mask at acceleration ``R`` is
``level_map <= LEVELS.index(R)``; it holds exactly ``round(N / R)`` lines (Cartesian, ``N`` lines along the sampled
axis) or ``round(H * W / R)`` points (2D families).

Families (also the FiLM label order, :data:`FAMILIES`):

``cartesian_y``
    Equispaced whole columns (last spatial axis, the phase-encode axis of fastMRI), like DIRECT's equispaced masks.
``cartesian_x``
    The same construction along rows: the level map for ``(H, W)`` is the ``cartesian_y`` map for ``(W, H)`` with
    the same seed, transposed.
``gaussian2d``
    2D variable density with DIRECT's ``Gaussian2D`` standard deviation ``6 * sqrt(N // 2)`` pixels per axis. Points
    are ranked by a seeded Gaussian-weighted random priority (weighted sampling without replacement, the law of
    DIRECT's rejection sampler), the calibration centre first; level ``R`` takes the first ``round(H * W / R)``.
``radial``
    Golden-angle spokes through the centre (rasterised as 8-connected digital lines) added while they fit in a level's
    budget, then a few seeded random points so the count is exact; the next level continues the same spoke sequence.

The calibration centre follows DIRECT's ``center_fractions``: a value below 1 is a fraction of the lines (Cartesian,
centred like DIRECT's ``center_mask_func``) or of the points (2D: the largest centred disc holding at most that many
points); an integer ``c >= 1`` is ``c`` centre lines (Cartesian) or a centred ``c x c`` block (2D). The default is
1/64. Because the masks are nested, the centre must fit in the R=32 budget.
"""

import functools
import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import ClassVar

import numpy as np
import torch
from direct.common.subsample import BaseMaskFunc, temp_seed
from direct.types import MaskFuncMode, RangeMode

__all__ = [
    "DEFAULT_CENTER_FRACTION",
    "FAMILIES",
    "FULLY_SAMPLED",
    "LEVELS",
    "MASK_NAMES",
    "NestedCartesianXMaskFunc",
    "NestedCartesianYMaskFunc",
    "NestedGaussian2DMaskFunc",
    "NestedMaskFunc",
    "NestedRadialMaskFunc",
    "calibration_mask",
    "family_index",
    "family_of",
    "level_map",
    "mask_func_for_family",
    "nested_masks",
    "shared_calibration_mask",
]

LEVELS: tuple[int, ...] = (32, 16, 8, 4, 2)
FAMILIES: tuple[str, ...] = ("cartesian_x", "cartesian_y", "gaussian2d", "radial")
MASK_NAMES: dict[str, str] = {
    "cartesian_x": "NestedCartesianX",
    "cartesian_y": "NestedCartesianY",
    "gaussian2d": "NestedGaussian2D",
    "radial": "NestedRadial",
}
DEFAULT_CENTER_FRACTION = 1 / 64

FULLY_SAMPLED = len(LEVELS)  # level index of locations only the fully sampled data has
_GOLDEN_ANGLE = math.pi * 2 / (1 + math.sqrt(5))  # pi / golden ratio: spokes through the centre cover [0, pi)
_SPOKE_CHUNK = 256

Seed = int | tuple[int, ...] | None


def family_of(name: str) -> str:
    """Family of a family name or a DIRECT masking name (``"radial"``, ``"NestedRadial"``, ``"NestedRadialMaskFunc"``).

    Raises
    ------
    ValueError
        If ``name`` is neither.
    """
    if isinstance(name, str):
        if name in MASK_NAMES:
            return name
        for family, mask_name in MASK_NAMES.items():
            if name.removesuffix("MaskFunc") == mask_name:
                return family
    raise ValueError(f"unknown mask family {name!r}: use one of {FAMILIES} or {tuple(MASK_NAMES.values())}")


def family_index(family: str) -> int:
    """Index of a family (or DIRECT masking name) in :data:`FAMILIES`, the FiLM label of the family."""
    return FAMILIES.index(family_of(family))


def _level_index(acceleration: object) -> int:
    if isinstance(acceleration, Real) and not isinstance(acceleration, bool):
        for index, level in enumerate(LEVELS):
            if acceleration == level:
                return index
    raise ValueError(f"acceleration {acceleration!r} is not in the nested family {LEVELS}")


def _center_value(center_fraction: object) -> float:
    """Validate a centre value independently of the matrix: a fraction <= 1/32 or an integer line count."""
    if center_fraction is None:
        return DEFAULT_CENTER_FRACTION
    if not isinstance(center_fraction, Real) or isinstance(center_fraction, bool) or not center_fraction > 0:
        raise ValueError(f"center fraction {center_fraction!r} must be a positive fraction or an integer count")
    value = float(center_fraction)
    if 1 / LEVELS[0] < value < 1:
        raise ValueError(
            f"center fraction {center_fraction!r} exceeds the R={LEVELS[0]} budget of the nested masks "
            f"(at most 1/{LEVELS[0]} = {1 / LEVELS[0]}, or an integer count)"
        )
    if value >= 1 and not value.is_integer():
        raise ValueError(f"center fraction {center_fraction!r} >= 1 must be an integer count")
    return value


def _shape_2d(shape: object) -> tuple[int, int]:
    if not isinstance(shape, Sequence | np.ndarray) or len(shape) != 2:
        raise ValueError(f"shape {shape!r} must be a 2D (rows, columns) shape")
    if not all(isinstance(size, Integral) and size > 0 for size in shape):
        raise ValueError(f"shape {shape!r} must hold positive integers")
    return int(shape[0]), int(shape[1])


def _seed_key(seed: object) -> Seed:
    """Hashable form of a seed accepted by :func:`numpy.random.default_rng`: None, an int or a tuple of ints."""
    if seed is None:
        return None
    if isinstance(seed, Integral) and not isinstance(seed, bool):
        if seed < 0:
            raise ValueError(f"seed {seed!r} must be non-negative")
        return int(seed)
    if isinstance(seed, Sequence | np.ndarray) and not isinstance(seed, str | bytes):
        values = tuple(seed)
        if all(isinstance(value, Integral) and not isinstance(value, bool) and value >= 0 for value in values):
            return tuple(int(value) for value in values)
    raise ValueError(f"seed {seed!r} must be None, a non-negative int or a sequence of non-negative ints")


def _budgets(num: int) -> np.ndarray:
    """Number of lines or points of each level (R32 first) for ``num`` lines or points."""
    return np.array([round(num / level) for level in LEVELS], dtype=np.int64)


def _check_size(family: str, num: int, what: str) -> None:
    if num < LEVELS[0]:
        raise ValueError(f"{family} masks need at least {LEVELS[0]} {what}, got {num}")


def _centre_lines(num_lines: int, center: float) -> np.ndarray:
    """Bool ``(num_lines,)``: the centred calibration lines, placed like DIRECT's ``center_mask_func``."""
    count = int(center) if center >= 1 else max(1, round(num_lines * center))
    budget = round(num_lines / LEVELS[0])
    if count > budget:
        raise ValueError(
            f"calibration centre of {count} lines (center fraction {center}) exceeds the R={LEVELS[0]} budget "
            f"of {budget} lines for {num_lines} lines"
        )
    lines = np.zeros(num_lines, dtype=bool)
    start = (num_lines - count + 1) // 2
    lines[start : start + count] = True
    return lines


def _centre_2d(shape: tuple[int, int], center: float) -> np.ndarray:
    """Bool ``(H, W)``: a centred ``c x c`` block (integer ``c``) or the largest centred disc with at most
    ``round(H * W * fraction)`` points, so the centre never exceeds the requested size."""
    rows, cols = shape
    budget = round(rows * cols / LEVELS[0])
    if center >= 1:
        side = int(center)
        if side > min(rows, cols):
            raise ValueError(f"calibration centre of {side} x {side} points is larger than the matrix {shape}")
        if side * side > budget:
            raise ValueError(
                f"calibration centre of {side} x {side} points exceeds the R={LEVELS[0]} budget of {budget} points "
                f"for the matrix {shape}"
            )
        centre = np.zeros(shape, dtype=bool)
        row0, col0 = (rows - side + 1) // 2, (cols - side + 1) // 2
        centre[row0 : row0 + side, col0 : col0 + side] = True
        return centre
    count = max(1, round(rows * cols * center))
    dist2 = (np.arange(rows)[:, None] - rows // 2) ** 2 + (np.arange(cols)[None, :] - cols // 2) ** 2  # H, W
    # A disc that would cut through a ring of equal radius stops just inside it, keeping the centre symmetric.
    kth = np.partition(dist2.ravel(), (count - 1, count))
    return dist2 < kth[count] if kth[count] == kth[count - 1] else dist2 <= kth[count - 1]


def calibration_mask(family: str, shape: Sequence[int], center_fraction: float | None = None) -> np.ndarray:
    """Bool ``(H, W)`` fully sampled calibration centre of a family; every level of the family contains it.

    Parameters
    ----------
    family : str
        One of :data:`FAMILIES` (or its DIRECT masking name).
    shape : sequence of two ints
        ``(H, W)`` k-space matrix.
    center_fraction : float or int, optional
        DIRECT-style centre value (see the module docstring); default 1/64.
    """
    family = family_of(family)
    rows, cols = _shape_2d(shape)
    center = _center_value(center_fraction)
    if family == "cartesian_y":
        _check_size(family, cols, "columns")
        return np.broadcast_to(_centre_lines(cols, center)[None, :], (rows, cols)).copy()
    if family == "cartesian_x":
        _check_size(family, rows, "rows")
        return np.broadcast_to(_centre_lines(rows, center)[:, None], (rows, cols)).copy()
    _check_size(family, rows * cols, "points")
    return _centre_2d((rows, cols), center)


def shared_calibration_mask(shape: Sequence[int], center_fraction: float | None = None) -> np.ndarray:
    """Bool ``(H, W)``: the calibration samples every family shares (the intersection of their centres).

    Every level of every family of one acquisition contains these samples, so anything computed from them alone
    (the plugin's intensity reference, :mod:`direct_nextaccel.core.intensity`) is the same whichever family
    DIRECT's masking is configured with, and inference has them in its R = 32 input.

    Raises
    ------
    ValueError
        If the centres share no sample (cannot happen for centred centres; checked rather than assumed).
    """
    return _shared_calibration(_shape_2d(shape), _center_value(center_fraction)).copy()


@functools.lru_cache(maxsize=16)
def _shared_calibration(shape: tuple[int, int], center: float) -> np.ndarray:
    # Cached: the engines ask for it every iteration (intensity reference), and the 2D discs sort every k-space point.
    shared = np.logical_and.reduce([calibration_mask(family, shape, center) for family in FAMILIES])
    if not shared.any():
        raise ValueError(f"the calibration centres of {FAMILIES} share no sample for matrix {shape}")
    return shared


def _cartesian_line_levels(num_lines: int, center: float, rng: np.random.Generator) -> np.ndarray:
    """Level of each line, built fine to coarse so every level is an equispaced subset of the next finer one.

    The R=2 outer lines are an evenly spaced subset (seeded phase) of the non-centre lines, R=4 an evenly spaced
    subset of those, and so on: counts are exact and the levels nested.
    """
    centre = _centre_lines(num_lines, center)
    levels = np.full(num_lines, FULLY_SAMPLED, dtype=np.int8)
    levels[centre] = 0
    chosen = np.flatnonzero(~centre)
    outer_budgets = _budgets(num_lines) - int(centre.sum())
    for index in reversed(range(len(LEVELS))):
        keep = int(outer_budgets[index])
        total = chosen.size
        phase = int(rng.integers(total)) if total else 0
        # Exact integer arithmetic: floor((j * total + phase) / keep) is strictly increasing and < total.
        chosen = chosen[(np.arange(keep) * total + phase) // keep] if keep else chosen[:0]
        levels[chosen] = index
    return levels


def _gaussian_levels(shape: tuple[int, int], center: float, rng: np.random.Generator) -> np.ndarray:
    rows, cols = shape
    centre = _centre_2d(shape, center)
    std_rows, std_cols = (6 * math.sqrt(max(size // 2, 1)) for size in shape)
    dist = (np.arange(rows)[:, None] - rows // 2) ** 2 / (2 * std_rows**2) + (
        np.arange(cols)[None, :] - cols // 2
    ) ** 2 / (2 * std_cols**2)  # H, W
    # Efraimidis-Spirakis keys E / w in log space: ascending order = weighted sampling without replacement.
    with np.errstate(divide="ignore"):
        keys = np.log(rng.standard_exponential(shape)) + dist
    keys[centre] = -np.inf
    rank = np.empty(rows * cols, dtype=np.int64)
    rank[np.argsort(keys, axis=None, kind="stable")] = np.arange(rows * cols)
    return np.searchsorted(_budgets(rows * cols), rank, side="right").astype(np.int8).reshape(shape)


def _spoke_pixels(shape: tuple[int, int], angles: np.ndarray) -> np.ndarray:
    """Flat pixel indices ``(S, L)`` of digital lines through the centre (-1 past the matrix), ``L = max(H, W)``.

    Angles are in pixel units. Each spoke steps one pixel along its dominant axis, so it is 8-connected and holds
    each of its pixels once.
    """
    rows, cols = shape
    centre_row, centre_col = rows // 2, cols // 2
    step = np.arange(max(rows, cols))[None, :]  # 1, L
    sin, cos = np.sin(angles)[:, None], np.cos(angles)[:, None]  # S, 1
    along_cols = np.abs(cos) >= np.abs(sin)
    slope = np.divide(sin, cos, out=np.zeros_like(sin), where=along_cols)
    inverse_slope = np.divide(cos, sin, out=np.zeros_like(cos), where=~along_cols)
    row = np.where(along_cols, np.rint(centre_row + (step - centre_col) * slope), step)  # S, L
    col = np.where(along_cols, step, np.rint(centre_col + (step - centre_row) * inverse_slope))  # S, L
    inside = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)
    return np.where(inside, row * cols + col, -1).astype(np.int64)


def _radial_levels(shape: tuple[int, int], center: float, rng: np.random.Generator) -> np.ndarray:
    rows, cols = shape
    num_points = rows * cols
    budgets = _budgets(num_points)
    centre = _centre_2d(shape, center).ravel()
    first_angle = rng.uniform(0, math.pi)
    top_up_order = rng.permutation(num_points)

    # first_spoke[p]: index of the first spoke through pixel p. Spokes are generated until the calibration centre
    # and the spokes cover the R=2 budget; the cap is where golden-angle gaps (below 2.7 pi / spokes) are already
    # narrower than one pixel at the corners, so more spokes would add nothing.
    never = np.iinfo(np.int64).max
    first_spoke = np.full(num_points, never, dtype=np.int64)
    max_spokes = math.ceil(4 * math.pi * math.hypot(rows, cols) / 2) + _SPOKE_CHUNK
    num_spokes = 0
    while num_spokes < max_spokes and np.count_nonzero(centre | (first_spoke < never)) < budgets[-1]:
        index = np.arange(num_spokes, num_spokes + _SPOKE_CHUNK)
        pixels = _spoke_pixels(shape, first_angle + index * _GOLDEN_ANGLE)
        inside = pixels >= 0
        np.minimum.at(first_spoke, pixels[inside], np.broadcast_to(index[:, None], pixels.shape)[inside])
        num_spokes += _SPOKE_CHUNK

    hit = (first_spoke < never) & ~centre
    # covered[k] = |centre ∪ first k spokes|
    covered = np.concatenate(([0], np.cumsum(np.bincount(first_spoke[hit], minlength=num_spokes)))) + centre.sum()

    levels = np.full(num_points, FULLY_SAMPLED, dtype=np.int8)
    levels[centre] = 0
    topped_up = np.zeros(num_points, dtype=bool)
    spokes_used = 0
    for index, budget in enumerate(budgets):
        # Points added at random earlier and crossed by a later spoke are counted once: the sampled count after k
        # spokes is covered[k] plus the random points no spoke among the first k reaches; it grows with k.
        random_first_spoke = np.sort(first_spoke[topped_up])
        beyond = random_first_spoke.size - np.searchsorted(random_first_spoke, np.arange(num_spokes + 1))
        spokes = int(np.searchsorted(covered + beyond, budget, side="right")) - 1
        levels[(first_spoke >= spokes_used) & (first_spoke < spokes) & (levels == FULLY_SAMPLED)] = index
        spokes_used = spokes
        missing = int(budget - np.count_nonzero(levels <= index))
        extra = top_up_order[levels[top_up_order] == FULLY_SAMPLED][:missing]
        levels[extra] = index
        topped_up[extra] = True
    return levels.reshape(shape)


def _build_level_map(family: str, shape: tuple[int, int], seed: Seed, center: float) -> np.ndarray:
    rows, cols = shape
    rng = np.random.default_rng(seed)
    if family == "cartesian_y":
        _check_size(family, cols, "columns")
        levels = np.broadcast_to(_cartesian_line_levels(cols, center, rng)[None, :], shape).copy()
    elif family == "cartesian_x":
        _check_size(family, rows, "rows")
        levels = np.broadcast_to(_cartesian_line_levels(rows, center, rng)[:, None], shape).copy()
    else:
        _check_size(family, rows * cols, "points")
        build = _gaussian_levels if family == "gaussian2d" else _radial_levels
        levels = build(shape, center, rng)
    return levels


# DIRECT asks for the same file's mask once per slice; the cache returns read-only arrays that callers copy.
@functools.lru_cache(maxsize=64)
def _seeded_level_map(family: str, shape: tuple[int, int], seed: int | tuple[int, ...], center: float) -> np.ndarray:
    levels = _build_level_map(family, shape, seed, center)
    levels.setflags(write=False)
    return levels


def level_map(
    family: str, shape: Sequence[int], seed: object = None, center_fraction: float | None = None
) -> np.ndarray:
    """Level map ``(H, W)`` ``int8`` of one acquisition: the index in :data:`LEVELS` of the coarsest level sampling
    each location, :data:`FULLY_SAMPLED` (5) where no accelerated level does.

    Parameters
    ----------
    family : str
        One of :data:`FAMILIES` (or its DIRECT masking name).
    shape : sequence of two ints
        ``(H, W)``: rows (readout in fastMRI) and columns (phase encode).
    seed : None, int or sequence of ints
        Anything :func:`numpy.random.default_rng` accepts, e.g. DIRECT's ``tuple(map(ord, filename))``. None draws a
        fresh random family.
    center_fraction : float or int, optional
        DIRECT-style calibration centre (see the module docstring); default 1/64.

    Returns
    -------
    np.ndarray
        ``(H, W)`` ``int8``; the mask at acceleration ``R`` is ``level_map <= LEVELS.index(R)``.
    """
    family, shape, seed, center = family_of(family), _shape_2d(shape), _seed_key(seed), _center_value(center_fraction)
    if seed is None:
        return _build_level_map(family, shape, None, center)
    return _seeded_level_map(family, shape, seed, center).copy()


def nested_masks(
    family: str, shape: Sequence[int], seed: object = None, center_fraction: float | None = None
) -> np.ndarray:
    """All masks of one acquisition, bool ``(6, H, W)``: R32, R16, R8, R4, R2, fully sampled (all True).

    Parameters are those of :func:`level_map`.
    """
    levels = level_map(family, shape, seed, center_fraction)
    return levels[None] <= np.arange(FULLY_SAMPLED + 1, dtype=np.int8)[:, None, None]


class NestedMaskFunc(BaseMaskFunc):
    """DIRECT mask function drawing one acceleration of a nested family per call.

    The masks come from one :func:`level_map` per seed, which does not depend on the acceleration drawn, so the
    masks DIRECT produces for different accelerations of the same file are nested. Subclasses set :attr:`family`.

    Parameters
    ----------
    accelerations : sequence of numbers
        Accelerations to draw from (uniformly, like DIRECT's ``RangeMode.DISCRETE``); each must be in :data:`LEVELS`.
    center_fractions : sequence of numbers, optional
        One centre value, or one per acceleration, all equal (the nested levels share one calibration centre). A value
        below 1 is a fraction (at most 1/32), an integer ``c >= 1`` a count (see the module docstring). Default 1/64.
    range_mode : RangeMode
        Only ``RangeMode.DISCRETE``: other modes would draw accelerations outside the family.
    mode : MaskFuncMode
        Only ``MaskFuncMode.STATIC``.
    """

    family: ClassVar[str]

    def __init__(
        self,
        accelerations: Sequence[float],
        center_fractions: Sequence[float] | None = None,
        range_mode: RangeMode = RangeMode.DISCRETE,
        mode: MaskFuncMode = MaskFuncMode.STATIC,
    ) -> None:
        if not hasattr(self, "family"):
            raise TypeError(f"NestedMaskFunc has no family: use one of {tuple(MASK_NAMES.values())}")
        if MaskFuncMode.STATIC != mode:
            raise ValueError(f"mask mode {mode!r} is not supported by {type(self).__name__}: only 'static' is")
        if RangeMode.DISCRETE != range_mode:
            raise ValueError(f"range mode {range_mode!r} is not supported by {type(self).__name__}: only 'discrete' is")
        if isinstance(accelerations, Real) or not accelerations:
            raise ValueError(f"accelerations {accelerations!r} must be a non-empty sequence from {LEVELS}")
        for acceleration in accelerations:
            _level_index(acceleration)
        values = [None] if center_fractions is None else list(center_fractions)
        centers = {_center_value(value) for value in values}
        if len(centers) != 1 or len(values) not in (1, len(accelerations)):
            raise ValueError(
                f"center fractions {center_fractions!r} must be one value (or one equal value per acceleration): "
                "the nested levels share one calibration centre"
            )
        self.center = centers.pop()
        super().__init__(
            accelerations=list(accelerations),
            center_fractions=[self.center] * len(accelerations),
            range_mode=range_mode,
            mode=mode,
        )

    def level_map(self, shape: Sequence[int], seed: object = None) -> np.ndarray:
        """``(H, W)`` ``int8`` level map of this family for one seed; see :func:`level_map`."""
        return level_map(self.family, shape, seed, self.center)

    def mask_func(self, shape: Sequence[int], return_acs: bool = False, seed: object = None) -> torch.Tensor:
        """Sampling mask at an acceleration drawn from :attr:`accelerations`.

        Parameters
        ----------
        shape : sequence of ints
            ``(*, H, W, 2)``, e.g. DIRECT's k-space shape without the coil axis.
        return_acs : bool
            Return the calibration centre only.
        seed : None, int or sequence of ints
            Seeds both the drawn acceleration and the level map; DIRECT passes ``tuple(map(ord, filename))``.

        Returns
        -------
        torch.Tensor
            Bool ``(1, *, H, W, 1)`` with ones for the leading axes.
        """
        if len(shape) < 3:
            raise ValueError(f"shape {tuple(shape)!r} must have at least 3 dimensions (*, rows, columns, complex)")
        spatial = (int(shape[-3]), int(shape[-2]))
        seed = _seed_key(seed)
        with temp_seed(self.rng, seed):
            _, acceleration = self.choose_acceleration()
        if return_acs:
            mask = calibration_mask(self.family, spatial, self.center)
        else:
            mask = self.level_map(spatial, seed) <= _level_index(acceleration)
        return self._reshape_and_add_coil_axis(mask, shape)


class NestedCartesianYMaskFunc(NestedMaskFunc):
    """Nested equispaced Cartesian columns (phase encode, last spatial axis). DIRECT name ``NestedCartesianY``."""

    family = "cartesian_y"


class NestedCartesianXMaskFunc(NestedMaskFunc):
    """Nested equispaced Cartesian rows: the transposed orientation of ``NestedCartesianY``. DIRECT name
    ``NestedCartesianX``."""

    family = "cartesian_x"


class NestedGaussian2DMaskFunc(NestedMaskFunc):
    """Nested 2D Gaussian variable-density points. DIRECT name ``NestedGaussian2D``."""

    family = "gaussian2d"


class NestedRadialMaskFunc(NestedMaskFunc):
    """Nested golden-angle radial spokes topped up with random points. DIRECT name ``NestedRadial``."""

    family = "radial"


_CLASSES: dict[str, type[NestedMaskFunc]] = {
    cls.family: cls
    for cls in (NestedCartesianXMaskFunc, NestedCartesianYMaskFunc, NestedGaussian2DMaskFunc, NestedRadialMaskFunc)
}


def mask_func_for_family(
    family: str, accelerations: Sequence[float] = (32,), center_fractions: Sequence[float] | None = None
) -> NestedMaskFunc:
    """The DIRECT mask function of a family (or DIRECT masking name), e.g. for :meth:`NestedMaskFunc.level_map`."""
    return _CLASSES[family_of(family)](accelerations=accelerations, center_fractions=center_fractions)

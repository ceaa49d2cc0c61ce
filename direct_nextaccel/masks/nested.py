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

One construction per family, written in torch and batched: :func:`level_map` (DIRECT's masking, one file at a
time) feeds it the draws of numpy's generator seeded by the file name, :func:`fresh_level_maps` (training with a new
mask per slice and step) the draws of a torch generator on the engine's device, so fresh masks cost no numpy and no
host work on the training path.
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
    "fresh_level_maps",
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
_NEVER = torch.iinfo(torch.int64).max  # first spoke of a pixel no spoke reaches

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


def _cartesian_phase_ranges(num_lines: int, center: float) -> list[int]:
    """Range of the seeded phase of each Cartesian level, R2 first: the number of lines it subsamples (at least 1)."""
    outer_budgets = _budgets(num_lines) - int(_centre_lines(num_lines, center).sum())
    totals = [num_lines - int(_centre_lines(num_lines, center).sum()), *outer_budgets[:0:-1].tolist()]
    return [max(int(total), 1) for total in totals]


def _cartesian_line_levels(num_lines: int, center: float, phases: torch.Tensor) -> torch.Tensor:
    """Level of each line ``(B, num_lines)`` ``int8``, built fine to coarse so every level is an equispaced subset of
    the next finer one.

    The R=2 outer lines are an evenly spaced subset of the non-centre lines, R=4 an evenly spaced subset of those, and
    so on: counts are exact and the levels nested. ``phases`` ``(B, 5)`` (long, R2 first) are the seeded offsets,
    each in ``[0, total)`` of :func:`_cartesian_phase_ranges`.
    """
    device = phases.device
    centre = _centre_lines(num_lines, center)
    batch = phases.shape[0]
    levels = torch.full((batch, num_lines), FULLY_SAMPLED, dtype=torch.int8, device=device)
    levels.masked_fill_(torch.from_numpy(centre).to(device), 0)
    chosen = torch.from_numpy(np.flatnonzero(~centre)).to(device).expand(batch, -1)  # B, T
    outer_budgets = _budgets(num_lines) - int(centre.sum())
    for step, index in enumerate(reversed(range(len(LEVELS)))):
        keep, total = int(outer_budgets[index]), chosen.shape[1]
        # Exact integer arithmetic: floor((j * total + phase) / keep) is strictly increasing and < total.
        picks = (torch.arange(keep, device=device)[None] * total + phases[:, step, None]) // max(keep, 1)  # B, keep
        chosen = chosen.gather(1, picks)
        levels.scatter_(1, chosen, index)
    return levels


def _gaussian_levels(shape: tuple[int, int], center: float, log_exponentials: torch.Tensor) -> torch.Tensor:
    """Level map ``(B, H, W)`` ``int8`` of Gaussian variable density from ``log(E)``, ``E`` standard exponential
    ``(B, H, W)`` float64.

    Efraimidis-Spirakis keys ``E / w`` in log space: ascending order is weighted sampling without replacement with
    weights ``w``, DIRECT's ``Gaussian2D`` density; the calibration centre first.
    """
    rows, cols = shape
    device = log_exponentials.device
    std_rows, std_cols = (6 * math.sqrt(max(size // 2, 1)) for size in shape)
    row = torch.arange(rows, device=device, dtype=torch.float64)[:, None] - rows // 2
    col = torch.arange(cols, device=device, dtype=torch.float64)[None, :] - cols // 2
    dist = row**2 / (2 * std_rows**2) + col**2 / (2 * std_cols**2)  # H, W
    centre = torch.from_numpy(_centre_2d(shape, center)).to(device)
    keys = (log_exponentials + dist).masked_fill(centre, -math.inf).flatten(1)  # B, H W
    order = torch.argsort(keys, dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(rows * cols, device=device).expand_as(order))
    budgets = torch.from_numpy(_budgets(rows * cols)).to(device)
    return torch.bucketize(rank, budgets, right=True).to(torch.int8).view(-1, rows, cols)


def _fresh_gaussian_levels(
    shape: tuple[int, int], center: float, count: int, generator: torch.Generator
) -> torch.Tensor:
    """Level map ``(count, H, W)`` ``int8`` of Gaussian variable density for fresh masks, faster than
    :func:`_gaussian_levels` on the same law: Efraimidis-Spirakis keys ``E / w`` in float32 (no logarithm), and each
    level's threshold by nested partial selection instead of a sort of every point.

    Non-negative float32 keys are ordered like their bit patterns, so each key becomes an integer with the point's
    index in the low 32 bits: distinct, so each threshold takes exactly its level's budget. The calibration centre's
    keys are -1, below every other.
    """
    rows, cols = shape
    device = generator.device
    std_rows, std_cols = (6 * math.sqrt(max(size // 2, 1)) for size in shape)
    row = torch.arange(rows, device=device, dtype=torch.float32)[:, None] - rows // 2
    col = torch.arange(cols, device=device, dtype=torch.float32)[None, :] - cols // 2
    inverse_weight = (row**2 / (2 * std_rows**2) + col**2 / (2 * std_cols**2)).exp().flatten()  # H W
    centre = torch.from_numpy(_centre_2d(shape, center).ravel()).to(device)
    keys = torch.empty((count, rows * cols), dtype=torch.float32, device=device).exponential_(generator=generator)
    keys = keys.mul_(inverse_weight).masked_fill_(centre, -1.0)  # B, H W
    ordered = (keys.view(torch.int32).long() << 32) | torch.arange(rows * cols, device=device)  # B, H W; distinct
    thresholds = []
    candidates = ordered
    for budget in _budgets(rows * cols)[::-1].tolist():  # R2 first: each level is selected among the next finer one
        candidates = candidates.topk(budget, dim=1, largest=False, sorted=False).values
        thresholds.append(candidates.amax(dim=1))
    thresholds = torch.stack(thresholds[::-1], dim=1)  # B, 5: the key of the last point of each level, R32 first
    return torch.searchsorted(thresholds, ordered).to(torch.int8).view(count, rows, cols)


def _spoke_first_hits(
    shape: tuple[int, int], first_angle: torch.Tensor, start: int, count: int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Index of the first of golden-angle spokes ``start ... start + count - 1`` through each pixel, ``(B, H W)``
    long, :data:`_NEVER` where none passes. ``dtype`` is that of the pixel arithmetic: float64 for the per-file
    masks (bit-identical to numpy's), float32 for fresh ones.

    Spoke ``k`` of a sample has angle ``first_angle + k * golden angle`` (in pixel units) and is a digital line through
    the centre that steps one pixel along its dominant axis, so it is 8-connected and holds each of its pixels once.
    """
    rows, cols = shape
    device = first_angle.device
    centre_row, centre_col = rows // 2, cols // 2
    index = torch.arange(start, start + count, device=device)  # S
    angles = (first_angle[:, None] + index.to(torch.float64) * _GOLDEN_ANGLE).to(dtype)  # B, S
    sin, cos = angles.sin()[..., None], angles.cos()[..., None]  # B, S, 1
    along_cols = cos.abs() >= sin.abs()
    slope = torch.where(along_cols, sin / torch.where(along_cols, cos, 1.0), 0.0)
    inverse_slope = torch.where(along_cols, 0.0, cos / torch.where(along_cols, 1.0, sin))
    step = torch.arange(max(rows, cols), device=device, dtype=dtype)  # L
    row = torch.where(along_cols, torch.round(centre_row + (step - centre_col) * slope), step)  # B, S, L
    col = torch.where(along_cols, step, torch.round(centre_col + (step - centre_row) * inverse_slope))  # B, S, L
    inside = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)
    pixels = torch.where(inside, row * cols + col, rows * cols).long().flatten(1)  # B, S L; outside -> a spare slot
    spoke = index[None, :, None].expand(angles.shape[0], count, step.shape[0]).flatten(1)  # B, S L
    hits = torch.full((angles.shape[0], rows * cols + 1), _NEVER, dtype=torch.long, device=device)
    return hits.scatter_reduce_(1, pixels, spoke, "amin")[:, :-1]


def _spokes_for(shape: tuple[int, int], center: float, first_angle: torch.Tensor) -> tuple[torch.Tensor, int]:
    """First spoke per pixel ``(B, H W)`` and the number of spokes drawn: chunks of :data:`_SPOKE_CHUNK` until the
    calibration centre and the spokes of every sample cover the R=2 budget. The cap is where golden-angle gaps (below
    2.7 pi / spokes) are narrower than one pixel at the corners, so more spokes would add nothing."""
    rows, cols = shape
    budget = int(_budgets(rows * cols)[-1])
    centre = torch.from_numpy(_centre_2d(shape, center).ravel()).to(first_angle.device)
    max_spokes = math.ceil(4 * math.pi * math.hypot(rows, cols) / 2) + _SPOKE_CHUNK
    first_spoke = torch.full((first_angle.shape[0], rows * cols), _NEVER, dtype=torch.long, device=first_angle.device)
    num_spokes = 0
    while num_spokes < max_spokes and int((centre | (first_spoke < _NEVER)).sum(dim=1).min()) < budget:
        first_spoke = torch.minimum(first_spoke, _spoke_first_hits(shape, first_angle, num_spokes, _SPOKE_CHUNK))
        num_spokes += _SPOKE_CHUNK
    return first_spoke, num_spokes


@functools.lru_cache(maxsize=16)
def _fresh_spoke_count(shape: tuple[int, int], center: float) -> int:
    """Spokes that cover the R=2 budget whatever the first angle: the most over 32 first angles, plus an eighth and 8
    (the count varies by a few spokes with the angle). Fresh masks draw this many up front instead of checking the
    coverage on the host, and no more: the spokes are most of their cost."""
    angles = torch.linspace(0, math.pi, 33, dtype=torch.float64)[:-1]
    first_spoke, num_spokes = _spokes_for(shape, center, angles)
    centre = torch.from_numpy(_centre_2d(shape, center).ravel())
    spoke_bin = torch.where(centre | (first_spoke == _NEVER), num_spokes, first_spoke)  # B, H W
    new_points = torch.zeros(len(angles), num_spokes + 1, dtype=torch.long).scatter_add_(
        1, spoke_bin, torch.ones_like(spoke_bin)
    )
    covered = new_points[:, :-1].cumsum(dim=1) + centre.sum()  # B, K: centre and the first k + 1 spokes
    needed = int((covered < int(_budgets(shape[0] * shape[1])[-1])).sum(dim=1).max()) + 1
    return min(needed + needed // 8 + 8, num_spokes)


def _radial_levels(
    shape: tuple[int, int],
    center: float,
    first_angle: torch.Tensor,
    top_up_rank: torch.Tensor,
    first_spoke: torch.Tensor,
    num_spokes: int,
) -> torch.Tensor:
    """Level map ``(B, H, W)`` ``int8``: golden-angle spokes added while they fit in a level's budget, then random
    points (the free points of lowest ``top_up_rank``, ``(B, H W)``) so the count is exact; the next level continues
    the same spoke sequence. ``first_spoke`` ``(B, H W)`` comes from :func:`_spoke_first_hits` for spokes ``0 ...
    num_spokes - 1``.

    The top-up of a level is smaller than the new points of one spoke (else that spoke would have fit), so at most
    ``max(H, W)`` points: a partial selection instead of a sort of every point. The counts per level come from
    per-spoke tallies (``(B, K + 1)``), and the levels are assigned once at the end: a point's level is the first
    whose spokes reach it, or the level that topped it up, whichever is coarser (a topped-up point is one no spoke of
    its level reaches), 0 in the calibration centre.
    """
    rows, cols = shape
    batch, device = first_angle.shape[0], first_angle.device
    centre = torch.from_numpy(_centre_2d(shape, center).ravel()).to(device)
    spoke_bin = torch.where(first_spoke < _NEVER, first_spoke, num_spokes)  # B, H W; num_spokes: no spoke
    new_points = torch.zeros(batch, num_spokes + 1, dtype=torch.long, device=device)
    new_points.scatter_add_(1, torch.where(centre, num_spokes, spoke_bin), torch.ones_like(spoke_bin))
    # covered[:, k] = |centre ∪ first k spokes|
    covered = torch.cat([new_points.new_zeros(batch, 1), new_points[:, :-1].cumsum(dim=1)], dim=1) + centre.sum()
    spoke_key = spoke_bin.masked_fill(centre, -1)  # a point is free for spokes < k when spoke_key >= k (not centre)

    topped_level = torch.full((batch, rows * cols), FULLY_SAMPLED, dtype=torch.int8, device=device)
    random_points = torch.zeros(batch, num_spokes + 1, dtype=torch.long, device=device)  # topped-up points per bin
    spokes_per_level = []
    length = min(max(rows, cols), rows * cols)
    for index, budget in enumerate(_budgets(rows * cols).tolist()):
        # Points added at random earlier and crossed by a later spoke are counted once: the sampled count after k
        # spokes is covered[k] plus the random points no spoke among the first k reaches; it grows with k.
        beyond = random_points.flip(1).cumsum(dim=1).flip(1)  # B, K + 1: random points first reached at k or never
        sampled = covered + beyond
        limit = torch.full((batch, 1), budget, dtype=torch.long, device=device)
        spokes = torch.searchsorted(sampled, limit, right=True) - 1  # B, 1
        spokes_per_level.append(spokes)
        missing = budget - sampled.gather(1, spokes)  # B, 1
        free = (spoke_key >= spokes) & (topped_level == FULLY_SAMPLED)
        candidates = torch.where(free, top_up_rank, math.inf)
        first = candidates.topk(length, dim=1, largest=False, sorted=True).indices  # B, L
        take = torch.arange(length, device=device)[None] < missing  # B, L
        topped_level.scatter_(1, first, torch.where(take, index, topped_level.gather(1, first)).to(torch.int8))
        random_points.scatter_add_(1, spoke_bin.gather(1, first), take.long())
    spoke_level = torch.searchsorted(torch.cat(spokes_per_level, dim=1), spoke_bin, right=True)  # B, H W
    levels = torch.minimum(spoke_level.to(torch.int8), topped_level).masked_fill_(centre, 0)
    return levels.view(batch, rows, cols)


def _build_level_map(family: str, shape: tuple[int, int], seed: Seed, center: float) -> np.ndarray:
    """The level map of one seed: numpy's generator draws the random inputs (DIRECT's per-file seeding), the shared
    torch construction of each family turns them into levels on the CPU."""
    rows, cols = shape
    rng = np.random.default_rng(seed)
    if family in ("cartesian_y", "cartesian_x"):
        num_lines = cols if family == "cartesian_y" else rows
        _check_size(family, num_lines, "columns" if family == "cartesian_y" else "rows")
        phases = [int(rng.integers(total)) for total in _cartesian_phase_ranges(num_lines, center)]
        lines = _cartesian_line_levels(num_lines, center, torch.tensor([phases])).numpy()[0]
        return np.broadcast_to(lines[None, :] if family == "cartesian_y" else lines[:, None], shape).copy()
    _check_size(family, rows * cols, "points")
    if family == "gaussian2d":
        with np.errstate(divide="ignore"):
            log_exponentials = np.log(rng.standard_exponential(shape))
        return _gaussian_levels(shape, center, torch.from_numpy(log_exponentials)[None]).numpy()[0]
    first_angle = torch.tensor([rng.uniform(0, math.pi)], dtype=torch.float64)
    top_up_rank = np.empty(rows * cols, dtype=np.float64)
    top_up_rank[rng.permutation(rows * cols)] = np.arange(rows * cols)  # position of each point in the top-up order
    first_spoke, num_spokes = _spokes_for(shape, center, first_angle)
    levels = _radial_levels(shape, center, first_angle, torch.from_numpy(top_up_rank)[None], first_spoke, num_spokes)
    return levels.numpy()[0]


def fresh_level_maps(
    families: Sequence[str],
    shape: Sequence[int],
    center_fraction: float | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """Level maps ``(B, H, W)`` ``int8`` of new random acquisitions, one per entry of ``families``, built on the
    generator's device in one vectorised pass per family (training with a fresh mask per slice and step).

    The construction is that of :func:`level_map` (the same functions), with torch's ``generator`` instead of
    numpy's seeded one as the source of the random inputs: the masks have the structure of the per-file masks
    (nested levels, exact budgets, the same calibration centre and sampling density) but not numpy's random stream.
    Nothing is read back to the host, so on a GPU the call queues its kernels and returns.

    Parameters
    ----------
    families : sequence of str
        One family (or DIRECT masking name) per sample, length B.
    shape : sequence of two ints
        ``(H, W)``.
    center_fraction : float or int, optional
        DIRECT-style calibration centre; default 1/64.
    generator : torch.Generator
        Source of randomness; the maps are built on its device.
    """
    shape, center = _shape_2d(shape), _center_value(center_fraction)
    rows, cols = shape
    device = generator.device
    families = [family_of(family) for family in families]
    maps = torch.empty((len(families), rows, cols), dtype=torch.int8, device=device)
    for family in dict.fromkeys(families):
        members = [index for index, name in enumerate(families) if name == family]
        count = len(members)
        if family in ("cartesian_y", "cartesian_x"):
            num_lines = cols if family == "cartesian_y" else rows
            _check_size(family, num_lines, "columns" if family == "cartesian_y" else "rows")
            ranges = torch.tensor(
                [max(total, 1) for total in _cartesian_phase_ranges(num_lines, center)], device=device
            )
            uniform = torch.rand((count, len(LEVELS)), generator=generator, device=device, dtype=torch.float64)
            lines = _cartesian_line_levels(num_lines, center, (uniform * ranges).long())  # B', N
            levels = lines[:, None, :] if family == "cartesian_y" else lines[:, :, None]
            levels = levels.expand(count, rows, cols)
        else:
            _check_size(family, rows * cols, "points")
            if family == "gaussian2d":
                levels = _fresh_gaussian_levels(shape, center, count, generator)
            else:
                first_angle = torch.rand(count, generator=generator, device=device, dtype=torch.float64) * math.pi
                # a random order of the points (ties, rare in float32, leave the counts exact)
                top_up_rank = torch.rand((count, rows * cols), generator=generator, device=device)
                num_spokes = _fresh_spoke_count(shape, center)
                first_spoke = torch.full((count, rows * cols), _NEVER, dtype=torch.long, device=device)
                for start in range(0, num_spokes, _SPOKE_CHUNK):
                    chunk = min(_SPOKE_CHUNK, num_spokes - start)
                    hits = _spoke_first_hits(shape, first_angle, start, chunk, torch.float32)
                    first_spoke = torch.minimum(first_spoke, hits)
                levels = _radial_levels(shape, center, first_angle, top_up_rank, first_spoke, num_spokes)
        maps[torch.tensor(members, device=device)] = levels
    return maps


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

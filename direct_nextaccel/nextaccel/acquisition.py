"""From one fully sampled DIRECT batch to the six-level acquisition hierarchy (R = 32, 16, 8, 4, 2, FS).

Every NextAccel engine (tokenizer, transformer, teacher, distillation) builds its inputs here, so all of them see the
same masks, the same coil combination and the same mapping between DIRECT's matrix and the model's working size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch

from direct_nextaccel.core.images import file_seed, sense_adjoint
from direct_nextaccel.core.intensity import reference_scale
from direct_nextaccel.masks.nested import (
    LEVELS,
    family_index,
    fresh_level_maps,
    level_map,
    shared_calibration_mask,
)

NUM_LEVELS = len(LEVELS) + 1  # the five accelerations and the fully sampled data


def choose_families(filenames: Sequence[str], families: Sequence[str], generator: torch.Generator | None) -> list[str]:
    """One mask family per sample: random when a generator is given (training), else fixed by the file name.

    Parameters
    ----------
    filenames : sequence of str
        File names of the batch, length B.
    families : sequence of str
        Families to draw from, each in :data:`direct_nextaccel.masks.nested.FAMILIES`.
    generator : torch.Generator or None
        Source of randomness for training; None gives a deterministic choice per file.

    Returns
    -------
    list of str
        Length B.
    """
    for family in families:
        family_index(family)
    if len(families) == 1:
        return [families[0]] * len(filenames)
    if generator is not None:
        picks = torch.randint(len(families), (len(filenames),), generator=generator).tolist()
    else:
        picks = [sum(file_seed(name)) % len(families) for name in filenames]
    return [families[i] for i in picks]


FILE_MASK_CACHE_BYTES = 2**30
"""Bound of the per-file level maps kept on each device (1 GiB: every file of fastMRI brain's training set at
640 x 320 for the 2D families; a Cartesian map keeps one line)."""


class _FileLevelMaps:
    """The per-file level maps ``(H, W)`` ``int8`` on the device, least recently used first out past a byte bound.

    A file's map depends only on (family, matrix, file name, centre): built once by :func:`level_map` (DIRECT's
    per-file seeding, bit-identical to the mask DIRECT's ``Nested*`` masking gives), it is reused every later step
    instead of being rebuilt with numpy on the training path.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.maps: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def get(self, family: str, shape: tuple[int, int], filename: str, center: float | None, device) -> torch.Tensor:
        key = (family, shape, str(filename), center, device)
        levels = self.maps.get(key)
        if levels is not None:
            self.maps.move_to_end(key)
            return levels
        full = level_map(family, shape, seed=file_seed(filename), center_fraction=center)
        # A Cartesian map repeats one line: keep the line and a broadcast view of it.
        if (full == full[:1]).all():
            levels = torch.from_numpy(full[:1].copy()).to(device).expand(shape)
        elif (full == full[:, :1]).all():
            levels = torch.from_numpy(full[:, :1].copy()).to(device).expand(shape)
        else:
            levels = torch.from_numpy(full).to(device)
        self.maps[key] = levels
        self.bytes += levels.untyped_storage().nbytes()
        while self.bytes > self.max_bytes and len(self.maps) > 1:
            _, dropped = self.maps.popitem(last=False)
            self.bytes -= dropped.untyped_storage().nbytes()
        return levels


_FILE_MAPS = _FileLevelMaps(FILE_MASK_CACHE_BYTES)


def level_masks(
    filenames: Sequence[str],
    families: Sequence[str],
    shape: tuple[int, int],
    center_fraction: float | None,
    seeds: Sequence | torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Nested masks of all six levels for each sample: DIRECT's per-file masks, or fresh ones during training.

    Per-file masks (``seeds`` None) are seeded from the file name like DIRECT's own masks and kept on the device
    after a file's first step (a bounded cache, :data:`FILE_MASK_CACHE_BYTES`). Fresh masks are built by
    :func:`~direct_nextaccel.masks.nested.fresh_level_maps`, vectorised over the batch on ``device`` with nothing
    read back to the host.

    Parameters
    ----------
    filenames, families : sequence of str
        Per sample, length B.
    shape : tuple of int
        (H, W) of the k-space.
    center_fraction : float or None
        Calibration centre, as the mask functions take it.
    seeds : torch.Generator or sequence, optional
        Fresh masks: the generator to draw them from (on ``device``), or one seed per sample (ints or tuples of
        ints), which seed one generator on ``device`` for the batch.
    device : torch.device or str, optional
        Where the masks are built and returned; default the CPU.

    Returns
    -------
    torch.Tensor
        Boolean, shape (B, 6, H, W); index 0 is R = 32, index 5 the fully sampled data.
    """
    device = torch.device("cpu" if device is None else device)
    shape = (int(shape[0]), int(shape[1]))
    if seeds is None:
        maps = torch.stack(
            [
                _FILE_MAPS.get(family, shape, name, center_fraction, device)
                for name, family in zip(filenames, families, strict=True)
            ]
        )
    else:
        if not isinstance(seeds, torch.Generator):
            if len(seeds) != len(families):
                raise ValueError(f"{len(seeds)} mask seeds for {len(families)} samples")
            entropy = [int(value) for seed in seeds for value in np.atleast_1d(seed)]
            seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) % 2**63
            seeds = torch.Generator(device).manual_seed(seed)
        maps = fresh_level_maps(families, shape, center_fraction, seeds).to(device)
    levels = torch.arange(NUM_LEVELS, dtype=torch.int8, device=device)
    return maps[:, None] <= levels[None, :, None, None]


def hierarchy_images(
    kspace: torch.Tensor, sensitivity_map: torch.Tensor, masks: torch.Tensor, backward_operator: Callable
) -> torch.Tensor:
    """The six coil-combined complex images of one acquisition, channels first.

    Returns
    -------
    torch.Tensor
        Shape (B, 6, 2, H, W): real and imaginary channels per level.
    """
    images = [
        sense_adjoint(kspace, sensitivity_map, masks[:, level], backward_operator) for level in range(masks.shape[1])
    ]
    return torch.stack(images, dim=1).permute(0, 1, 4, 2, 3).contiguous()


def calibration_scale(
    kspace: torch.Tensor,
    center_fraction: float | None,
    backward_operator: Callable,
    filenames: Sequence[str] | None = None,
    slice_numbers: Sequence[int] | torch.Tensor | None = None,
    check: bool = True,
) -> torch.Tensor:
    """The reference scale ``s`` per slice (B,), from the calibration centre every nested family shares.

    The fully sampled k-space and any family's R = 32 input hold the same samples there, so training and inference,
    and every family, get the same scale (:mod:`direct_nextaccel.core.intensity`).

    Parameters
    ----------
    kspace : torch.Tensor
        (B, C, H, W, 2), fully sampled or masked by a nested mask.
    center_fraction : float or None
        The masks' calibration centre value.
    backward_operator : callable
        DIRECT's inverse FFT.
    filenames, slice_numbers : sequence, optional
        To name a slice whose scale is zero or not finite.
    check : bool
        Refuse such a slice here (one read of the device); the engines check it with their inputs instead
        (:meth:`~direct_nextaccel.core.engine.PluginEngine.reference_scale`).

    Returns
    -------
    torch.Tensor
        (B,).
    """
    region = torch.from_numpy(shared_calibration_mask(tuple(kspace.shape[2:4]), center_fraction))
    return reference_scale(kspace, region, backward_operator, filenames, slice_numbers, check)


def intensity_factor(
    kspace: torch.Tensor,
    center_fraction: float | None,
    gain: torch.Tensor | float,
    backward_operator: Callable,
    filenames: Sequence[str] | None = None,
    slice_numbers: Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """``gain / s`` per slice (B,), ``s`` the checked :func:`calibration_scale` (same parameters; ``gain`` the
    tokenizer's ``intensity_gain``)."""
    return gain / calibration_scale(kspace, center_fraction, backward_operator, filenames, slice_numbers)


def family_labels(families: Sequence[str], device: torch.device) -> torch.Tensor:
    """Integer FiLM labels of the families, shape (B,)."""
    return torch.tensor([family_index(f) for f in families], dtype=torch.long, device=device)


__all__ = [
    "FILE_MASK_CACHE_BYTES",
    "NUM_LEVELS",
    "calibration_scale",
    "choose_families",
    "family_labels",
    "hierarchy_images",
    "intensity_factor",
    "level_masks",
]

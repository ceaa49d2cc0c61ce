"""From one fully sampled DIRECT batch to the six-level acquisition hierarchy (R = 32, 16, 8, 4, 2, FS).

Every NextAccel engine (tokenizer, transformer, teacher, distillation) builds its inputs here, so all of them see the
same masks, the same coil combination and the same mapping between DIRECT's matrix and the model's working size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from direct_nextaccel.core.images import file_seed, sense_adjoint
from direct_nextaccel.core.intensity import reference_scale
from direct_nextaccel.masks.nested import LEVELS, family_index, level_map, shared_calibration_mask

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


def level_masks(
    filenames: Sequence[str],
    families: Sequence[str],
    shape: tuple[int, int],
    center_fraction: float | None,
    seeds: Sequence | None = None,
) -> torch.Tensor:
    """Nested masks of all six levels for each sample, seeded from its file name like DIRECT's own masks.

    Parameters
    ----------
    filenames, families : sequence of str
        Per sample, length B.
    shape : tuple of int
        (H, W) of the k-space.
    center_fraction : float or None
        Calibration centre, as the mask functions take it.
    seeds : sequence, optional
        One mask seed per sample instead of the file seeds (fresh masks during training).

    Returns
    -------
    torch.Tensor
        Boolean, shape (B, 6, H, W); index 0 is R = 32, index 5 the fully sampled data.
    """
    seeds = [file_seed(name) for name in filenames] if seeds is None else seeds
    maps = [
        level_map(family, shape, seed=seed, center_fraction=center_fraction)
        for seed, family in zip(seeds, families, strict=True)
    ]
    levels = np.arange(NUM_LEVELS)[None, :, None, None]
    return torch.from_numpy(np.stack(maps)[:, None] <= levels)


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


def intensity_factor(
    kspace: torch.Tensor,
    center_fraction: float | None,
    gain: torch.Tensor | float,
    backward_operator: Callable,
    filenames: Sequence[str] | None = None,
    slice_numbers: Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """``gain / s`` per slice, ``s`` from the calibration centre every nested family shares.

    The fully sampled k-space and any family's R = 32 input hold the same samples there, so training and inference,
    and every family, get the same factor (:mod:`direct_nextaccel.core.intensity`).

    Parameters
    ----------
    kspace : torch.Tensor
        (B, C, H, W, 2), fully sampled or masked by a nested mask.
    center_fraction : float or None
        The masks' calibration centre value.
    gain : torch.Tensor or float
        The tokenizer's ``intensity_gain``.
    backward_operator : callable
        DIRECT's inverse FFT.
    filenames, slice_numbers : sequence, optional
        To name a slice whose scale is zero or not finite.

    Returns
    -------
    torch.Tensor
        (B,).
    """
    region = torch.from_numpy(shared_calibration_mask(tuple(kspace.shape[2:4]), center_fraction))
    return gain / reference_scale(kspace, region, backward_operator, filenames, slice_numbers)


def family_labels(families: Sequence[str], device: torch.device) -> torch.Tensor:
    """Integer FiLM labels of the families, shape (B,)."""
    return torch.tensor([family_index(f) for f in families], dtype=torch.long, device=device)


__all__ = [
    "NUM_LEVELS",
    "choose_families",
    "family_labels",
    "hierarchy_images",
    "intensity_factor",
    "level_masks",
]

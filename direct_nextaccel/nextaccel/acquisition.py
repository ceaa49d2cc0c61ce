"""From one fully sampled DIRECT batch to the six-level acquisition hierarchy (R = 32, 16, 8, 4, 2, FS).

Every NextAccel engine (tokenizer, transformer, teacher, distillation) builds its inputs here, so all of them see the
same masks, the same coil combination and the same mapping between DIRECT's matrix and the model's working size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from direct_nextaccel.masks.nested import LEVELS, family_index, level_map

NUM_LEVELS = len(LEVELS) + 1  # the five accelerations and the fully sampled data


def file_seed(filename: str) -> tuple[int, ...]:
    """DIRECT's per-file mask seed (``CreateSamplingMask(use_seed=True)``): every slice of a file shares it."""
    return tuple(map(ord, str(filename)))


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


def sense_adjoint(
    kspace: torch.Tensor, sensitivity_map: torch.Tensor, mask: torch.Tensor, backward_operator: Callable
) -> torch.Tensor:
    """Coil-combined image of masked k-space: sum over coils of conj(S_c) * IFFT(mask * y_c).

    Parameters
    ----------
    kspace : torch.Tensor
        Fully sampled k-space, shape (B, C, H, W, 2).
    sensitivity_map : torch.Tensor
        Shape (B, C, H, W, 2).
    mask : torch.Tensor
        Boolean, shape (B, H, W).
    backward_operator : callable
        DIRECT's inverse FFT (the engine's ``backward_operator``).

    Returns
    -------
    torch.Tensor
        Complex image, shape (B, H, W, 2).
    """
    from direct.data import transforms as T

    masked = kspace * mask[:, None, :, :, None].to(kspace.dtype)
    coil_images = backward_operator(masked, dim=(2, 3))
    return T.reduce_operator(coil_images, sensitivity_map, dim=1)


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


def center_crop_or_pad(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre-crop and/or zero-pad the last two axes to ``size``.

    This is the explicit map between DIRECT's matrix and the model's working size. Applying it with the original
    size afterwards restores the original grid: the cropped border comes back as zeros, which is why every method
    in a benchmark is scored on the same centre region (``validation.crop: header``) against the same target.

    Parameters
    ----------
    image : torch.Tensor
        Shape (..., H, W).
    size : tuple of int
        Target (H', W').

    Returns
    -------
    torch.Tensor
        Shape (..., H', W').
    """
    out_h, out_w = size
    height, width = image.shape[-2:]
    pad_h, pad_w = max(out_h - height, 0), max(out_w - width, 0)
    if pad_h or pad_w:
        image = torch.nn.functional.pad(image, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        height, width = image.shape[-2:]
    top, left = (height - out_h) // 2, (width - out_w) // 2
    return image[..., top : top + out_h, left : left + out_w]


def family_labels(families: Sequence[str], device: torch.device) -> torch.Tensor:
    """Integer FiLM labels of the families, shape (B,)."""
    return torch.tensor([family_index(f) for f in families], dtype=torch.long, device=device)


__all__ = [
    "NUM_LEVELS",
    "center_crop_or_pad",
    "choose_families",
    "family_labels",
    "file_seed",
    "hierarchy_images",
    "level_masks",
    "sense_adjoint",
]

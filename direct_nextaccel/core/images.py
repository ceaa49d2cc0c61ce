"""Image helpers every engine shares: DIRECT's file seed, the SENSE adjoint and the working-size map.

The engines of both methods form their images here, so they agree on the coil combination (the adjoint of DIRECT's
SENSE model, ``sum_c conj(S_c) IFFT(y_c)``) and on the map between DIRECT's matrix and the model's working size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["center_crop_or_pad", "coil_combined", "file_seed", "sense_adjoint"]


def file_seed(filename: str) -> tuple[int, ...]:
    """DIRECT's per-file mask seed (``CreateSamplingMask(use_seed=True)``): every slice of a file shares it."""
    return tuple(map(ord, str(filename)))


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


def coil_combined(kspace: torch.Tensor, sensitivity_map: torch.Tensor, backward_operator: Callable) -> torch.Tensor:
    """Coil-combined complex image of (fully sampled or already masked) k-space, channels first.

    Parameters
    ----------
    kspace : torch.Tensor
        (B, C, H, W, 2).
    sensitivity_map : torch.Tensor
        (B, C, H, W, 2).
    backward_operator : callable
        DIRECT's inverse FFT (the engine's).

    Returns
    -------
    torch.Tensor
        (B, 2, H, W).
    """
    from direct.data import transforms as T

    coil_images = backward_operator(kspace, dim=(2, 3))
    return T.reduce_operator(coil_images, sensitivity_map, dim=1).permute(0, 3, 1, 2)


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

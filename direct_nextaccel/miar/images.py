"""From a DIRECT super-resolution batch to the images MIAR's models see: the HR target and the LR input.

Both engines form their images with :mod:`direct_nextaccel.core.images` (the adjoint of DIRECT's SENSE model with its
estimated sensitivity maps, two channels real/imaginary; the ``WorkingGrid`` map to the working size, undone on
output); this module adds what only super-resolution needs.
"""

from collections.abc import Callable

import torch

from direct_nextaccel.core.images import coil_combined
from direct_nextaccel.masks.superresolution import lr_blur_kspace_weights, superresolution_mask

__all__ = ["low_resolution_image", "sr_factor_of_mask"]


def sr_factor_of_mask(sampling_mask: torch.Tensor) -> int:
    """Super-resolution factor of a batch's sampling masks (B, 1, H, W, 1), checking they are the SR centre block.

    DIRECT removes zero-padded k-space columns (fastMRI's ``padding``) from masks, so a mask may be a subset of the
    block; it may not sample anything outside it.

    Raises
    ------
    ValueError
        If a mask samples outside the ``SuperResolution`` block of the factor its row count implies.
    """
    height, width = sampling_mask.shape[2:4]
    masks = sampling_mask[:, 0, :, :, 0].bool()  # B, H, W
    rows = int(masks[0].any(dim=1).sum())
    factor = height // rows if rows else 0
    if rows == 0 or height % rows or width % factor:
        raise ValueError(f"sampling mask with {rows} of {height} rows is not a super-resolution centre block")
    expected = torch.from_numpy(superresolution_mask((height, width), factor)).to(masks.device)
    if bool((masks & ~expected).any()):
        raise ValueError(
            "sampling masks are not the k-space centre block of one super-resolution factor: MIAR needs "
            "`masking.name: SuperResolution`"
        )
    return factor


def low_resolution_image(
    masked_kspace: torch.Tensor,
    sampling_mask: torch.Tensor,
    sensitivity_map: torch.Tensor,
    backward_operator: Callable,
    blur_sigma: float = 0.0,
) -> torch.Tensor:
    """The super-resolution input: zero-filled coil-combined image of the centre block, optionally blurred.

    The blur (MIAR's Gaussian, kernel radius 1, ``blur_sigma`` in low-resolution pixels) multiplies the block by the
    kernel's DFT (:func:`~direct_nextaccel.masks.superresolution.lr_blur_kspace_weights`), which is the circular
    convolution of the low-resolution image with it.

    Returns
    -------
    torch.Tensor
        (B, 2, H, W) at DIRECT's matrix size.
    """
    factor = sr_factor_of_mask(sampling_mask)
    if blur_sigma > 0:
        weights = lr_blur_kspace_weights(masked_kspace.shape[2:4], factor, blur_sigma).to(masked_kspace)
        masked_kspace = masked_kspace * weights[None, None, :, :, None]
    return coil_combined(masked_kspace, sensitivity_map, backward_operator)

"""The plugin's intensity convention: one scale per slice, from k-space samples every acquisition of it shares.

DIRECT's ``normalization`` divides a slice by a percentile of its *masked* k-space, so the same slice arrives at a
scale that depends on the mask family (6-11x between Cartesian and 2D masks at R = 32), and image maxima still span
two orders of magnitude across slices. A discrete tokenizer is not scale-invariant, so the plugin's engines own the
intensity of everything their tokenizers see:

- the **reference scale** ``s`` of a slice is the maximum over pixels of the root-sum-of-squares coil image of its
  k-space restricted to a *reference region*: for NextAccel the calibration centre that every nested family samples
  (:func:`direct_nextaccel.masks.nested.shared_calibration_mask`), for MIAR the low-resolution block. Inference has
  these samples in its input, every family of one acquisition has the same ones, and ``s`` needs no sensitivity map;
- every image of every level (and the target of the training losses) is multiplied by ``gain / s`` before the
  tokenizer sees it, where ``gain`` is the tokenizer's ``intensity_gain`` (chosen so that fully sampled images fall
  in VAR's [-1, 1] range), and every decoded image is multiplied by ``s / gain``, so ``direct predict`` writes, and
  DIRECT's metrics see, images at DIRECT's own scale.

``s`` is positively homogeneous of degree one in the k-space: multiplying a slice's k-space by ``c > 0`` multiplies
``s`` by ``c``, leaves every token unchanged and multiplies the output by ``c``.

A tokenizer stores its gain as the buffer :data:`GAIN_KEY`; a checkpoint without it was trained under DIRECT's
normalisation and is refused by :func:`check_convention`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "GAIN_KEY",
    "IntensityError",
    "check_convention",
    "check_scale",
    "reference_scale",
    "register_gain",
    "usable_scale",
]

GAIN_KEY = "intensity_gain"
"""Name of the tokenizer buffer holding the gain; its presence marks a checkpoint trained under this convention."""


class IntensityError(ValueError):
    """A slice whose reference scale is zero or not finite (an empty reference region, an all-zero slice)."""


def register_gain(module: torch.nn.Module, gain: float) -> None:
    """Register ``gain`` (a positive float) as the persistent buffer :data:`GAIN_KEY` of a tokenizer."""
    gain = float(gain)
    if not gain > 0 or gain == float("inf"):
        raise ValueError(f"intensity_gain {gain} must be a positive finite number")
    module.register_buffer(GAIN_KEY, torch.tensor(gain, dtype=torch.float32))


def check_convention(state_dict: Mapping[str, Any], what: str, prefix: str = "") -> None:
    """Refuse a tokenizer state dict saved before the plugin's intensity convention.

    Parameters
    ----------
    state_dict : Mapping
        The tokenizer's saved state.
    what : str
        The file or config key it came from, for the message.
    prefix : str
        Key prefix of the tokenizer inside ``state_dict`` (``"tokenizer."`` inside a MIAR checkpoint).

    Raises
    ------
    ValueError
        If the state has no ``intensity_gain``.
    """
    if f"{prefix}{GAIN_KEY}" not in state_dict:
        raise ValueError(
            f"{what} was trained under DIRECT's intensity normalisation (it has no '{prefix}{GAIN_KEY}'): the "
            "plugin's engines now scale every slice by its reference scale (direct_nextaccel.core.intensity), so "
            "retrain this tokenizer"
        )


def reference_scale(
    kspace: torch.Tensor,
    region: torch.Tensor,
    backward_operator,
    filenames: Sequence[str] | None = None,
    slice_numbers: Sequence[int] | torch.Tensor | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Maximum of the root-sum-of-squares coil image of the k-space inside ``region``, one value per slice.

    Parameters
    ----------
    kspace : torch.Tensor
        Multi-coil k-space (B, C, H, W, 2), fully sampled or masked; only samples inside ``region`` are read.
    region : torch.Tensor
        Boolean reference region, (H, W) shared by the batch or (B, H, W).
    backward_operator : callable
        DIRECT's inverse FFT (the engine's ``backward_operator``), called with ``dim=(2, 3)``.
    filenames, slice_numbers : sequence, optional
        The batch's ``filename`` and ``slice_no``, to name an offending slice.
    check : bool
        Refuse a zero or non-finite scale here (:func:`check_scale`, one read of the device). The engines pass
        False and fold :func:`usable_scale` into their inputs' one finiteness read instead.

    Returns
    -------
    torch.Tensor
        Float32 (B,), positive and finite when checked.

    Raises
    ------
    IntensityError
        Naming the file and slice whose scale is zero or not finite.
    """
    if region.ndim == 2:
        region = region[None]
    weights = region.to(device=kspace.device, dtype=kspace.dtype)[:, None, :, :, None]  # B|1, 1, H, W, 1
    coil_images = backward_operator(kspace * weights, dim=(2, 3)).float()  # B, C, H, W, 2
    rss = coil_images.square().sum(dim=(1, 4)).sqrt()  # B, H, W
    scale = rss.flatten(1).amax(dim=1)
    if check and not bool(usable_scale(scale).all()):
        check_scale(scale, filenames, slice_numbers)
    return scale


def usable_scale(scale: torch.Tensor) -> torch.Tensor:
    """Bool (B,): which reference scales are positive and finite, computed on the device without reading it."""
    return torch.isfinite(scale) & (scale > 0)


def check_scale(
    scale: torch.Tensor,
    filenames: Sequence[str] | None = None,
    slice_numbers: Sequence[int] | torch.Tensor | None = None,
) -> None:
    """Raise :class:`IntensityError` naming the first slice whose reference scale (B,) is zero or not finite.

    Reads the device; called once a fused flag (:func:`usable_scale`) has said that a slice is bad.
    """
    bad = ~usable_scale(scale)
    if not bool(bad.any()):
        return
    index = int(bad.nonzero()[0])
    name = filenames[index] if filenames is not None else f"batch index {index}"
    slice_no = slice_numbers[index] if slice_numbers is not None else "?"
    slice_no = int(slice_no) if isinstance(slice_no, torch.Tensor) else slice_no
    raise IntensityError(
        f"{name} slice {slice_no}: reference scale {float(scale[index])} (k-space inside the reference region is "
        f"{'all zero' if float(scale[index]) == 0 else 'not finite'}): the plugin cannot normalise this slice"
    )

"""Super-resolution as a DIRECT sampling mask: a low-resolution acquisition is the centre of k-space.

An MRI scan at 1/f of the resolution per axis measures only the central ``(H/f) x (W/f)`` block of the k-space of
the full-resolution scan. :class:`SuperResolutionMaskFunc` keeps exactly that block, so DIRECT's ordinary pipeline
(``masked_kspace``, ``sampling_mask``, sensitivity estimation from the block as calibration region, normalisation)
turns a fully sampled dataset into a super-resolution task that any DIRECT model can be trained on. The zero-filled
reconstruction of the mask is the k-space zero-padding (sinc) upsampling of the low-resolution image, the classical
"bicubic" baseline of image-domain SR papers done the MRI way. Single-coil magnitude slices go through the same path.

YAML::

    masking:
      name: SuperResolution
      accelerations: [16]  # 4 x 4: the factor per axis is the square root

The block is centred on the DC sample (index ``N // 2`` under DIRECT's centred FFT) and starts at
``N // 2 - (N / f) // 2``, so its own DC sits at its index ``(N / f) // 2``, the centred-FFT convention of the
low-resolution grid: the centred inverse FFT of the block *is* the low-resolution image.

:func:`lr_blur_kspace_weights` gives the optional Gaussian blur of the low-resolution image (MIAR's "kernel radius 1")
as what it is in k-space: a multiplication of the block by the discrete Fourier transform of the 3-tap kernel.
"""

import math
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
import torch
from direct.common.subsample import BaseMaskFunc, temp_seed
from direct.types import MaskFuncMode, RangeMode

__all__ = [
    "SuperResolutionMaskFunc",
    "centre_block",
    "check_sr_factor",
    "lr_blur_kspace_weights",
    "superresolution_mask",
]


def check_sr_factor(factor: object, shape: Sequence[int]) -> int:
    """Return ``factor`` as an int, or raise a one-line ValueError naming it when it does not divide ``shape``.

    Parameters
    ----------
    factor : object
        Super-resolution factor per axis, an integer >= 1.
    shape : sequence of int
        The k-space matrix (H, W).
    """
    if isinstance(factor, bool) or not isinstance(factor, Integral) or factor < 1:
        raise ValueError(f"super-resolution factor {factor!r} must be an integer >= 1")
    rows, cols = int(shape[0]), int(shape[1])
    if rows % factor or cols % factor:
        raise ValueError(f"super-resolution factor {factor} does not divide the {rows} x {cols} k-space matrix")
    return int(factor)


def centre_block(shape: Sequence[int], factor: int) -> tuple[slice, slice]:
    """Row and column slices of the central ``(H/f) x (W/f)`` k-space block, centred on the DC sample."""
    factor = check_sr_factor(factor, shape)
    slices = []
    for size in shape[:2]:
        kept = int(size) // factor
        start = int(size) // 2 - kept // 2
        slices.append(slice(start, start + kept))
    return slices[0], slices[1]


def superresolution_mask(shape: Sequence[int], factor: int) -> np.ndarray:
    """Boolean ``(H, W)`` mask of the central ``(H/f) x (W/f)`` block."""
    mask = np.zeros((int(shape[0]), int(shape[1])), dtype=bool)
    mask[centre_block(shape, factor)] = True
    return mask


def lr_blur_kspace_weights(shape: Sequence[int], factor: int, sigma: float) -> torch.Tensor:
    """k-space weights ``(H, W)`` that blur the low-resolution image with a 3 x 3 Gaussian (kernel radius 1).

    The kernel lives on the low-resolution grid (``n = N / f`` pixels per axis): taps ``(a, 1, a) / (1 + 2a)`` with
    ``a = exp(-1 / (2 sigma^2))`` per axis, separable. Circular convolution of the low-resolution image with it is
    multiplication of its k-space by the kernel's DFT, ``(1 + 2a cos(2 pi k / n)) / (1 + 2a)`` at frequency ``k``
    (``k = index - N // 2``), which is what these weights hold on the whole grid (they are only ever applied to the
    centre block). ``sigma = 0.8`` is OpenCV's default for a 3 x 3 kernel.

    Parameters
    ----------
    shape : sequence of int
        The k-space matrix (H, W).
    factor : int
        Super-resolution factor per axis.
    sigma : float
        Standard deviation in low-resolution pixels, > 0.

    Returns
    -------
    torch.Tensor
        float32 ``(H, W)``, 1 at DC.
    """
    factor = check_sr_factor(factor, shape)
    if not isinstance(sigma, Real) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"lr_blur_sigma {sigma!r} must be a positive number (0 switches the blur off in the engine)")
    side = math.exp(-1.0 / (2.0 * float(sigma) ** 2))
    responses = []
    for size in shape[:2]:
        frequency = torch.arange(int(size), dtype=torch.float64) - int(size) // 2
        low_res = int(size) // factor
        responses.append((1.0 + 2.0 * side * torch.cos(2.0 * math.pi * frequency / low_res)) / (1.0 + 2.0 * side))
    return (responses[0][:, None] * responses[1][None, :]).float()


def _factor_of_acceleration(acceleration: object) -> int:
    if isinstance(acceleration, bool) or not isinstance(acceleration, Real) or acceleration < 1:
        raise ValueError(f"super-resolution acceleration {acceleration!r} must be a number >= 1 (16 for 4 x 4)")
    factor = round(math.sqrt(float(acceleration)))
    if factor * factor != float(acceleration):
        raise ValueError(
            f"super-resolution acceleration {acceleration!r} is not the square of an integer factor per axis "
            "(16 for 4 x 4): set sr_factor"
        )
    return factor


class SuperResolutionMaskFunc(BaseMaskFunc):
    """DIRECT mask keeping the central ``(H/f) x (W/f)`` k-space block (DIRECT name ``SuperResolution``).

    Parameters
    ----------
    accelerations : sequence of numbers
        Fractions of k-space removed, ``f * f`` for factor ``f`` per axis (DIRECT requires the key; it is what DIRECT
        stores as the sample's ``acceleration``). Several values draw one per call like DIRECT's discrete mode.
    center_fractions : sequence of numbers, optional
        Ignored: the whole acquisition is the k-space centre, which is also the calibration region DIRECT estimates
        sensitivities from (``return_acs`` gives the same block). DIRECT's typed ``inference`` config always passes
        its default (0.1), so the key cannot be refused.
    range_mode : RangeMode
        Only ``RangeMode.DISCRETE``.
    mode : MaskFuncMode
        Only ``MaskFuncMode.STATIC``.
    sr_factor : int, optional
        Factor per axis; then every acceleration must be ``sr_factor ** 2``. Without it the factor is the square root
        of the drawn acceleration. DIRECT passes it from ``training`` and ``validation`` masking sections, but its typed
        ``inference`` section rejects unknown keys, so configs give ``accelerations`` alone.

    Raises
    ------
    ValueError
        Naming the offending value: a factor that is not an integer >= 1, an acceleration that is not its square, or
        (at call time) a factor that does not divide the matrix.
    """

    def __init__(
        self,
        accelerations: Sequence[float] = (16,),
        center_fractions: Sequence[float] | None = None,
        range_mode: RangeMode = RangeMode.DISCRETE,
        mode: MaskFuncMode = MaskFuncMode.STATIC,
        sr_factor: int | None = None,
    ) -> None:
        if MaskFuncMode.STATIC != mode:
            raise ValueError(f"mask mode {mode!r} is not supported by SuperResolution: only 'static' is")
        if RangeMode.DISCRETE != range_mode:
            raise ValueError(f"range mode {range_mode!r} is not supported by SuperResolution: only 'discrete' is")
        if isinstance(accelerations, Real) or not accelerations:
            raise ValueError(f"accelerations {accelerations!r} must be a non-empty sequence, e.g. [16] for 4 x 4")
        if sr_factor is not None:
            check_sr_factor(sr_factor, (sr_factor, sr_factor))
            for acceleration in accelerations:
                if float(acceleration) != float(sr_factor) ** 2:
                    raise ValueError(
                        f"acceleration {acceleration!r} does not match sr_factor {sr_factor}: a {sr_factor} x "
                        f"{sr_factor} super-resolution keeps 1/{sr_factor**2} of k-space (accelerations: "
                        f"[{sr_factor**2}])"
                    )
        self.factors = {float(a): sr_factor or _factor_of_acceleration(a) for a in accelerations}
        super().__init__(accelerations=list(accelerations), center_fractions=None, range_mode=range_mode, mode=mode)

    def mask_func(self, shape: Sequence[int], return_acs: bool = False, seed: object = None) -> torch.Tensor:
        """Mask of the central block for the factor of an acceleration drawn under ``seed``.

        Parameters
        ----------
        shape : sequence of ints
            ``(*, H, W, 2)``, DIRECT's k-space shape without the coil axis.
        return_acs : bool
            The calibration region, which is the same block.
        seed : None, int or sequence of ints
            Seeds the draw among several accelerations; DIRECT passes ``tuple(map(ord, filename))``.

        Returns
        -------
        torch.Tensor
            Bool ``(1, *, H, W, 1)`` with ones for the leading axes.
        """
        if len(shape) < 3:
            raise ValueError(f"shape {tuple(shape)!r} must have at least 3 dimensions (*, rows, columns, complex)")
        with temp_seed(self.rng, seed):
            acceleration = self.choose_acceleration_only()
        factor = self.factors[float(acceleration)]
        mask = superresolution_mask((shape[-3], shape[-2]), factor)
        self._last_center_fraction = 1.0 / factor  # fraction of the lines of each axis that the block holds
        return self._reshape_and_add_coil_axis(mask, shape)

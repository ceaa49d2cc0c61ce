"""Image helpers every engine shares: DIRECT's file seed, the SENSE adjoint and the working-size map.

The engines of both methods form their images here, so they agree on the coil combination (the adjoint of DIRECT's
SENSE model, ``sum_c conj(S_c) IFFT(y_c)``) and on the map between DIRECT's matrix and the model's working size
(:class:`WorkingGrid`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "WorkingGrid",
    "center_crop_or_pad",
    "coil_combined",
    "direct_batch",
    "file_seed",
    "fourier_resample",
    "sense_adjoint",
]

logger = logging.getLogger(__name__)

_LOGGED_GRIDS: set[WorkingGrid] = set()
"""Geometries already described in the log (once per process each)."""


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

    The crop starts at ``(N - n) // 2``, DIRECT's ``center_crop`` convention (``crop: header``), and padding puts the
    image at the same offset, so applying it with the original size afterwards restores the original grid with a
    cropped border as zeros. :class:`WorkingGrid` uses it for the reconstruction region only.

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


def _resample_axis(image: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Fourier-resample one axis of a real tensor to ``size`` samples (see :func:`fourier_resample`)."""
    length = image.shape[dim]
    if size == length:
        return image
    # Centred spectrum, DIRECT's convention (``ifftshift -> fft -> fftshift``): frequency f sits at index f + N // 2.
    # norm="forward" on both transforms keeps pixel values: a constant image stays the same constant.
    fft, shift, unshift = torch.fft.fft, torch.fft.fftshift, torch.fft.ifftshift
    spectrum = shift(fft(unshift(image, dim=dim), dim=dim, norm="forward"), dim=dim)
    low, high = min(size, length), max(size, length)
    start = high // 2 - low // 2  # where frequency -(low // 2) sits on the longer axis
    if size < length:  # keep frequencies -(size // 2) ... (size - 1) // 2
        kept = spectrum.narrow(dim, start, size)
        if size % 2 == 0:  # the target's Nyquist sample gets both +-size/2 of the source: real stays real
            kept = kept.clone()
            kept.narrow(dim, 0, 1).add_(spectrum.narrow(dim, start + size, 1))
        spectrum = kept
    else:  # zero-pad; an even source's Nyquist sample is split evenly between +-length/2
        shape = list(spectrum.shape)
        shape[dim] = size
        padded = spectrum.new_zeros(shape)
        padded.narrow(dim, start, length).copy_(spectrum)
        if length % 2 == 0:
            nyquist = spectrum.narrow(dim, 0, 1) / 2
            padded.narrow(dim, start, 1).copy_(nyquist)
            padded.narrow(dim, start + length, 1).copy_(nyquist)
        spectrum = padded
    return shift(torch.fft.ifft(unshift(spectrum, dim=dim), dim=dim, norm="forward"), dim=dim).real


def fourier_resample(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample the last two axes of a real tensor to ``size`` by cropping or zero-padding its centred spectrum.

    Cropping the spectrum to (h, w) gives the image a scan of the same field of view with the central (h, w) k-space
    samples would show; zero-padding is its exact right inverse (crop after pad is the identity), and pad after crop
    reproduces any image whose spectrum lies inside the kept band. Pixel values keep their scale (a constant stays
    that constant). The even-size Nyquist sample is summed on cropping and split on padding, so a real image stays
    real and the real and imaginary channels of a complex image can be resampled independently.

    Why Fourier: MR images are band-limited by their acquisition, so the natural lower-resolution image is the one of
    fewer central k-space samples. Unlike a centre crop it keeps the whole field of view; unlike bilinear or area
    resampling it is exactly invertible on what the smaller grid holds, linear (the intensity factor commutes with
    it) and free of interpolation blur below the band limit.

    Parameters
    ----------
    image : torch.Tensor
        Real, shape (..., H, W). Half precision is computed in float32 and returned in its own dtype.
    size : sequence of int
        Target (H', W').

    Returns
    -------
    torch.Tensor
        Shape (..., H', W').
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    if image.is_complex():
        raise TypeError("fourier_resample takes real tensors (complex images as real/imaginary channels)")
    work = image.float() if image.dtype in (torch.float16, torch.bfloat16) else image
    work = _resample_axis(_resample_axis(work, -2, int(size[0])), -1, int(size[1]))
    return work.to(image.dtype)


def _reconstruction_sizes(value: Any) -> set[tuple[int, int]]:
    """The (x, y) reconstruction sizes of a batch's ``reconstruction_size``: DIRECT's collated list of (B,) tensors
    ``[x, y, z]`` (on the CPU: DIRECT moves only tensor values to the device), one sample's ``(x, y, z)``, a list of
    those, or a (B, 3) tensor."""
    if isinstance(value, torch.Tensor):
        rows = value.reshape(-1, value.shape[-1]).tolist() if value.ndim else []
    elif isinstance(value, Sequence) and value and all(isinstance(v, torch.Tensor) and v.ndim == 1 for v in value):
        rows = torch.stack(list(value), dim=-1).tolist()  # B, 3
    elif isinstance(value, Sequence) and value and all(isinstance(v, Sequence | torch.Tensor) for v in value):
        rows = [[int(n) for n in v] for v in value]
    else:
        rows = [[int(v) for v in value]]
    if not rows or any(len(row) < 2 for row in rows):
        raise ValueError(f"reconstruction_size {value!r} is not (x, y[, z]) per slice")
    return {(int(row[0]), int(row[1])) for row in rows}


@dataclass(frozen=True)
class WorkingGrid:
    """The explicit, invertible map between DIRECT's matrix and a model's working size.

    ``to_working`` crops the image to the reconstruction region (the centre ``region`` of ``matrix``, DIRECT's
    ``crop: header`` convention, which removes fastMRI's readout oversampling: 640 x 320 -> 320 x 320) and then
    Fourier-resamples that region to ``working`` (:func:`fourier_resample`). ``from_working`` resamples back to the
    region and zero-pads it to the matrix, so outputs have DIRECT's matrix and DIRECT's ``crop: header`` scores the
    whole region against the same target as every other method. Nothing outside the reconstruction region is
    anatomy (it is the readout oversampling), and inside it only detail finer than the smaller grid's k-space band is
    lost: with a working size below the region ``to_working(from_working(y)) == y`` exactly and ``from_working``
    inverts ``to_working`` on every image whose spectrum lies in the working band; with a larger working size
    ``from_working(to_working(x))`` is ``x`` in the region. When matrix, region and working size agree both
    directions return their input unchanged (the same tensor).

    Attributes
    ----------
    matrix : tuple of int
        DIRECT's (H, W): the k-space and output matrix.
    region : tuple of int
        The reconstruction size (rh, rw) inside it, at most ``matrix``.
    working : tuple of int
        The model's (h, w).
    """

    matrix: tuple[int, int]
    region: tuple[int, int]
    working: tuple[int, int]

    def __post_init__(self) -> None:
        for name in ("matrix", "region", "working"):
            value = tuple(int(n) for n in getattr(self, name))
            if len(value) != 2 or min(value) < 1:
                raise ValueError(f"WorkingGrid {name} {getattr(self, name)!r} is not two positive sizes")
            object.__setattr__(self, name, value)
        if self.region[0] > self.matrix[0] or self.region[1] > self.matrix[1]:
            raise ValueError(f"reconstruction region {self.region} exceeds the matrix {self.matrix}")

    @classmethod
    def of_batch(cls, data: Mapping[str, Any], matrix: Sequence[int], working: Sequence[int]) -> WorkingGrid:
        """The grid of a DIRECT batch: its ``reconstruction_size`` (fastMRI's header recon matrix, as DIRECT's
        ``crop: header`` reads it), clipped to ``matrix``; the whole matrix when the batch has none.

        Raises
        ------
        ValueError
            If the slices of the batch have different reconstruction sizes.
        """
        matrix = (int(matrix[0]), int(matrix[1]))
        region = matrix
        if data.get("reconstruction_size") is not None:
            sizes = _reconstruction_sizes(data["reconstruction_size"])
            if len(sizes) > 1:
                raise ValueError(
                    f"the slices of one batch have different reconstruction sizes {sorted(sizes)}: batch one volume "
                    "at a time or crop the data to one size (`cropping.crop` in the dataset transforms)"
                )
            (size,) = sizes
            region = (min(size[0], matrix[0]), min(size[1], matrix[1]))
        grid = cls(matrix, region, (int(working[0]), int(working[1])))
        grid._log_once()
        return grid

    @property
    def is_identity(self) -> bool:
        return self.matrix == self.region == self.working

    def to_working(self, image: torch.Tensor) -> torch.Tensor:
        """(..., H, W) on DIRECT's matrix -> (..., h, w) at the working size (real; complex as two channels)."""
        self._check(image, self.matrix, "to_working")
        if self.is_identity:
            return image
        return fourier_resample(center_crop_or_pad(image, self.region), self.working)

    def from_working(self, image: torch.Tensor) -> torch.Tensor:
        """(..., h, w) at the working size -> (..., H, W) on DIRECT's matrix, zero outside the region."""
        self._check(image, self.working, "from_working")
        if self.is_identity:
            return image
        return center_crop_or_pad(fourier_resample(image, self.region), self.matrix)

    @staticmethod
    def _check(image: torch.Tensor, size: tuple[int, int], name: str) -> None:
        if tuple(image.shape[-2:]) != size:
            raise ValueError(f"WorkingGrid.{name} expects (..., {size[0]}, {size[1]}), got {tuple(image.shape)}")

    def _log_once(self) -> None:
        if self.is_identity or self in _LOGGED_GRIDS:
            return
        _LOGGED_GRIDS.add(self)
        logger.info(
            "DIRECT's matrix %s with reconstruction size %s maps to the working size %s: cropped to the "
            "reconstruction size, Fourier-resampled (k-space crop or zero padding), and outputs resampled back and "
            "zero-padded to the matrix.",
            self.matrix,
            self.region,
            self.working,
        )


def direct_batch(kspace: torch.Tensor, mask: torch.Tensor, filenames: Sequence[str]) -> dict[str, Any]:
    """The keys DIRECT's transforms hand an engine, from fully sampled coil k-space and a sampling mask.

    Sensitivity maps are the coils' images divided by their root-sum-of-squares (DIRECT's ``rss_estimate`` without
    an ACS restriction) and the target is that RSS image: what the speed measurements and the tests feed the engines
    without a dataset.

    Parameters
    ----------
    kspace : torch.Tensor
        Fully sampled k-space, (B, C, H, W, 2).
    mask : torch.Tensor
        Boolean sampling mask, (B, H, W).
    filenames : sequence of str
        Length B: the files the slices belong to (nested masks are seeded by them).

    Returns
    -------
    dict
        ``kspace``, ``masked_kspace`` (B, C, H, W, 2), ``sampling_mask`` (B, 1, H, W, 1), ``sensitivity_map``
        (B, C, H, W, 2), ``target`` (B, H, W), ``filename`` and ``slice_no`` (B,).
    """
    from direct.data.transforms import ifft2

    mask = mask[:, None, :, :, None]  # B, 1, H, W, 1
    coil_images = ifft2(kspace, dim=(2, 3))
    rss = coil_images.pow(2).sum(dim=(1, 4)).sqrt()
    return {
        "kspace": kspace,
        "masked_kspace": kspace * mask,
        "sampling_mask": mask,
        "sensitivity_map": coil_images / rss[:, None, :, :, None].clamp_min(1e-6),
        "target": rss,
        "filename": list(filenames),
        "slice_no": torch.arange(kspace.shape[0]),
    }

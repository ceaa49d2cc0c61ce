"""Image losses with DIRECT's loss signature, usable by every DIRECT engine through ``training.loss.losses``.

Each function is ``fn(source, target, reduction="mean", reconstruction_size=None)``, as DIRECT's
:meth:`MRIModelEngine.compute_loss_on_data` calls it with ``source = output_image`` and ``target = target``:
magnitude images (B, H, W), or (B, S, H, W) whose slices are folded into the batch. When ``reconstruction_size``
(DIRECT's collated header size, ``[x, y, z]`` tensors of shape (B,)) is given, both images are centre-cropped to
(x, y) with DIRECT's own helpers. DIRECT's losses crop only under ``training.loss.crop: header``; these functions
cannot see the configuration and crop whenever a size is passed. The loss is computed per image and reduced over
the batch by ``reduction``: ``"mean"`` or ``"sum"``.

Intensity conventions (per image, from the target only, so that the scale is not learned away):

- ``ssim_magnitude_loss``: SSIM data range = the target image's maximum.
- ``haarpsi_loss``, ``gmsd_loss``: both images divided by the target image's maximum, then clipped to [0, 1].
- ``lpips_loss`` / ``lpips_alex_loss`` (AlexNet trunk, LPIPS's default), ``lpips_vgg_loss`` (VGG16 trunk): both
  images divided by the target image's maximum and mapped to [-1, 1] (no clipping), repeated to 3 channels.

Every loss refuses NaN or Inf in either image with :class:`NonFiniteInputError`, naming the loss, the image
(source or target) and the batch indices; DIRECT does not pass file names or slice numbers to a loss.
"""

import piq
import torch
from direct.functionals import SSIMLoss
from direct.nn.mri_models import _compute_resolution, _crop_volume, _reduce_slice_dim

from direct_nextaccel.core.errors import NonFiniteError
from direct_nextaccel.losses.perceptual import lpips_network

REDUCTIONS = ("mean", "sum")
LPIPS_LOSSES = {"lpips_loss": "alex", "lpips_alex_loss": "alex", "lpips_vgg_loss": "vgg"}
"""Registered LPIPS loss name -> trunk (a key of :data:`~direct_nextaccel.losses.perceptual.LPIPS_BACKBONES`)."""


class NonFiniteInputError(NonFiniteError):
    """A plugin loss was given a NaN or Inf image (a :class:`~direct_nextaccel.core.errors.NonFiniteError`, so
    DIRECT's training loop does not save the model on the way out)."""


def _refuse_non_finite(loss: str, source: torch.Tensor, target: torch.Tensor) -> None:
    """Raise :class:`NonFiniteInputError` when either image holds a NaN or Inf, naming the batch indices."""
    if bool(torch.isfinite(source).all() & torch.isfinite(target).all()):
        return
    problems = []
    for role, tensor in (("target (the data)", target), ("source (the model's output)", source)):
        bad = ~torch.isfinite(tensor)
        if not bad.any():
            continue
        indices = bad.reshape(bad.shape[0], -1).any(dim=1).nonzero().flatten().tolist()
        where = f"batch index {indices[0]}" if len(indices) == 1 else f"batch indices {indices}"
        nan = int(torch.isnan(tensor).sum())
        problems.append(f"{role} has {nan} NaN and {int(bad.sum()) - nan} Inf values at {where}")
    raise NonFiniteInputError(f"{loss} refuses non-finite input: {'; '.join(problems)}")


def _prepare(
    loss: str,
    source: torch.Tensor,
    target: torch.Tensor,
    reduction: str,
    reconstruction_size: list | tuple | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the arguments and finiteness, fold slices into the batch and centre-crop; two (N, 1, h, w) tensors."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction {reduction!r} is not supported; use one of {REDUCTIONS}")
    if source.shape != target.shape:
        raise ValueError(f"source shape {tuple(source.shape)} differs from target shape {tuple(target.shape)}")
    if source.ndim not in (3, 4):
        raise ValueError(f"expected magnitude images (B, H, W) or (B, S, H, W), got shape {tuple(source.shape)}")
    _refuse_non_finite(loss, source, target)
    if source.ndim == 4:
        source, target = _reduce_slice_dim(source, target)
    elif source.ndim != 3:
        raise ValueError(f"expected magnitude images (B, H, W) or (B, S, H, W), got shape {tuple(source.shape)}")
    resolution = None if reconstruction_size is None else _compute_resolution("header", reconstruction_size)
    return _crop_volume(source, target, resolution=resolution)


def _reduce(per_image: torch.Tensor, reduction: str) -> torch.Tensor:
    return per_image.mean() if reduction == "mean" else per_image.sum()


def _target_max(target: torch.Tensor) -> torch.Tensor:
    """Per-image maximum of (N, 1, h, w) images, (N, 1, 1, 1), kept away from zero for blank images."""
    return target.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(target.dtype).eps)


def _full_precision(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [tensor.to(torch.promote_types(tensor.dtype, torch.float32)) for tensor in tensors]


def _unit_range(source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images divided by the target's per-image maximum and clipped to [0, 1], as piq requires."""
    scale = _target_max(target)
    return (source / scale).clamp(0.0, 1.0), (target / scale).clamp(0.0, 1.0)


def ssim_magnitude_loss(
    source: torch.Tensor,
    target: torch.Tensor,
    reduction: str = "mean",
    reconstruction_size: list | tuple | None = None,
) -> torch.Tensor:
    """``1 - SSIM`` of magnitude images, with the data range of each image taken from its target.

    DIRECT's ``ssim_loss`` uses one data range for the whole batch (the batch maximum) and only ``"mean"``; here
    image ``i`` uses ``target[i].max()`` (after cropping), so a dim slice is not judged on a bright slice's scale.
    SSIM is fastMRI's (DIRECT's :class:`~direct.functionals.SSIMLoss`: 7x7 uniform window, k1=0.01, k2=0.03),
    computed in at least float32 with autocast disabled.

    Parameters
    ----------
    source : torch.Tensor
        Reconstruction magnitude, (B, H, W) or (B, S, H, W).
    target : torch.Tensor
        Reference magnitude, same shape.
    reduction : str
        ``"mean"`` or ``"sum"`` over images.
    reconstruction_size : list or tuple, optional
        DIRECT's header reconstruction size; when given, both images are centre-cropped to it.

    Returns
    -------
    torch.Tensor
        Scalar loss, 0 for identical images.
    """
    source, target = _prepare("ssim_magnitude_loss", source, target, reduction, reconstruction_size)
    with torch.autocast(source.device.type, enabled=False):
        source, target = _full_precision(source, target)
        ssim = SSIMLoss().to(source)
        data_range = target.amax(dim=(1, 2, 3))  # N
        per_image = torch.stack(
            [ssim(source[i : i + 1], target[i : i + 1], data_range[i : i + 1]) for i in range(source.shape[0])]
        )
    return _reduce(per_image, reduction)


def haarpsi_loss(
    source: torch.Tensor,
    target: torch.Tensor,
    reduction: str = "mean",
    reconstruction_size: list | tuple | None = None,
) -> torch.Tensor:
    """``1 - HaarPSI`` (piq, no learned weights) of magnitude images.

    Both images are divided by the target image's maximum and clipped to [0, 1] (piq's data range 1): source
    values above the target's maximum get no gradient from this loss. Images must be at least 16 x 16 after
    cropping (three Haar scales).

    Parameters
    ----------
    source : torch.Tensor
        Reconstruction magnitude, (B, H, W) or (B, S, H, W).
    target : torch.Tensor
        Reference magnitude, same shape.
    reduction : str
        ``"mean"`` or ``"sum"`` over images.
    reconstruction_size : list or tuple, optional
        DIRECT's header reconstruction size; when given, both images are centre-cropped to it.

    Returns
    -------
    torch.Tensor
        Scalar loss, 0 for identical images.
    """
    source, target = _prepare("haarpsi_loss", source, target, reduction, reconstruction_size)
    with torch.autocast(source.device.type, enabled=False):
        source, target = _unit_range(*_full_precision(source, target))
        per_image = 1.0 - piq.haarpsi(source, target, reduction="none", data_range=1.0)
    return _reduce(per_image, reduction)


def gmsd_loss(
    source: torch.Tensor,
    target: torch.Tensor,
    reduction: str = "mean",
    reconstruction_size: list | tuple | None = None,
) -> torch.Tensor:
    """Gradient magnitude similarity deviation (piq, no learned weights) of magnitude images.

    Both images are divided by the target image's maximum and clipped to [0, 1] (piq's data range 1): source
    values above the target's maximum get no gradient from this loss. GMSD is a square root of a deviation, so its
    gradient is undefined where source and target are exactly equal.

    Parameters
    ----------
    source : torch.Tensor
        Reconstruction magnitude, (B, H, W) or (B, S, H, W).
    target : torch.Tensor
        Reference magnitude, same shape.
    reduction : str
        ``"mean"`` or ``"sum"`` over images.
    reconstruction_size : list or tuple, optional
        DIRECT's header reconstruction size; when given, both images are centre-cropped to it.

    Returns
    -------
    torch.Tensor
        Scalar loss, 0 for identical images.
    """
    source, target = _prepare("gmsd_loss", source, target, reduction, reconstruction_size)
    with torch.autocast(source.device.type, enabled=False):
        source, target = _unit_range(*_full_precision(source, target))
        per_image = piq.gmsd(source, target, reduction="none", data_range=1.0)
    return _reduce(per_image, reduction)


def _lpips(
    loss: str,
    source: torch.Tensor,
    target: torch.Tensor,
    reduction: str,
    reconstruction_size: list | tuple | None,
) -> torch.Tensor:
    backbone = LPIPS_LOSSES[loss]
    source, target = _prepare(loss, source, target, reduction, reconstruction_size)
    network = lpips_network(backbone, source.device)
    with torch.autocast(source.device.type, enabled=False):
        source, target = _full_precision(source, target)
        scale = _target_max(target)
        source = (2.0 * source / scale - 1.0).expand(-1, 3, -1, -1)  # N, 3, h, w
        target = (2.0 * target / scale - 1.0).expand(-1, 3, -1, -1)
        per_image = network(source, target).flatten()  # N
    return _reduce(per_image, reduction)


def lpips_loss(
    source: torch.Tensor,
    target: torch.Tensor,
    reduction: str = "mean",
    reconstruction_size: list | tuple | None = None,
) -> torch.Tensor:
    """LPIPS distance of magnitude images with the AlexNet trunk (the LPIPS package's default; = ``lpips_alex_loss``).

    The trunk's torchvision checkpoint (``alexnet-owt-7be5be79.pth``; ``vgg16-397923af.pth`` for
    :func:`lpips_vgg_loss`) is read from local disk (see :mod:`direct_nextaccel.weights`) and the network is built
    once per (trunk, weight file, device). Both images are divided by the target image's maximum, mapped to
    [-1, 1] without clipping (gradients everywhere) and repeated to 3 channels; the network runs in float32.

    Parameters
    ----------
    source : torch.Tensor
        Reconstruction magnitude, (B, H, W) or (B, S, H, W).
    target : torch.Tensor
        Reference magnitude, same shape.
    reduction : str
        ``"mean"`` or ``"sum"`` over images.
    reconstruction_size : list or tuple, optional
        DIRECT's header reconstruction size; when given, both images are centre-cropped to it.

    Returns
    -------
    torch.Tensor
        Scalar loss, 0 for identical images.

    Raises
    ------
    PerceptualBackboneUnavailable
        At the first call, when the checkpoint is not on this machine (one line naming the file and
        ``DIRECT_NEXTACCEL_WEIGHTS_DIR``). A FileNotFoundError, so DIRECT's training loop lets it through unchanged.
    NonFiniteInputError
        Either image holds a NaN or Inf.
    """
    return _lpips("lpips_loss", source, target, reduction, reconstruction_size)


def lpips_alex_loss(
    source: torch.Tensor,
    target: torch.Tensor,
    reduction: str = "mean",
    reconstruction_size: list | tuple | None = None,
) -> torch.Tensor:
    """LPIPS with the AlexNet trunk, the same as :func:`lpips_loss`, under a name that says so."""
    return _lpips("lpips_alex_loss", source, target, reduction, reconstruction_size)


def lpips_vgg_loss(
    source: torch.Tensor,
    target: torch.Tensor,
    reduction: str = "mean",
    reconstruction_size: list | tuple | None = None,
) -> torch.Tensor:
    """LPIPS with the VGG16 trunk (``vgg16-397923af.pth``); conventions and errors as :func:`lpips_loss`."""
    return _lpips("lpips_vgg_loss", source, target, reduction, reconstruction_size)

"""Evaluation metrics on magnitude volumes, with fastMRI's conventions (``fastmri/evaluate.py``).

Every metric takes two numpy arrays ``gt`` (reference) and ``pred`` (reconstruction) of shape (slices, H, W) holding
magnitudes of one volume and returns a float for the volume. The data range is that of the whole ground-truth
volume, ``gt.max()``, never per slice, so scaling both volumes by the same factor changes no metric.

Perceptual metrics (LPIPS, DISTS, HaarPSI, GMSD) are computed per slice on both volumes divided by ``gt.max()`` and
clipped to [0, 1], then averaged over slices. LPIPS and DISTS need pretrained weights from local disk and raise
:class:`~direct_nextaccel.losses.perceptual.PerceptualBackboneUnavailable` without them; :func:`compute_metrics`
turns that into :data:`WEIGHTS_UNAVAILABLE` and keeps every other metric.
"""

import functools
import logging
from collections.abc import Callable, Iterable

import numpy as np
import piq
import torch
from direct.functionals import HFENL2Loss
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from direct_nextaccel.losses.perceptual import PerceptualBackboneUnavailable, dists_network, lpips_network

logger = logging.getLogger(__name__)

WEIGHTS_UNAVAILABLE = "n/a (weights unavailable)"
"""What :func:`compute_metrics` reports for a perceptual metric whose pretrained weights are not on this machine."""

_SLICES_PER_BATCH = 8


def _volumes(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.ndim != 3 or gt.shape != pred.shape:
        raise ValueError(f"expected gt and pred volumes (slices, H, W) of one shape, got {gt.shape} and {pred.shape}")
    return gt, pred


def psnr(gt: np.ndarray, pred: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio of a volume in dB: ``10 log10(data_range^2 / MSE)``, MSE over the whole volume.

    Parameters
    ----------
    gt, pred : np.ndarray
        Magnitude volumes (slices, H, W).
    data_range : float, optional
        Default: ``gt.max()`` of the volume (fastMRI).

    Returns
    -------
    float
        PSNR in dB (``inf`` for identical volumes).
    """
    gt, pred = _volumes(gt, pred)
    data_range = gt.max() if data_range is None else data_range
    return float(peak_signal_noise_ratio(gt, pred, data_range=data_range))


def ssim(gt: np.ndarray, pred: np.ndarray, data_range: float | None = None) -> float:
    """Structural similarity of a volume: mean over slices of 2D SSIM with one data range for the volume.

    Each slice uses :func:`skimage.metrics.structural_similarity` with its defaults (7 x 7 uniform window,
    K1 = 0.01, K2 = 0.03, sample covariance), as fastMRI's ``evaluate.ssim`` does.

    Parameters
    ----------
    gt, pred : np.ndarray
        Magnitude volumes (slices, H, W), each slice at least 7 x 7.
    data_range : float, optional
        Default: ``gt.max()`` of the volume (fastMRI), the same for every slice.

    Returns
    -------
    float
        SSIM in [-1, 1], 1 for identical volumes.
    """
    gt, pred = _volumes(gt, pred)
    data_range = gt.max() if data_range is None else data_range
    return float(np.mean([structural_similarity(g, p, data_range=data_range) for g, p in zip(gt, pred, strict=True)]))


def nmse(gt: np.ndarray, pred: np.ndarray) -> float:
    """Normalised mean squared error ``||gt - pred||^2 / ||gt||^2`` over the volume (no data range: scale-free).

    Parameters
    ----------
    gt, pred : np.ndarray
        Magnitude volumes (slices, H, W).

    Returns
    -------
    float
        NMSE, 0 for identical volumes.
    """
    gt, pred = _volumes(gt, pred)
    return float(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2)


def hfen(gt: np.ndarray, pred: np.ndarray, kernel_size: int = 15, sigma: float = 1.5) -> float:
    """High-frequency error norm ``||LoG(pred) - LoG(gt)||_2 / ||LoG(gt)||_2`` over the volume (scale-free).

    LoG is a 2D Laplacian-of-Gaussian filter applied to each slice with zero padding, built by DIRECT's
    :class:`~direct.functionals.HFENL2Loss`; the defaults (15 x 15, sigma 1.5) are those of Ravishankar & Bresler
    (IEEE TMI 2011), who defined HFEN. DIRECT's own ``hfen_l1``/``hfen_l2`` metrics default to sigma 2.5 and are
    not normalised this way, so their values differ.

    Parameters
    ----------
    gt, pred : np.ndarray
        Magnitude volumes (slices, H, W).
    kernel_size : int
        Side of the LoG kernel.
    sigma : float
        Standard deviation of the Gaussian, in pixels.

    Returns
    -------
    float
        HFEN, 0 for identical volumes.
    """
    gt, pred = _volumes(gt, pred)
    squared_error = HFENL2Loss(reduction="sum", kernel_size=kernel_size, sigma=sigma).double()
    gt_t = torch.from_numpy(np.ascontiguousarray(gt, dtype=np.float64))[:, None]  # S, 1, H, W
    pred_t = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float64))[:, None]
    with torch.no_grad():
        error = squared_error(pred_t, gt_t)
        reference = squared_error(torch.zeros_like(gt_t), gt_t)
    return float(torch.sqrt(error / reference))


def _unit_slices(gt: np.ndarray, pred: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Both volumes divided by ``gt.max()`` and clipped to [0, 1], as float32 tensors (S, 1, H, W)."""
    gt, pred = _volumes(gt, pred)
    scale = gt.max()
    if not scale > 0:
        raise ValueError(f"the ground-truth volume's maximum is {scale}; perceptual metrics need a positive maximum")
    gt_t, pred_t = (torch.from_numpy(np.clip(volume / scale, 0.0, 1.0).astype(np.float32)) for volume in (gt, pred))
    return gt_t[:, None], pred_t[:, None]


def _rgb(image: torch.Tensor) -> torch.Tensor:
    return image.expand(-1, 3, -1, -1)  # N, 3, H, W


def _slice_mean(
    per_slice: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    gt: np.ndarray,
    pred: np.ndarray,
    device: str | torch.device,
) -> float:
    """Mean over slices of ``per_slice(pred_batch, gt_batch) -> (n,)``, run in batches of slices on ``device``."""
    gt_t, pred_t = _unit_slices(gt, pred)
    values = []
    with torch.no_grad():
        for start in range(0, gt_t.shape[0], _SLICES_PER_BATCH):
            batch = slice(start, start + _SLICES_PER_BATCH)
            values.append(per_slice(pred_t[batch].to(device), gt_t[batch].to(device)).flatten().cpu())
    return float(torch.cat(values).double().mean())


def lpips_metric(gt: np.ndarray, pred: np.ndarray, backbone: str = "alex", device: str | torch.device = "cpu") -> float:
    """LPIPS (v0.1) of a volume: mean over slices; slices in [0, 1] (see module docstring) are mapped to [-1, 1]
    and repeated to 3 channels.

    Parameters
    ----------
    gt, pred : np.ndarray
        Magnitude volumes (slices, H, W).
    backbone : str
        ``"alex"`` (the paper's LPIPS) or ``"vgg"``.
    device : str or torch.device
        Where the network runs.

    Returns
    -------
    float
        LPIPS, 0 for identical volumes, lower is better.

    Raises
    ------
    PerceptualBackboneUnavailable
        The torchvision checkpoint of the backbone is not on this machine.
    """
    network = lpips_network(backbone, device)
    return _slice_mean(lambda x, y: network(_rgb(x), _rgb(y), normalize=True), gt, pred, device)


def dists_metric(gt: np.ndarray, pred: np.ndarray, device: str | torch.device = "cpu") -> float:
    """DISTS distance (``1 - similarity``, piq) of a volume: mean over slices in [0, 1] repeated to 3 channels.

    Parameters
    ----------
    gt, pred : np.ndarray
        Magnitude volumes (slices, H, W).
    device : str or torch.device
        Where the network runs.

    Returns
    -------
    float
        DISTS, 0 for identical volumes, lower is better.

    Raises
    ------
    PerceptualBackboneUnavailable
        ``dists_weights.pt`` or the VGG16 checkpoint is not on this machine.
    """
    network = dists_network(device)
    return _slice_mean(lambda x, y: network(_rgb(x), _rgb(y)), gt, pred, device)


def haarpsi_metric(gt: np.ndarray, pred: np.ndarray, device: str | torch.device = "cpu") -> float:
    """HaarPSI similarity (piq, no learned weights) of a volume: mean over slices in [0, 1] (data range 1).

    Returns
    -------
    float
        HaarPSI in [0, 1], 1 for identical volumes, higher is better. Slices must be at least 16 x 16.
    """
    return _slice_mean(lambda x, y: piq.haarpsi(x, y, reduction="none", data_range=1.0), gt, pred, device)


def gmsd_metric(gt: np.ndarray, pred: np.ndarray, device: str | torch.device = "cpu") -> float:
    """Gradient magnitude similarity deviation (piq, no learned weights) of a volume: mean over slices in [0, 1].

    Returns
    -------
    float
        GMSD, 0 for identical volumes, lower is better.
    """
    return _slice_mean(lambda x, y: piq.gmsd(x, y, reduction="none", data_range=1.0), gt, pred, device)


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "psnr": psnr,
    "ssim": ssim,
    "nmse": nmse,
    "hfen": hfen,
    "lpips": lpips_metric,
    "lpips_vgg": functools.partial(lpips_metric, backbone="vgg"),
    "dists": dists_metric,
    "haarpsi": haarpsi_metric,
    "gmsd": gmsd_metric,
}
"""Metric name -> ``fn(gt, pred) -> float``; ``"lpips"`` is LPIPS-alex, the paper's LPIPS."""


def compute_metrics(gt_volume: np.ndarray, pred_volume: np.ndarray, names: Iterable[str]) -> dict[str, float | str]:
    """Named metrics of one volume; a perceptual metric without local weights reports :data:`WEIGHTS_UNAVAILABLE`.

    Parameters
    ----------
    gt_volume, pred_volume : np.ndarray
        Magnitude volumes (slices, H, W).
    names : Iterable[str]
        Keys of :data:`METRICS`, in the order wanted.

    Returns
    -------
    dict[str, float or str]
        Name -> value, or -> ``"n/a (weights unavailable)"`` (logged once per metric name and process, with the
        missing file).
    """
    names = list(names)
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(METRICS)}")
    results: dict[str, float | str] = {}
    for name in names:
        try:
            results[name] = METRICS[name](gt_volume, pred_volume)
        except PerceptualBackboneUnavailable as error:
            _warn_unavailable(name, str(error))
            results[name] = WEIGHTS_UNAVAILABLE
    return results


@functools.cache
def _warn_unavailable(name: str, message: str) -> None:
    logger.warning("metric %s reported as %r: %s", name, WEIGHTS_UNAVAILABLE, message)

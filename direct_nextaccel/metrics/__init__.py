"""Evaluation metrics with fastMRI's conventions; perceptual ones report ``"n/a (weights unavailable)"`` offline."""

from direct_nextaccel.metrics.functional import (
    METRICS,
    WEIGHTS_UNAVAILABLE,
    compute_metrics,
    dists_metric,
    gmsd_metric,
    haarpsi_metric,
    hfen,
    lpips_metric,
    nmse,
    psnr,
    ssim,
)

__all__ = [
    "METRICS",
    "WEIGHTS_UNAVAILABLE",
    "compute_metrics",
    "dists_metric",
    "gmsd_metric",
    "haarpsi_metric",
    "hfen",
    "lpips_metric",
    "nmse",
    "psnr",
    "ssim",
]

import math

import numpy as np
import pytest
import torch
from direct.functionals import fastmri_psnr, fastmri_ssim
from torchvision.models import alexnet
from torchvision.models.vgg import cfgs, make_layers

from direct_nextaccel.losses.perceptual import PerceptualBackboneUnavailable
from direct_nextaccel.metrics import (
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
from direct_nextaccel.weights import WEIGHTS_DIR_ENV

PERCEPTUAL_WITH_WEIGHTS = ("lpips", "lpips_vgg", "dists")


@pytest.fixture
def volumes():
    """A (3, 32, 32) magnitude volume whose slices have different maxima, and a noisy reconstruction of it."""
    rng = np.random.default_rng(0)
    gt = rng.random((3, 32, 32)) * np.array([1.0, 2.0, 0.5])[:, None, None]
    pred = np.abs(gt + 0.05 * rng.standard_normal(gt.shape))
    return gt, pred


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    """An empty weights folder and every default cache inside tmp_path."""
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "weights").mkdir()
    return tmp_path / "weights"


def test_psnr_of_a_constant_offset_uses_the_volume_maximum():
    gt = np.zeros((2, 8, 8))
    gt[0, 3, 3] = 2.0  # the volume maximum; slice 1 is dark
    assert psnr(gt, gt + 0.1) == pytest.approx(20 * math.log10(2.0 / 0.1))
    assert psnr(gt, gt + 0.1, data_range=1.0) == pytest.approx(20 * math.log10(1.0 / 0.1))


def test_ssim_of_constant_slices_has_the_closed_form():
    # Constant windows have no variance, so SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1), C1 = (0.01 L)^2,
    # with L = gt.max() = 2 of the volume for both slices.
    gt = np.stack([np.full((8, 8), 1.0), np.full((8, 8), 2.0)])
    pred = np.stack([np.full((8, 8), 0.5), np.full((8, 8), 2.0)])
    c1 = (0.01 * 2.0) ** 2
    first = (2 * 1.0 * 0.5 + c1) / (1.0**2 + 0.5**2 + c1)
    assert ssim(gt, pred) == pytest.approx((first + 1.0) / 2)
    assert ssim(gt, gt) == pytest.approx(1.0)


def test_nmse_and_hfen_have_closed_forms_for_scaled_volumes(volumes):
    gt, _ = volumes
    assert nmse(gt, 1.1 * gt) == pytest.approx(0.01)
    assert hfen(gt, 1.5 * gt) == pytest.approx(0.5)
    assert nmse(gt, gt) == 0.0
    assert hfen(gt, gt) == 0.0


def test_scaling_both_volumes_changes_no_metric(volumes):
    gt, pred = volumes
    for metric in (psnr, ssim, nmse, hfen, haarpsi_metric, gmsd_metric):
        assert metric(37.0 * gt, 37.0 * pred) == pytest.approx(metric(gt, pred), rel=1e-5), metric.__name__


def test_psnr_and_ssim_agree_with_directs_fastmri_metrics(volumes):
    gt, pred = volumes
    gt_t, pred_t = torch.from_numpy(gt)[:, None], torch.from_numpy(pred)[:, None]  # DIRECT's (slices, 1, H, W)
    assert psnr(gt, pred) == pytest.approx(float(fastmri_psnr(gt_t, pred_t)), rel=1e-5)
    assert ssim(gt, pred) == pytest.approx(float(fastmri_ssim(gt_t, pred_t)), rel=1e-5)


def test_weight_free_perceptual_metrics(volumes):
    gt, pred = volumes
    assert haarpsi_metric(gt, gt) == pytest.approx(1.0, abs=1e-5)
    assert haarpsi_metric(gt, pred) < 0.99
    assert gmsd_metric(gt, gt) == pytest.approx(0.0, abs=1e-6)
    assert gmsd_metric(gt, pred) > 1e-3
    assert hfen(gt, pred) > 1e-2


def test_bad_inputs_are_refused(volumes):
    gt, pred = volumes
    with pytest.raises(ValueError, match=r"\(3, 32, 32\) and \(3, 32, 12\)"):
        psnr(gt, pred[..., :12])
    with pytest.raises(ValueError, match="'fid'"):
        compute_metrics(gt, pred, ["psnr", "fid"])


def test_without_weights_perceptual_metrics_are_reported_unavailable(weights_dir, volumes):
    gt, pred = volumes
    with pytest.raises(PerceptualBackboneUnavailable, match=r"dists_weights\.pt"):
        dists_metric(gt, pred)
    results = compute_metrics(gt, pred, list(METRICS))
    assert list(results) == list(METRICS)
    for name in PERCEPTUAL_WITH_WEIGHTS:
        assert results[name] == WEIGHTS_UNAVAILABLE
    for name in set(METRICS) - set(PERCEPTUAL_WITH_WEIGHTS):
        assert isinstance(results[name], float)
    assert results["psnr"] == pytest.approx(psnr(gt, pred))


def test_lpips_and_dists_run_from_local_checkpoints(weights_dir, volumes):
    torch.manual_seed(0)
    alex = {key: value for key, value in alexnet(weights=None).state_dict().items() if key.startswith("features.")}
    torch.save(alex, weights_dir / "alexnet-owt-7be5be79.pth")
    vgg = {f"features.{key}": value for key, value in make_layers(cfgs["D"]).state_dict().items()}
    torch.save(vgg, weights_dir / "vgg16-397923af.pth")
    uniform = torch.full((1, 1475, 1, 1), 1.0 / (2 * 1475))  # alpha and beta sum to one: DISTS(x, x) = 0
    torch.save({"alpha": uniform, "beta": uniform}, weights_dir / "dists_weights.pt")

    gt, pred = volumes
    assert lpips_metric(gt, gt) == pytest.approx(0.0, abs=1e-6)
    assert lpips_metric(gt, pred) > 0
    assert dists_metric(gt, gt) == pytest.approx(0.0, abs=1e-5)
    assert dists_metric(gt, pred) > 1e-4
    results = compute_metrics(gt, pred, ["lpips", "dists", "psnr"])
    assert all(isinstance(value, float) for value in results.values())

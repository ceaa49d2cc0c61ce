import logging
from importlib.metadata import entry_points

import pytest
import torch
from direct.utils import multiply_function
from torchvision.models import alexnet

from direct_nextaccel.losses import image, perceptual
from direct_nextaccel.losses.image import LPIPS_BACKBONE_ENV, gmsd_loss, haarpsi_loss, lpips_loss, ssim_magnitude_loss
from direct_nextaccel.losses.perceptual import PerceptualBackboneUnavailable, build_lpips, lpips_network
from direct_nextaccel.weights import WEIGHTS_DIR_ENV

WEIGHT_FREE = [ssim_magnitude_loss, haarpsi_loss, gmsd_loss]


@pytest.fixture
def images():
    """Target magnitudes (3, 32, 32) and a noisy reconstruction of them."""
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(3, 32, 32, generator=generator) + 0.1
    source = (target + 0.1 * torch.randn(3, 32, 32, generator=generator)).abs()
    return source, target


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """An empty weights folder and every default cache inside tmp_path."""
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(LPIPS_BACKBONE_ENV, raising=False)
    (tmp_path / "weights").mkdir()
    return tmp_path / "weights"


@pytest.fixture(scope="module")
def alexnet_features():
    """Random AlexNet trunk in torchvision's checkpoint keys (only ``features.*`` is read by the loader)."""
    torch.manual_seed(0)
    return {key: value for key, value in alexnet(weights=None).state_dict().items() if key.startswith("features.")}


@pytest.fixture
def fake_alexnet(no_weights, alexnet_features):
    path = no_weights / "alexnet-owt-7be5be79.pth"
    torch.save(alexnet_features, path)
    return path


def _header_size(height: int, width: int, batch: int) -> list[torch.Tensor]:
    """``reconstruction_size`` as DIRECT's collate makes it from per-sample ``(x, y, z)`` tuples."""
    return [torch.full((batch,), height), torch.full((batch,), width), torch.ones(batch, dtype=torch.long)]


@pytest.mark.parametrize("loss", WEIGHT_FREE)
def test_zero_for_identical_and_positive_otherwise(loss, images):
    source, target = images
    assert loss(target.clone(), target).item() == pytest.approx(0.0, abs=1e-5)
    assert loss(source, target).item() > 1e-3


@pytest.mark.parametrize("loss", WEIGHT_FREE)
def test_gradient_reaches_the_source(loss, images):
    source, target = images
    source = source.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(loss(source, target), source)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0


@pytest.mark.parametrize("loss", WEIGHT_FREE)
def test_reductions_and_direct_call_convention(loss, images):
    source, target = images
    mean = loss(source, target, "mean", None)
    assert mean.ndim == 0
    assert loss(source, target, "sum", None).item() == pytest.approx(3 * mean.item(), rel=1e-5)
    assert multiply_function(0.5, loss)(source, target, "mean", None).item() == pytest.approx(0.5 * mean.item())
    with pytest.raises(ValueError, match="'none'"):
        loss(source, target, "none")


@pytest.mark.parametrize("loss", WEIGHT_FREE)
def test_reconstruction_size_crops_the_centre(loss, images):
    _, target = images
    source = target.clone()
    source[:, :8] += 0.5  # differs only outside the central 16 x 16
    assert loss(source, target).item() > 1e-3
    cropped = loss(source, target, "mean", _header_size(16, 16, batch=3))
    assert cropped.item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("loss", WEIGHT_FREE)
def test_intensity_scale_is_taken_per_image_from_the_target(loss, images):
    source, target = images
    scale = torch.tensor([1.0, 40.0, 0.01])[:, None, None]
    per_image = torch.stack([loss(source[i : i + 1], target[i : i + 1]) for i in range(3)])
    assert loss(scale * source, scale * target, "sum").item() == pytest.approx(per_image.sum().item(), rel=1e-4)


@pytest.mark.parametrize("loss", WEIGHT_FREE)
def test_slices_are_folded_into_the_batch(loss, images):
    source, target = images
    folded = loss(source[None], target[None])
    assert folded.item() == pytest.approx(loss(source, target).item(), rel=1e-6)


def test_mismatched_shapes_are_refused(images):
    source, target = images
    with pytest.raises(ValueError, match=r"\(3, 32, 16\)"):
        ssim_magnitude_loss(source[..., :16], target)


def test_registered_as_direct_losses():
    registered = {entry.name: entry.load() for entry in entry_points(group="direct.losses")}
    for loss in (*WEIGHT_FREE, lpips_loss):
        assert registered[loss.__name__] is loss


def test_lpips_loads_the_local_torchvision_checkpoint(fake_alexnet, alexnet_features, images):
    model = lpips_network("alex", "cpu")
    assert torch.equal(getattr(model.net.slice1, "0").weight, alexnet_features["features.0.weight"])
    assert torch.equal(getattr(model.net.slice5, "10").bias, alexnet_features["features.10.bias"])
    assert not any(parameter.requires_grad for parameter in model.parameters())

    source, target = images
    source = source.clone().requires_grad_(True)
    value = lpips_loss(source, target)
    (gradient,) = torch.autograd.grad(value, source)
    assert value.item() > 0 and gradient.abs().sum() > 0
    assert lpips_loss(target.clone(), target).item() == pytest.approx(0.0, abs=1e-6)
    assert lpips_loss(source, target, "sum").item() == pytest.approx(3 * value.item(), rel=1e-5)
    assert lpips_network("alex", torch.device("cpu")) is model


def test_lpips_without_weights_raises_a_clear_error(no_weights, images):
    source, target = images
    with pytest.raises(PerceptualBackboneUnavailable, match=r"alexnet-owt-7be5be79\.pth") as error:
        lpips_loss(source, target)
    assert WEIGHTS_DIR_ENV in str(error.value) and "\n" not in str(error.value)


def test_lpips_fallback_only_when_asked(no_weights, caplog):
    assert build_lpips("none") is None
    with caplog.at_level(logging.WARNING, logger=perceptual.__name__):
        assert build_lpips("vgg", missing_ok=True) is None
    assert "vgg16-397923af.pth" in caplog.text
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        build_lpips("alex", no_weights / "nowhere.pth", missing_ok=True)


def test_lpips_refuses_a_file_that_is_not_a_torchvision_trunk(no_weights):
    torch.save({"weight": torch.zeros(1)}, no_weights / "alexnet-owt-7be5be79.pth")
    with pytest.raises(ValueError, match="features"):
        build_lpips("alex")


def test_lpips_backbone_from_environment_is_checked(no_weights, monkeypatch, images):
    monkeypatch.setenv(LPIPS_BACKBONE_ENV, "squeeze")
    with pytest.raises(ValueError, match="'squeeze'"):
        image.lpips_loss(*images)

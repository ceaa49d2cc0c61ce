import logging
from importlib.metadata import entry_points

import pytest
import torch
from direct.utils import multiply_function
from torchvision.models import alexnet
from torchvision.models.vgg import cfgs, make_layers

from direct_nextaccel.losses import perceptual
from direct_nextaccel.losses.image import (
    LPIPS_LOSSES,
    NonFiniteInputError,
    gmsd_loss,
    haarpsi_loss,
    lpips_alex_loss,
    lpips_loss,
    lpips_vgg_loss,
    ssim_magnitude_loss,
)
from direct_nextaccel.losses.perceptual import (
    PerceptualBackboneUnavailable,
    build_dists,
    build_lpips,
    lpips_network,
)
from direct_nextaccel.weights import WEIGHTS_DIR_ENV

WEIGHT_FREE = [ssim_magnitude_loss, haarpsi_loss, gmsd_loss]
LPIPS = [lpips_loss, lpips_alex_loss, lpips_vgg_loss]


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


@pytest.fixture(scope="module")
def vgg16_features():
    """Random VGG16 trunk (``features.*`` only, 15M parameters instead of the whole classifier's 138M)."""
    torch.manual_seed(1)
    return {f"features.{key}": value for key, value in make_layers(cfgs["D"]).state_dict().items()}


@pytest.fixture
def fake_trunks(fake_alexnet, vgg16_features):
    torch.save(vgg16_features, fake_alexnet.parent / "vgg16-397923af.pth")
    return fake_alexnet.parent


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
    for loss in (*WEIGHT_FREE, *LPIPS):
        assert registered[loss.__name__] is loss
    assert set(LPIPS_LOSSES) == {loss.__name__ for loss in LPIPS}


def test_one_loss_name_per_lpips_trunk(fake_trunks, images):
    source, target = images
    alex, vgg = lpips_network("alex", "cpu"), lpips_network("vgg", "cpu")
    peak = target.amax(dim=(-2, -1), keepdim=True)[:, None]  # N, 1, 1, 1
    pair = [(2.0 * image[:, None] / peak - 1.0).expand(-1, 3, -1, -1) for image in (source, target)]
    expected = {name: network(*pair).mean() for name, network in (("alex", alex), ("vgg", vgg))}
    assert not torch.allclose(expected["alex"], expected["vgg"])
    torch.testing.assert_close(lpips_loss(source, target), expected["alex"])
    torch.testing.assert_close(lpips_alex_loss(source, target), expected["alex"])
    torch.testing.assert_close(lpips_vgg_loss(source, target), expected["vgg"])


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


@pytest.mark.parametrize(
    ("loss", "filename"),
    [
        (lpips_loss, "alexnet-owt-7be5be79.pth"),
        (lpips_alex_loss, "alexnet-owt-7be5be79.pth"),
        (lpips_vgg_loss, "vgg16-397923af.pth"),
    ],
)
def test_lpips_without_weights_raises_one_clear_error_at_the_first_call(no_weights, images, loss, filename):
    source, target = images
    with pytest.raises(PerceptualBackboneUnavailable, match=filename.replace(".", r"\.")) as error:
        loss(source, target)
    assert WEIGHTS_DIR_ENV in str(error.value) and "\n" not in str(error.value)
    # DIRECT's training loop catches RuntimeError to checkpoint and write logs, and its log writer divides by zero
    # at iteration 0: this error must pass through that handler, so it must not be a RuntimeError.
    assert not isinstance(error.value, RuntimeError)
    assert isinstance(error.value, FileNotFoundError)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04truncated"])
def test_corrupt_trunk_file_is_named_in_one_line_not_a_runtime_error(no_weights, content):
    path = no_weights / "alexnet-owt-7be5be79.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"alexnet-owt-7be5be79\.pth cannot be read as a torchvision alexnet") as err:
        build_lpips("alex")
    assert "\n" not in str(err.value)


def test_trunk_of_the_wrong_shape_is_named(no_weights, alexnet_features):
    wrong = {key: value[..., :1] if value.ndim == 4 else value for key, value in alexnet_features.items()}
    torch.save(wrong, no_weights / "alexnet-owt-7be5be79.pth")
    with pytest.raises(ValueError, match=r"alexnet-owt-7be5be79\.pth does not fit the LPIPS-alex trunk") as err:
        build_lpips("alex")
    assert "\n" not in str(err.value)


def test_dists_weights_that_are_not_a_state_dict_are_named(no_weights, vgg16_features):
    torch.save(torch.zeros(3), no_weights / "dists_weights.pt")
    torch.save(vgg16_features, no_weights / "vgg16-397923af.pth")
    with pytest.raises(ValueError, match=r"dists_weights\.pt holds a Tensor, not the state dict"):
        build_dists()


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


@pytest.mark.parametrize("loss", [*WEIGHT_FREE, *LPIPS])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_source_is_refused_naming_the_batch_index(fake_trunks, images, loss, bad):
    source, target = images
    source = source.clone()
    source[1, 5, 7] = bad
    with pytest.raises(NonFiniteInputError) as error:
        loss(source, target)
    message = str(error.value)
    assert isinstance(error.value, FloatingPointError) and not isinstance(error.value, RuntimeError)
    assert message.startswith(f"{loss.__name__} refuses non-finite input: source")
    kind = "1 NaN and 0 Inf" if bad != bad else "0 NaN and 1 Inf"
    assert f"{kind} values at batch index 1" in message and "target" not in message and "\n" not in message


@pytest.mark.parametrize("loss", [*WEIGHT_FREE, *LPIPS])
def test_non_finite_target_is_refused_with_every_bad_index(fake_trunks, images, loss):
    source, target = images
    source, target = source[None].clone(), target[None].repeat(2, 1, 1, 1)  # (B=2, S=3, H, W)
    target[1, 2, 0, 0] = float("nan")
    target[1, 0, 3, 3] = float("inf")
    source[0, 1, 4, 4] = float("nan")
    source = source.repeat(2, 1, 1, 1)
    with pytest.raises(NonFiniteInputError) as error:
        loss(source, target)
    assert str(error.value) == (
        f"{loss.__name__} refuses non-finite input: target (the data) has 1 NaN and 1 Inf values at batch index 1; "
        "source (the model's output) has 2 NaN and 0 Inf values at batch indices [0, 1]"
    )


def test_non_finite_input_is_refused_before_the_weights_are_needed(no_weights, images):
    source, target = images
    with pytest.raises(NonFiniteInputError, match="lpips_vgg_loss"):
        lpips_vgg_loss(source, target * float("nan"))

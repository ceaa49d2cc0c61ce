"""MSVQ-VAE: residual multi-scale quantization that improves scale by scale, scale-aware dropout only in training,
and one set of tokens whichever path (training forward, tokenizer, decoding) produced them."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from direct_nextaccel.miar.msvqvae import MSVQVAE, phi_ticks
from direct_nextaccel.modules.quantizer import residual_multiscale_quantize

TINY = {
    "base_channels": 8,
    "channel_multipliers": (1, 2, 2, 2),
    "num_res_blocks": 1,
    "latent_dim": 8,
    "codebook_size": 32,
    "scales": (1, 2, 3, 4),
    "image_size": (32, 32),
}


def relative_errors(tokenizer: MSVQVAE, f: torch.Tensor) -> list[float]:
    """||f - f_hat_k|| / ||f|| after every scale k of the gradient-free tokenizer path."""
    _, cumulative = residual_multiscale_quantize(tokenizer.quantizer, f, tokenizer.scales, post=tokenizer.post)
    return [float((f - f_hat).norm() / f.norm()) for f_hat in cumulative]


def test_cumulative_reconstruction_improves_with_every_scale_once_the_codebook_fits_the_residuals():
    """Residual quantization only helps if the codebook holds vectors like the residuals it meets: an untrained
    codebook (random codes as large as the latent) makes some scale overshoot, so the check is not vacuous. A few
    EMA steps of the tokenizer's own training quantization on the fixed input (codes become means of the residuals
    assigned to them, at every scale) give a reconstruction that improves monotonically from scale 1 to the last."""
    torch.manual_seed(0)
    scales = (1, 2, 3, 4, 6, 8, 12, 16)
    tokenizer = MSVQVAE(**{**TINY, "scales": scales, "image_size": (128, 128), "quant_resi": 0.0})  # Phi = identity
    tokenizer.quantizer.ema_decay = 0.5
    # content at every scale, decreasing with frequency like an image latent
    f = sum(
        F.interpolate(torch.randn(2, 8, s, s), size=(16, 16), mode="bicubic", align_corners=False) / (i + 1)
        for i, s in enumerate((1, 2, 4, 8, 16))
    )
    untrained = relative_errors(tokenizer, f)
    assert any(later > earlier for earlier, later in itertools.pairwise(untrained)), untrained

    tokenizer.train()
    for _ in range(10):
        tokenizer.quantize(f)
        tokenizer.ema_update()
    fitted = relative_errors(tokenizer, f)
    assert all(later < earlier for earlier, later in itertools.pairwise(fitted)), fitted
    assert fitted[-1] < 0.5 * fitted[0]


@pytest.fixture
def tokenizer() -> MSVQVAE:
    torch.manual_seed(0)
    return MSVQVAE(**TINY, scale_dropout=0.9)


def test_evaluation_is_deterministic_and_never_drops_scales(tokenizer):
    images = torch.randn(3, 2, 32, 32)
    reference = MSVQVAE(**TINY, scale_dropout=0.0)
    reference.load_state_dict(tokenizer.state_dict())
    tokenizer.eval()
    reference.eval()
    with torch.no_grad():
        first, second, undropped = tokenizer(images), tokenizer(images), reference(images)
    assert torch.equal(first["kept_scales"], torch.full((3,), 4))
    assert torch.equal(first["reconstruction"], second["reconstruction"])
    assert torch.equal(first["reconstruction"], undropped["reconstruction"])


def test_training_decodes_a_prefix_of_the_same_tokens(tokenizer):
    """Under dropout a sample's reconstruction is the decoder applied to its first K scales: the tokens themselves
    (and so the coarser scales' content) do not change, only the finer contributions are withheld."""
    torch.manual_seed(1)
    images = torch.randn(6, 2, 32, 32)
    tokenizer.train()
    with torch.no_grad():
        trained = tokenizer(images)
    kept = trained["kept_scales"]
    assert (kept < 4).any() and (kept >= 1).all()
    tokenizer.eval()
    with torch.no_grad():
        indices, _ = tokenizer.tokenize(images)
        for i, count in enumerate(kept.tolist()):
            prefix = [idx[i : i + 1] for idx in indices[:count]]
            decoded = tokenizer.decode_indices(prefix)
            torch.testing.assert_close(trained["reconstruction"][i : i + 1], decoded, atol=1e-4, rtol=1e-4)
    for a, b in zip(trained["indices"], indices, strict=True):
        assert torch.equal(a, b)


def test_decoder_gradient_reaches_the_encoder_and_the_codebook_is_untouched():
    tokenizer = MSVQVAE(**TINY, scale_dropout=0.0)  # with dropout the finest scales' Phi may get no gradient
    tokenizer.train()
    result = tokenizer(torch.randn(2, 2, 32, 32))
    (result["reconstruction"].abs().mean() + result["commit_loss"]).backward()
    assert tokenizer.encoder.conv_in.weight.grad.abs().sum() > 0
    assert all(tokenizer.phi[i].conv.weight.grad.abs().sum() > 0 for i in set(tokenizer.phi_of_scale))
    assert not tokenizer.quantizer.codebook.requires_grad


def test_cumulative_latents_are_the_tokenizer_prefix_sums(tokenizer):
    tokenizer.eval()
    indices, cumulative = tokenizer.tokenize(torch.randn(2, 2, 32, 32))
    with torch.no_grad():
        for mine, reference in zip(tokenizer.cumulative_latents(indices), cumulative, strict=True):
            torch.testing.assert_close(mine, reference)
        torch.testing.assert_close(tokenizer.cumulative_latent(indices[:2]), cumulative[1])


def test_phi_convs_are_shared_by_position_as_in_var():
    assert phi_ticks(4).tolist() == pytest.approx([1 / 12, 1 / 12 + 5 / 18, 1 / 12 + 10 / 18, 11 / 12])
    tokenizer = MSVQVAE(**{**TINY, "scales": (1, 2, 3, 4, 6, 9, 13, 18, 24, 32), "image_size": (256, 256)})
    assert tokenizer.phi_of_scale[0] == 0 and tokenizer.phi_of_scale[-1] == 3
    assert tokenizer.phi_of_scale == sorted(tokenizer.phi_of_scale)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scales": (1, 2, 3)}, r"scales \(1, 2, 3\) must end at the latent grid side 4"),
        ({"scales": (1, 3, 2, 4)}, r"scales \(1, 3, 2, 4\) must be strictly increasing"),
        ({"image_size": (32, 64)}, r"image_size \(32, 64\) must be square"),
        ({"image_size": (36, 36)}, r"image_size \(36, 36\) must be square \(H, H\) with H divisible by 8"),
        ({"scale_dropout": 1.0}, r"scale_dropout 1.0 is not in \[0, 1\)"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MSVQVAE(**{**TINY, **kwargs})


def test_wrong_token_shapes_are_refused(tokenizer):
    with pytest.raises(ValueError, match=r"scale 1 expects tokens of shape \(B, 2, 2\), got \(1, 3, 3\)"):
        tokenizer.decode_indices([torch.zeros(1, 1, 1, dtype=torch.long), torch.zeros(1, 3, 3, dtype=torch.long)])
    with pytest.raises(ValueError, match=r"images must have shape \(B, 2, 32, 32\), got \(1, 1, 32, 32\)"):
        tokenizer(torch.zeros(1, 1, 32, 32))

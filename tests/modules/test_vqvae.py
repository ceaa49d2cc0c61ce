"""Tests of the VAR-shaped encoder/decoder: shapes, features, FiLM conditioning and VAR weight loading."""

import pytest
import torch

from direct_nextaccel.modules.quantizer import SharedCodebookQuantizer
from direct_nextaccel.modules.vqvae import Decoder, Encoder, FiLMResBlock, ResBlock, load_var_vqvae_weights

TINY = {"base_channels": 8, "channel_multipliers": (1, 2, 2), "num_res_blocks": 1, "latent_dim": 4}


def _labels(batch: int, level: int = 0, family: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((batch,), level), torch.full((batch,), family)


def _randomise_film(module: torch.nn.Module) -> None:
    for name, parameter in module.named_parameters():
        if ".film." in f".{name}":
            torch.nn.init.normal_(parameter, std=0.5)


def test_encoder_decoder_shapes_and_features():
    torch.manual_seed(0)
    encoder = Encoder(in_channels=2, num_labels=(6, 4), feature_strides=(1, 2, 4), **TINY)
    decoder = Decoder(out_channels=2, **TINY)
    x = torch.randn(3, 2, 16, 24)
    z, features = encoder(x, _labels(3), return_features=True)
    assert encoder.total_stride == 4
    assert z.shape == (3, 4, 4, 6)
    assert {side: tuple(f.shape) for side, f in features.items()} == {
        16: (3, 8, 16, 24),
        8: (3, 16, 8, 12),
        4: (3, 16, 4, 6),
    }
    assert encoder.feature_channels == {1: 8, 2: 16, 4: 16}
    assert torch.equal(encoder(x, _labels(3)), z)
    assert decoder(z).shape == (3, 2, 16, 24)


def test_encoder_rejects_bad_inputs():
    encoder = Encoder(num_labels=(6, 4), feature_strides=(4,), **TINY)
    with pytest.raises(ValueError, match="image size 18x16 is not divisible by the encoder stride 4"):
        encoder(torch.randn(1, 2, 18, 16), _labels(1))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 2, H, W\), got \(1, 3, 16, 16\)"):
        encoder(torch.randn(1, 3, 16, 16), _labels(1))
    with pytest.raises(ValueError, match=r"label 6 of field 0 is outside \[0, 6\)"):
        encoder(torch.randn(1, 2, 16, 16), _labels(1, level=6))
    with pytest.raises(ValueError, match="expected 2 label tensors, got 1"):
        encoder(torch.randn(1, 2, 16, 16), _labels(1)[:1])
    with pytest.raises(TypeError, match="float32"):
        encoder(torch.randn(1, 2, 16, 16), (torch.zeros(1), torch.zeros(1, dtype=torch.long)))
    with pytest.raises(ValueError, match="feature stride 8 is not one of the encoder's strides"):
        Encoder(num_labels=(6, 4), feature_strides=(8,), **TINY)
    with pytest.raises(ValueError, match=r"expected latents of shape \(B, 4, h, w\)"):
        Decoder(**TINY)(torch.randn(1, 5, 4, 4))


def test_film_block_is_identity_at_init_and_label_dependent_after_training():
    torch.manual_seed(0)
    film_block, plain = FiLMResBlock(8, 16, (6, 4)), ResBlock(8, 16)
    missing = plain.load_state_dict(film_block.state_dict(), strict=False)
    assert missing.missing_keys == [] and all(".film." in f".{k}" for k in missing.unexpected_keys)
    x = torch.randn(2, 8, 5, 5)
    for level in range(6):
        for family in range(4):
            assert torch.equal(film_block(x, _labels(2, level, family)), plain(x))
    _randomise_film(film_block)
    reference = film_block(x, _labels(2, 0, 0))
    assert not torch.allclose(film_block(x, _labels(2, 3, 0)), reference)
    assert not torch.allclose(film_block(x, _labels(2, 0, 2)), reference)
    mixed = film_block(x, (torch.tensor([0, 3]), torch.tensor([0, 0])))
    assert torch.equal(mixed[0], reference[0])  # labels act per sample


def test_film_receives_gradients_from_identity_init():
    torch.manual_seed(0)
    block = FiLMResBlock(4, 4, (6, 4))
    block(torch.randn(2, 4, 3, 3), _labels(2, 1, 2)).square().sum().backward()
    grads = [embedding.weight.grad for embedding in block.film.embeddings]
    assert grads[0][1].abs().sum() > 0 and grads[0][0].abs().sum() == 0
    assert grads[1][2].abs().sum() > 0


def _var_keys(ch: int, ch_mult: tuple[int, ...], num_res_blocks: int) -> set[str]:
    """The parameter names of VAR's VQVAE (models/vqvae.py, models/basic_vae.py), from its construction rules."""
    keys = set()

    def conv(prefix):
        keys.update({f"{prefix}.weight", f"{prefix}.bias"})

    def resnet(prefix, c_in, c_out):
        for name in ("norm1", "conv1", "norm2", "conv2") + (("nin_shortcut",) if c_in != c_out else ()):
            conv(f"{prefix}.{name}")

    def attn(prefix):
        for name in ("norm", "qkv", "proj_out"):
            conv(f"{prefix}.{name}")

    last = len(ch_mult) - 1
    conv("encoder.conv_in")
    width = ch
    for i, mult in enumerate(ch_mult):
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", width, ch * mult)
            width = ch * mult
            if i == last:
                attn(f"encoder.down.{i}.attn.{j}")
        if i != last:
            conv(f"encoder.down.{i}.downsample.conv")
    for side in ("encoder", "decoder"):
        resnet(f"{side}.mid.block_1", width, width)
        attn(f"{side}.mid.attn_1")
        resnet(f"{side}.mid.block_2", width, width)
        conv(f"{side}.norm_out")
        conv(f"{side}.conv_out")
    conv("decoder.conv_in")
    for i in reversed(range(len(ch_mult))):
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", width, ch * ch_mult[i])
            width = ch * ch_mult[i]
            if i == last:
                attn(f"decoder.up.{i}.attn.{j}")
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv")
    conv("quant_conv")
    conv("post_quant_conv")
    return keys


def _var_state_dict(codebook_size: int = 16) -> dict[str, torch.Tensor]:
    """A VAR-keyed 3-channel state dict: a 3-channel encoder/decoder pair renamed to VAR's keys, without FiLM."""
    torch.manual_seed(1)
    encoder, decoder = (
        Encoder(in_channels=3, num_labels=(6, 4), feature_strides=(4,), **TINY),
        Decoder(out_channels=3, **TINY),
    )
    for module in (encoder, decoder):  # non-trivial norms so that a wrong mapping shows
        for name, parameter in module.named_parameters():
            if "norm" in name:
                torch.nn.init.normal_(parameter, mean=1.0 if name.endswith("weight") else 0.0, std=0.2)
    state = {}
    for prefix, module in (("encoder", encoder), ("decoder", decoder)):
        for name, tensor in module.state_dict().items():
            if ".film." not in name:
                top_level = name.startswith(("quant_conv.", "post_quant_conv."))
                state[name if top_level else f"{prefix}.{name}"] = tensor.clone()
    state["quantize.embedding.weight"] = torch.randn(codebook_size, TINY["latent_dim"])
    state["quantize.ema_vocab_hit_SV"] = torch.zeros(10, codebook_size)
    return state


def test_var_state_dict_layout_matches_var():
    state = _var_state_dict()
    var_keys = _var_keys(TINY["base_channels"], TINY["channel_multipliers"], TINY["num_res_blocks"])
    assert set(state) - {"quantize.embedding.weight", "quantize.ema_vocab_hit_SV"} == var_keys


def test_load_var_weights_two_channel_equals_var_with_dummy_third_channel():
    state = _var_state_dict()
    var_encoder, var_decoder = (
        Encoder(in_channels=3, num_labels=(6, 4), feature_strides=(4,), **TINY),
        Decoder(out_channels=3, **TINY),
    )
    load_var_vqvae_weights(var_encoder, var_decoder, state)
    torch.manual_seed(2)
    encoder, decoder = (
        Encoder(in_channels=2, num_labels=(6, 4), feature_strides=(4,), **TINY),
        Decoder(out_channels=2, **TINY),
    )
    load_var_vqvae_weights(encoder, decoder, state)
    assert torch.equal(encoder.conv_in.weight, state["encoder.conv_in.weight"][:, :2])
    assert torch.equal(
        encoder.down[1].block[0].nin_shortcut.weight, state["encoder.down.1.block.0.nin_shortcut.weight"]
    )
    assert torch.equal(decoder.post_quant_conv.weight, state["post_quant_conv.weight"])
    assert torch.equal(decoder.conv_out.bias, state["decoder.conv_out.bias"][:2])
    x = torch.randn(2, 2, 16, 16)
    labels = _labels(2, 3, 1)
    with torch.no_grad():
        z = encoder(x, labels)
        torch.testing.assert_close(z, var_encoder(torch.cat([x, torch.zeros(2, 1, 16, 16)], 1), labels))
        torch.testing.assert_close(decoder(z), var_decoder(z)[:, :2])
    assert all((e.weight == 0).all() for e in encoder.down[0].block[0].film.embeddings)


def test_load_var_weights_from_path_with_codebook(tmp_path):
    state = _var_state_dict(codebook_size=16)
    torch.save(state, tmp_path / "vae.pth")
    encoder, decoder = Encoder(num_labels=(6, 4), feature_strides=(4,), **TINY), Decoder(**TINY)
    quantizer = SharedCodebookQuantizer(codebook_size=16, dim=4)
    load_var_vqvae_weights(encoder, decoder, tmp_path / "vae.pth", quantizer=quantizer)
    assert torch.equal(quantizer.codebook, state["quantize.embedding.weight"])
    assert torch.equal(decoder.conv_in.weight, state["decoder.conv_in.weight"])


def test_load_var_weights_errors_name_the_key_and_leave_modules_untouched():
    state = _var_state_dict(codebook_size=16)
    encoder, decoder = (
        Encoder(num_labels=(6, 4), feature_strides=(4,), **{**TINY, "latent_dim": 8}),
        Decoder(**{**TINY, "latent_dim": 8}),
    )
    with pytest.raises(ValueError, match=r"'encoder.conv_out.weight' has z_channels=4, .* latent_dim=8"):
        load_var_vqvae_weights(encoder, decoder, state)
    encoder, decoder = Encoder(num_labels=(6, 4), feature_strides=(4,), **TINY), Decoder(**TINY)
    with pytest.raises(ValueError, match=r"'quantize.embedding.weight' has shape \(16, 4\)"):
        load_var_vqvae_weights(encoder, decoder, state, quantizer=SharedCodebookQuantizer(codebook_size=32, dim=4))
    before = encoder.conv_in.weight.clone()
    wide = Encoder(num_labels=(6, 4), feature_strides=(4,), **{**TINY, "base_channels": 16})
    with pytest.raises(ValueError, match=r"VAR key 'encoder.conv_in.weight' has shape \(8, 3, 3, 3\)"):
        load_var_vqvae_weights(wide, decoder, state)
    incomplete = {k: v for k, v in state.items() if k != "decoder.up.1.upsample.conv.bias"}
    with pytest.raises(ValueError, match=r"no key 'decoder\.up\.1\.upsample\.conv\.bias'"):
        load_var_vqvae_weights(encoder, decoder, incomplete)
    assert torch.equal(encoder.conv_in.weight, before)

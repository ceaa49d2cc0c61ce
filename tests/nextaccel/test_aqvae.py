"""Tests of the AQ-VAE tokenizer: token grids per level, round trips, EMA training, checkpoints and VAR loading."""

import copy
import inspect

import pytest
import torch

from direct_nextaccel.nextaccel.aqvae import AQVAE

TINY = {
    "base_channels": 16,
    "channel_multipliers": (1, 2, 2),
    "num_res_blocks": 1,
    "latent_dim": 8,
    "codebook_size": 64,
    "token_grids": (3, 4, 5, 6, 7, 8),
    "image_size": (32, 32),
    "context_strides": (2, 4),
}


def _tiny(seed: int = 0, **overrides) -> AQVAE:
    torch.manual_seed(seed)
    return AQVAE(**{**TINY, **overrides})


def _batch(batch: int = 2, levels: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, levels, 2, 32, 32, generator=generator)
    return images, torch.arange(batch) % 4


@pytest.fixture(scope="module")
def paper_model() -> AQVAE:
    torch.manual_seed(0)
    return AQVAE().eval()


def test_paper_size_model(paper_model):
    assert sum(p.numel() for p in paper_model.parameters()) == 108_922_498
    assert paper_model.token_grids == (11, 12, 13, 14, 15, 16)
    assert paper_model.latent_hw == (16, 16)
    assert paper_model.quantizer.codebook.shape == (4096, 32)
    assert paper_model.encoder.feature_channels == {4: 320, 8: 320, 16: 640}
    images = torch.randn(1, 1, 2, 256, 256)
    with torch.no_grad():
        encoding = paper_model.encode(images, torch.tensor([2]), levels=[0], return_features=True)
        assert encoding.indices[0].shape == (1, 11, 11)
        assert {side: tuple(f.shape) for side, f in encoding.features.items()} == {
            64: (1, 1, 320, 64, 64),
            32: (1, 1, 320, 32, 32),
            16: (1, 1, 640, 16, 16),
        }
    # Decoding 256x256 costs seconds on CPU: check the paper-size decoder's shapes on the meta device instead.
    decoder = copy.deepcopy(paper_model.decoder).to("meta")
    assert decoder(paper_model.post_quant(encoding.z_q[0], 0).to("meta")).shape == (1, 2, 256, 256)


def test_forward_tiny_shapes_and_determinism():
    model = _tiny().eval()
    images, family = _batch()
    with torch.no_grad():
        out = model(images, family)
        again = model(images, family)
    assert out["reconstruction"].shape == (2, 2, 32, 32)
    assert [tuple(i.shape) for i in out["indices"]] == [(2, g, g) for g in TINY["token_grids"]]
    assert all(i.dtype == torch.long for i in out["indices"])
    assert out["levels"] == [0, 1, 2, 3, 4, 5]
    assert out["commit_loss"].ndim == 0 and out["commit_loss"] > 0
    for (fraction, perplexity), indices in zip(out["usage"], out["indices"], strict=True):
        assert 0 < fraction <= indices.numel() / 64
        assert 1 <= perplexity <= indices.numel()
    assert all(torch.equal(a, b) for a, b in zip(out["indices"], again["indices"], strict=True))
    assert torch.equal(out["reconstruction"], again["reconstruction"])
    with torch.no_grad():
        assert torch.equal(model.decode_indices(out["indices"]), out["reconstruction"])


def test_levels_encoded_together_equal_levels_encoded_alone():
    model = _tiny().eval()
    images, family = _batch()
    with torch.no_grad():
        together = model.encode(images, family)
        for level in (0, 5):
            alone = model.encode(images[:, level : level + 1], family, levels=[level])
            assert torch.equal(alone.indices[0], together.indices[level])


def test_decode_indices_subsets_in_any_order():
    model = _tiny().eval()
    images, family = _batch()
    with torch.no_grad():
        encoding = model.encode(images[:, [3, 0]], family, levels=[3, 0])
        from_list = model.decode_indices(encoding.indices, levels=[3, 0])
        from_dict = model.decode_indices({0: encoding.indices[1], 3: encoding.indices[0]})
        reconstruction = model(images[:, [3, 0]], family, levels=[3, 0])["reconstruction"]
        only_fs = model.decode_indices({5: torch.zeros(2, 8, 8, dtype=torch.long)})
    assert torch.equal(from_list, from_dict)
    assert torch.equal(from_list, reconstruction)
    assert only_fs.shape == (2, 2, 32, 32)


def test_fusion_is_the_mean_of_post_quantized_levels():
    model = _tiny().eval()
    tokens = {0: torch.randint(64, (1, 3, 3)), 4: torch.randint(64, (1, 7, 7))}
    with torch.no_grad():
        parts = [model.post_quant(model.quantizer.lookup(idx), level) for level, idx in tokens.items()]
        torch.testing.assert_close(
            model.fuse([model.quantizer.lookup(i) for i in tokens.values()], [0, 4]), sum(parts) / 2
        )
        torch.testing.assert_close(model.decode_indices(tokens), model.decode_latent(sum(parts) / 2))
    assert parts[0].shape == (1, 8, 8, 8)


def test_training_step_updates_codebook_only_through_ema():
    model = _tiny().train()
    images, family = _batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    codebook = model.quantizer.codebook.clone()
    out = model(images, family)
    loss = (out["reconstruction"] - images[:, -1]).abs().mean() + out["commit_loss"]
    loss.backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0  # rotation trick carries the decoder's gradient
    assert model.encoder.down[0].block[0].film.embeddings[0].weight.grad.abs().sum() > 0
    assert model.phi[0].conv.weight.grad.abs().sum() > 0
    optimizer.step()
    assert torch.equal(model.quantizer.codebook, codebook)
    model.ema_update()
    assert not torch.equal(model.quantizer.codebook, codebook)
    used = torch.unique(torch.cat([i.flatten() for i in out["indices"]]))
    unused = torch.ones(64, dtype=torch.bool)
    unused[used] = False
    # Unused codes only decay towards themselves; used codes move towards their encoder vectors.
    torch.testing.assert_close(model.quantizer.codebook[unused], codebook[unused], rtol=1e-3, atol=1e-4)
    assert not torch.allclose(model.quantizer.codebook[used], codebook[used], rtol=1e-3, atol=1e-4)


def test_eval_mode_does_not_accumulate_codebook_statistics():
    model = _tiny().eval()
    codebook = model.quantizer.codebook.clone()
    with torch.no_grad():
        model(*_batch())
    model.ema_update()
    assert torch.equal(model.quantizer.codebook, codebook)


def test_checkpoint_reload_decodes_bit_identically(tmp_path):
    model = _tiny(seed=0).train()
    images, family = _batch()
    model(images, family)
    model.ema_update()
    model.eval()
    tokens = {level: torch.randint(64, (2, g, g)) for level, g in enumerate(TINY["token_grids"])}
    torch.save(model.state_dict(), tmp_path / "aqvae.pt")
    reloaded = _tiny(seed=5).eval()
    reloaded.load_state_dict(torch.load(tmp_path / "aqvae.pt", weights_only=True))
    with torch.no_grad():
        assert torch.equal(reloaded.decode_indices(tokens), model.decode_indices(tokens))
        assert all(
            torch.equal(a, b)
            for a, b in zip(reloaded.encode(images, family).indices, model.encode(images, family).indices, strict=True)
        )
    assert "quantizer.codebook" in model.state_dict() and "quantizer.ema_cluster_size" in model.state_dict()


def test_context_features_depend_on_level_and_family():
    model = _tiny()
    for name, parameter in model.encoder.named_parameters():
        if ".film." in name:
            torch.nn.init.normal_(parameter, std=0.5)
    image = _batch()[0][:, 0]
    family = torch.tensor([1, 1])
    with torch.no_grad():
        features = model.context_features(image, family)
        assert {side: tuple(f.shape) for side, f in features.items()} == {16: (2, 32, 16, 16), 8: (2, 32, 8, 8)}
        assert not torch.allclose(model.context_features(image, family, level=3)[8], features[8])
        assert not torch.allclose(model.context_features(image, torch.tensor([2, 2]))[8], features[8])
        encoded = model.encode(image[:, None], family, levels=[0], return_features=True).features
    assert torch.equal(encoded[8][:, 0], features[8])


def test_constructor_accepts_direct_operators_and_nothing_else():
    parameters = inspect.signature(AQVAE).parameters
    assert "forward_operator" in parameters and "backward_operator" in parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    _tiny(forward_operator=lambda x: x, backward_operator=lambda x: x)
    with pytest.raises(TypeError):
        _tiny(unknown_option=1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"token_grids": (3, 9)}, r"token grid 9 is not between 1 and the latent grid side 8"),
        ({"image_size": (30, 32)}, r"image_size \(30, 32\) is not \(H, W\) divisible by the total stride 4"),
        ({"token_grids": ()}, "token_grids is empty"),
        ({"quant_resi": 2.0}, "strength 2.0"),
    ],
)
def test_bad_configuration(overrides, message):
    with pytest.raises(ValueError, match=message):
        _tiny(**overrides)


def test_bad_inputs_name_the_value():
    model = _tiny().eval()
    images, family = _batch()
    with pytest.raises(ValueError, match=r"level 6 is not a level index in \[0, 6\)"):
        model.encode(images[:, :1], family, levels=[6])
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 2, 2, H, W\) for levels \[0, 1\]"):
        model.encode(images, family, levels=[0, 1])
    with pytest.raises(ValueError, match=r"image size \(16, 16\) differs from the model's \(32, 32\)"):
        model.encode(images[..., :16, :16], family)
    with pytest.raises(ValueError, match=r"mask family 4 is outside \[0, 4\)"):
        model.encode(images, torch.tensor([0, 4]))
    with pytest.raises(TypeError, match="family must be an integer tensor"):
        model.encode(images, torch.zeros(2))
    with pytest.raises(ValueError, match=r"level 2 expects tokens of shape \(B, 5, 5\), got \(2, 4, 4\)"):
        model.decode_indices({2: torch.zeros(2, 4, 4, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"level 7 is not a level index"):
        model.decode_indices({7: torch.zeros(2, 4, 4, dtype=torch.long)})
    with pytest.raises(ValueError, match="token index 64 is outside the codebook range"):
        model.decode_indices({0: torch.full((2, 3, 3), 64)})
    with pytest.raises(ValueError, match=r"2 token grids given for levels \[0, 1, 2, 3, 4, 5\]"):
        model.decode_indices([torch.zeros(2, 3, 3, dtype=torch.long)] * 2)
    with pytest.raises(ValueError, match=r"levels \[1, 1\] repeat a level"):
        model.decode_indices([torch.zeros(2, 4, 4, dtype=torch.long)] * 2, levels=[1, 1])


def _var_state_for(model: AQVAE) -> dict[str, torch.Tensor]:
    """A VAR-keyed 3-channel state dict whose shapes fit ``model``, with four partially shared Phi convs."""
    torch.manual_seed(3)
    donor = AQVAE(**{**TINY, "in_channels": 3})
    state = {}
    for prefix, module in (("encoder", donor.encoder), ("decoder", donor.decoder)):
        for name, tensor in module.state_dict().items():
            if ".film." not in name:
                top_level = name.startswith(("quant_conv.", "post_quant_conv."))
                state[name if top_level else f"{prefix}.{name}"] = tensor
    for k in range(4):
        state[f"quantize.quant_resi.qresi_ls.{k}.weight"] = torch.full_like(model.phi[0].conv.weight, float(k))
        state[f"quantize.quant_resi.qresi_ls.{k}.bias"] = torch.full_like(model.phi[0].conv.bias, float(k))
    state["quantize.embedding.weight"] = torch.randn(64, 8)
    return state


def test_load_var_weights_maps_shared_phi_convs_by_var_ticks(tmp_path):
    model = _tiny()
    state = _var_state_for(model)
    torch.save(state, tmp_path / "vae_ch16v64z8.pth")
    codebook = model.quantizer.codebook.clone()
    model.load_var_weights(tmp_path / "vae_ch16v64z8.pth")
    # VAR's ticks for K = 4 are linspace(1/12, 11/12, 4) = (0.083, 0.361, 0.639, 0.917); level l sits at l / 5.
    assert [int(phi.conv.bias[0].item()) for phi in model.phi] == [0, 0, 1, 2, 3, 3]
    assert torch.equal(model.encoder.conv_in.weight, state["encoder.conv_in.weight"][:, :2])
    assert torch.equal(model.quantizer.codebook, codebook)  # re-initialised codebook, as in the paper
    model.load_var_weights(state, load_codebook=True)
    assert torch.equal(model.quantizer.codebook, state["quantize.embedding.weight"])
    broken = {k: v for k, v in state.items() if k != "quantize.quant_resi.qresi_ls.2.bias"}
    with pytest.raises(ValueError, match=r"VAR key 'quantize\.quant_resi\.qresi_ls\.2\.bias' is missing"):
        _tiny().load_var_weights(broken)

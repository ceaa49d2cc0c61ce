"""MIAR transformer: RoPE really in its attention, block-causal teacher forcing, cached decoding equal to
recomputation, a frozen tokenizer that no MIAR state dict carries, and clear errors for bad settings."""

import pytest
import torch
from torch import nn

from direct_nextaccel.core.checkpoints import CheckpointError
from direct_nextaccel.miar.miar import MIAR, check_decoding
from direct_nextaccel.miar.msvqvae import MSVQVAE
from direct_nextaccel.modules.transformer import token_cross_entropy

TOKENIZER = {
    "base_channels": 8,
    "channel_multipliers": (1, 2, 2, 2),
    "num_res_blocks": 1,
    "latent_dim": 8,
    "codebook_size": 32,
    "scales": (1, 2, 3, 4),
    "image_size": (32, 32),
}
TRANSFORMER = {"depth": 2, "embed_dim": 32, "num_heads": 2}


@pytest.fixture(scope="module")
def trained_tokenizer() -> MSVQVAE:
    torch.manual_seed(0)
    tokenizer = MSVQVAE(**TOKENIZER, kmeans_init=True)
    tokenizer.train()
    tokenizer(torch.randn(4, 2, 32, 32))  # k-means start on this batch
    return tokenizer.eval()


@pytest.fixture
def model(trained_tokenizer) -> MIAR:
    torch.manual_seed(1)
    miar = MIAR(**TRANSFORMER, **TOKENIZER)
    miar.load_tokenizer(trained_tokenizer.state_dict())
    miar.init_context_encoder_from(trained_tokenizer.encoder.state_dict())
    return miar.eval()


@pytest.fixture
def batch(trained_tokenizer) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(2)
    hr = torch.randn(2, 2, 32, 32)
    tokens, _ = trained_tokenizer.tokenize(hr)
    return torch.randn(2, 2, 32, 32), tokens


def test_rope_is_applied_in_the_attention(model, batch):
    """Every block's self-attention rotates with the one Rope2D; permuting the positions of the finest scale's
    tokens in its tables changes the logits (with no other change to the model or the input)."""
    lr, tokens = batch
    assert all(block.self_attn.rope is model.rope for block in model.blocks)
    with torch.no_grad():
        before = model(lr, tokens)
        last = model.rope.scale_slice(len(model.scales) - 1)
        permutation = torch.randperm(last.stop - last.start, generator=torch.Generator().manual_seed(0))
        for table in (model.rope.cos, model.rope.sin):
            table[last] = table[last][permutation]
        after = model(lr, tokens)
    assert torch.equal(before[0], after[0])  # the start token attends only to itself: nothing moved
    assert not torch.allclose(before[-1], after[-1])


def test_without_rope_the_tables_are_gone():
    model = MIAR(**TRANSFORMER, **TOKENIZER, use_rope=False)
    assert model.rope is None and all(block.self_attn.rope is None for block in model.blocks)


def test_teacher_forcing_is_block_causal(model, batch):
    """Logits of scale k depend on the tokens of scales < k only."""
    lr, tokens = batch
    changed = [*tokens[:2], (tokens[2] + 1) % 32, (tokens[3] + 1) % 32]
    with torch.no_grad():
        original, perturbed = model(lr, tokens), model(lr, changed)
    for k in range(3):
        torch.testing.assert_close(original[k], perturbed[k])
    assert not torch.allclose(original[3], perturbed[3])


@pytest.mark.parametrize(("mode", "beam_k"), [("argmax", 1), ("beam", 1), ("beam", 3)])
def test_cached_decoding_equals_recomputation(model, batch, mode, beam_k):
    lr, _ = batch
    cached = model.generate(lr, mode=mode, beam_k=beam_k)
    recomputed = model.generate(lr, mode=mode, beam_k=beam_k, use_cache=False)
    assert [tuple(t.shape) for t in cached] == [(2, s, s) for s in model.scales]
    for a, b in zip(cached, recomputed, strict=True):
        assert torch.equal(a, b)


def test_argmax_rollout_is_the_teacher_forced_argmax_of_itself(model, batch):
    """The KV-cached rollout and the block-causal training pass are the same function."""
    lr, _ = batch
    tokens = model.generate(lr, mode="argmax")
    with torch.no_grad():
        logits = model(lr, tokens)
    for t, scale_logits in zip(tokens, logits, strict=True):
        assert torch.equal(t.flatten(1), scale_logits.argmax(dim=-1))
    image = model.super_resolve(lr, mode="argmax")
    torch.testing.assert_close(image, model.tokenizer.decode_indices(tokens))


def test_tokenizer_is_frozen_and_the_lr_encoder_starts_from_it(model, trained_tokenizer, batch):
    for key, value in trained_tokenizer.encoder.state_dict().items():
        assert torch.equal(model.context_encoder.state_dict()[key], value)
    model.train()
    assert not model.tokenizer.training and model.context_encoder.training
    lr, tokens = batch
    loss, accuracy = token_cross_entropy(model(lr, tokens), tokens)
    loss.backward()
    assert 0.0 <= float(accuracy) <= 1.0
    assert all(p.grad is None and not p.requires_grad for p in model.tokenizer.parameters())
    assert model.context_encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.head.weight.grad.abs().sum() > 0


def test_token_cross_entropy_by_hand():
    logits = [torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[10.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])]
    tokens = [torch.tensor([[[1]]]), torch.tensor([[[0, 1], [1, 1]]])]
    loss, accuracy = token_cross_entropy(logits, tokens)
    log2 = torch.log(torch.tensor(2.0))
    expected = (log2 + torch.nn.functional.cross_entropy(torch.tensor([[10.0, 0.0]]), torch.tensor([0])) + 3 * log2) / 5
    torch.testing.assert_close(loss, expected)
    assert accuracy.item() == pytest.approx(1 / 5)  # only the confident token; ties go to index 0


def test_rope_head_dimension_must_be_divisible_by_four():
    with pytest.raises(ValueError, match=r"^2D RoPE head dimension 6 \(embed_dim 24 / num_heads 4\) is not divisible"):
        MIAR(depth=1, embed_dim=24, num_heads=4, **TOKENIZER)
    MIAR(depth=1, embed_dim=24, num_heads=4, use_rope=False, **TOKENIZER)  # the ablation has no such constraint


@pytest.mark.parametrize("beam_k", [0, 4, True])
def test_beam_k_outside_one_to_three_is_refused(model, batch, beam_k):
    with pytest.raises(ValueError, match=rf"^beam_k {beam_k!r} is not one of \(1, 2, 3\)$"):
        model.generate(batch[0], mode="beam", beam_k=beam_k)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "greedy"}, r"decoding 'greedy' is not one of"),
        ({"mode": "top_k_top_p", "temperature": 0.0}, r"temperature 0.0 must be positive"),
        ({"mode": "top_k_top_p", "top_p": 1.5}, r"top_p 1.5 is not in \(0, 1\]"),
        ({"mode": "beam", "beam_alpha": -1.0}, r"beam_alpha -1.0 must be non-negative"),
    ],
)
def test_bad_decoding_settings_name_the_value(settings, message):
    arguments = {"mode": "beam", "beam_k": 1, "beam_alpha": 1.0, "top_k": 0, "top_p": 1.0, "temperature": 1.0}
    with pytest.raises(ValueError, match=message):
        check_decoding(**{**arguments, **settings})


def test_tokenizer_of_another_shape_is_refused(model):
    other = MSVQVAE(**{**TOKENIZER, "codebook_size": 16})
    with pytest.raises(ValueError, match=r"has 'quantizer.codebook' of shape \(16, 8\), .* needs \(32, 8\)"):
        model.load_tokenizer(other.state_dict())


def test_state_dict_leaves_the_tokenizer_out_and_loads_without_it(model):
    state = model.state_dict()
    assert "head.weight" in state and not any(key.startswith("tokenizer.") for key in state)
    assert any(name.startswith("tokenizer.") for name, _ in model.named_parameters())  # still a submodule
    torch.manual_seed(5)
    other = MIAR(**TRANSFORMER, **TOKENIZER)
    other.load_tokenizer(model.tokenizer.state_dict())
    assert other.load_state_dict(state) == ([], [])  # strict: nothing missing, nothing unexpected
    assert all(torch.equal(other.state_dict()[key], value) for key, value in state.items())
    wrapped = nn.ModuleDict({"module": other})  # a wrapper's prefix, as DistributedDataParallel's module.
    assert set(wrapped.state_dict()) == {f"module.{key}" for key in state}
    assert wrapped.load_state_dict({f"module.{key}": value for key, value in state.items()}) == ([], [])


def test_tokenizer_weights_of_an_older_state_are_checked_then_ignored(model, trained_tokenizer):
    older = {**model.state_dict(), **{f"tokenizer.{k}": v for k, v in model.tokenizer.state_dict().items()}}
    other = MIAR(**TRANSFORMER, **TOKENIZER)
    other.load_tokenizer(trained_tokenizer.state_dict(), source="the trained tokenizer")
    assert other.load_state_dict(older) == ([], [])  # the same tokenizer: loads, nothing unexpected
    older["tokenizer.quantizer.codebook"] = older["tokenizer.quantizer.codebook"] + 1
    with pytest.raises(CheckpointError, match=r"\(the trained tokenizer\): 'quantizer\.codebook' differs") as error:
        other.load_state_dict(older)
    assert "\n" not in str(error.value)
    with pytest.raises(
        CheckpointError, match=r"\(none loaded \(MIAREngine loads it from model\.tokenizer_checkpoint\)\)"
    ):
        MIAR(**TRANSFORMER, **TOKENIZER).load_state_dict(older)


# Multi-contrast conditioning (reference_contrast) -------------------------------------------------------------------


def test_reference_contrast_starts_as_the_single_contrast_model(model, trained_tokenizer, batch):
    """Loaded from the same tokenizer and sharing the transformer, the T1-guided model's logits and decoded tokens
    equal the single-contrast model's for any reference, because the reference channel's weights start at zero."""
    guided = MIAR(**TRANSFORMER, **TOKENIZER, reference_contrast=True)
    guided.load_tokenizer(trained_tokenizer.state_dict())
    guided.init_context_encoder_from(trained_tokenizer.encoder.state_dict())
    shared = {k: v for k, v in model.state_dict().items() if not k.startswith("context_encoder.")}
    guided.load_state_dict(shared, strict=False)
    guided.eval()
    weight = guided.context_encoder.conv_in.weight  # base, 3, 3, 3
    assert torch.equal(weight[:, :2], trained_tokenizer.encoder.conv_in.weight)
    assert torch.equal(weight[:, 2:], torch.zeros_like(weight[:, 2:]))
    lr, tokens = batch
    reference = torch.rand(2, 32, 32) * 50
    with torch.no_grad():
        for single, multi in zip(model(lr, tokens), guided(lr, tokens, reference), strict=True):
            torch.testing.assert_close(multi, single, rtol=0, atol=1e-6)  # exact on CPU; summation order may vary
        single_tokens = model.generate(lr, mode="argmax")
        guided_tokens = guided.generate(lr, mode="argmax", reference_image=reference)
    assert all(torch.equal(a, b) for a, b in zip(single_tokens, guided_tokens, strict=True))


def test_reference_contrast_reaches_the_encoder_once_trained(trained_tokenizer, batch):
    guided = MIAR(**TRANSFORMER, **TOKENIZER, reference_contrast=True)
    guided.load_tokenizer(trained_tokenizer.state_dict())
    guided.init_context_encoder_from(trained_tokenizer.encoder.state_dict())
    guided.train()
    lr, tokens = batch
    loss, _ = token_cross_entropy(guided(lr, tokens, torch.rand(2, 32, 32)), tokens)
    loss.backward()
    assert guided.context_encoder.conv_in.weight.grad[:, 2].abs().sum() > 0  # the zero weights do learn
    with torch.no_grad():
        guided.context_encoder.conv_in.weight[:, 2].fill_(0.1)
        guided.eval()
        first = guided(lr, tokens, torch.rand(2, 32, 32))[-1]
        second = guided(lr, tokens, torch.rand(2, 32, 32))[-1]
        scaled = guided(lr, tokens, 7.0 * torch.ones(2, 32, 32))[-1]
        unit = guided(lr, tokens, torch.ones(2, 32, 32))[-1]
    assert not torch.allclose(first, second)
    torch.testing.assert_close(scaled, unit)  # normalised by its own maximum


def test_reference_contrast_input_errors(model, trained_tokenizer, batch):
    lr, tokens = batch
    guided = MIAR(**TRANSFORMER, **TOKENIZER, reference_contrast=True)
    with pytest.raises(ValueError, match=r"reference_contrast=True and needs reference_image"):
        guided(lr, tokens)
    with pytest.raises(ValueError, match=r"reference_image must have shape \(2, 32, 32\), got \(2, 1, 32, 32\)"):
        guided(lr, tokens, torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"reference_image was given to a MIAR built with reference_contrast=False"):
        model(lr, tokens, torch.rand(2, 32, 32))

"""Tests of the NextAccel transformer: shapes, block causality, cached decoding, beam search, teacher mode, loading."""

import math

import pytest
import torch
import torch.nn.functional as F

from direct_nextaccel.nextaccel.aqvae import AQVAE
from direct_nextaccel.nextaccel.nextaccel import NextAccel, token_entropy, uncertainty_map

GRIDS = (3, 4, 5, 6, 7, 8)
VOCAB = 24
TINY = {
    "depth": 3,
    "embed_dim": 32,
    "num_heads": 2,
    "codebook_size": VOCAB,
    "latent_dim": 8,
    "token_grids": GRIDS,
    "base_channels": 8,
    "channel_multipliers": (1, 2, 2),
    "num_res_blocks": 1,
    "image_size": (32, 32),
    "context_strides": (4, 2),
}


def _tiny(seed: int = 0, **overrides) -> NextAccel:
    torch.manual_seed(seed)
    return NextAccel(**{**TINY, **overrides}).eval()


def _inputs(batch: int = 2, seed: int = 1) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = [torch.randint(0, VOCAB, (batch, g, g), generator=generator) for g in GRIDS]
    image = torch.randn(batch, 2, 32, 32, generator=generator)
    return tokens, image, torch.arange(batch) % 4


@pytest.fixture(scope="module")
def model() -> NextAccel:
    return _tiny()


@pytest.mark.parametrize("context_strides", [(4, 2), (2, 1)])
def test_forward_shapes_and_every_trainable_parameter_gets_a_gradient(context_strides):
    model = _tiny(context_strides=context_strides).train()
    tokens, image, family = _inputs()
    logits = model(tokens, image, family)
    assert [tuple(x.shape) for x in logits] == [(2, g * g, VOCAB) for g in GRIDS[1:]]
    loss = sum(F.cross_entropy(x.transpose(1, 2), t.flatten(1)) for x, t in zip(logits, tokens[1:], strict=True))
    loss.backward()
    # DIRECT wraps models in DistributedDataParallel(find_unused_parameters=False): no trainable parameter may idle.
    idle = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert idle == []
    assert not model.context_encoder.quant_conv.weight.requires_grad
    assert model.context_encoder.conv_in.weight.grad.abs().sum() > 0
    assert "codebook" in dict(model.named_buffers()) and "codebook" not in dict(model.named_parameters())


def test_context_has_one_entry_per_block_at_its_stride(model):
    _, image, family = _inputs()
    context = model.context(image, family)
    assert model.block_groups == [0, 0, 1]  # coarse stride 4 (8x8) for the first blocks, stride 2 (16x16) last
    assert [kv.keys.shape[2] for kv in context] == [64, 64, 256]


def test_block_causal_levels_ignore_finer_tokens(model):
    tokens, image, family = _inputs()
    with torch.no_grad():
        reference = model(tokens, image, family)
        changed = [t.clone() for t in tokens]
        changed[3] = (changed[3] + 1) % VOCAB  # level 3 is the input of level 4's prediction
        logits = model(changed, image, family)
    for level in (1, 2, 3):
        assert torch.equal(logits[level - 1], reference[level - 1]), level
    for level in (4, 5):
        assert not torch.allclose(logits[level - 1], reference[level - 1]), level


def test_cached_generation_equals_full_recompute(model):
    tokens, image, family = _inputs()
    cached, cached_probs = model.generate(tokens[0], image, family, return_probs=True)
    full, full_probs = model.generate(tokens[0], image, family, use_cache=False, return_probs=True)
    assert [tuple(t.shape) for t in cached] == [(2, g, g) for g in GRIDS]
    assert cached[0] is tokens[0]
    for a, b in zip(cached, full, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(cached_probs, full_probs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # The rollout's probabilities are the teacher-forced ones of the tokens it chose.
    with torch.no_grad():
        forced = model(cached, image, family)
    for p, logits, g in zip(cached_probs, forced, GRIDS[1:], strict=True):
        torch.testing.assert_close(p, logits.softmax(-1).view(2, g, g, VOCAB), atol=1e-5, rtol=1e-4)


def test_argmax_is_bit_identical_across_runs(model):
    tokens, image, family = _inputs()
    first, first_probs = model.generate(tokens[0], image, family, return_probs=True)
    second, second_probs = model.generate(tokens[0], image, family, return_probs=True)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(first_probs, second_probs, strict=True))


def test_sampling_modes_follow_the_generator(model):
    tokens, image, family = _inputs()
    runs = [
        model.generate(
            tokens[0], image, family, mode=mode, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(3)
        )
        for mode in ("multinomial", "multinomial", "top_k_top_p")
    ]
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    argmax = model.generate(tokens[0], image, family)
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], argmax, strict=True))
    for run in runs:
        assert all(int(t.min()) >= 0 and int(t.max()) < VOCAB for t in run)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_beam_search_returns_valid_tokens_with_and_without_cache(model, k):
    tokens, image, family = _inputs()
    beam, probs = model.generate(tokens[0], image, family, mode="beam", beam_k=k, return_probs=True)
    assert [tuple(t.shape) for t in beam] == [(2, g, g) for g in GRIDS]
    assert all(t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) < VOCAB for t in beam)
    assert [tuple(p.shape) for p in probs] == [(2, g, g, VOCAB) for g in GRIDS[1:]]
    torch.testing.assert_close(probs[0].sum(-1), torch.ones(2, GRIDS[1], GRIDS[1]))
    full = model.generate(tokens[0], image, family, mode="beam", beam_k=k, use_cache=False)
    assert all(torch.equal(a, b) for a, b in zip(beam, full, strict=True))
    # The last level is argmax given the chosen path (see decoding.beam_search).
    assert torch.equal(beam[-1], probs[-1].argmax(-1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "beam", "beam_k": 4}, "beam_k 4"),
        ({"mode": "beam", "beam_k": 2, "beam_alpha": -1.0}, "beam_alpha -1.0"),
        ({"mode": "top_k_top_p", "top_p": 0.0}, "top_p 0.0"),
        ({"mode": "top_k_top_p", "top_p": 1.5}, "top_p 1.5"),
        ({"mode": "top_k_top_p", "top_k": -2}, "top_k -2"),
        ({"mode": "multinomial", "temperature": 0.0}, "temperature 0.0"),
        ({"mode": "greedy"}, "'greedy'"),
    ],
)
def test_generate_rejects_bad_decoding_arguments(model, kwargs, message):
    tokens, image, family = _inputs()
    with pytest.raises(ValueError, match=message):
        model.generate(tokens[0], image, family, **kwargs)


def test_input_checks_name_the_value(model):
    tokens, image, family = _inputs()
    with pytest.raises(ValueError, match=r"q32 \(level 0\) must have shape \(2, 3, 3\)"):
        model.generate(tokens[1], image, family)
    with pytest.raises(ValueError, match="mask family 7"):
        model.generate(tokens[0], image, torch.tensor([0, 7]))
    with pytest.raises(ValueError, match=r"image32 must have shape \(B, 2, 32, 32\)"):
        model(tokens, image[..., :16], family)
    bad = [t.clone() for t in tokens]
    bad[2][0, 0, 0] = VOCAB
    with pytest.raises(ValueError, match=f"token {VOCAB} of tokens\\[2\\]"):
        model(bad, image, family)
    with pytest.raises(ValueError, match="expected token maps of 6 levels, got 5"):
        model(tokens[:5], image, family)


def test_privileged_context_is_required_for_the_teacher_and_refused_for_the_student(model):
    teacher = _tiny(privileged_context=True)
    tokens, image, family = _inputs()
    fs_image = torch.randn_like(image)
    with torch.no_grad():
        reference = teacher(tokens, image, family, fs_image=fs_image)
        changed = teacher(tokens, image, family, fs_image=fs_image + 1.0)
    assert all(not torch.allclose(a, b) for a, b in zip(reference, changed, strict=True))
    assert teacher.context(image, family, fs_image)[0].keys.shape[2] == 2 * 64  # R32 and FS tokens
    with pytest.raises(ValueError, match="privileged_context=True needs fs_image"):
        teacher(tokens, image, family)
    with pytest.raises(ValueError, match="privileged_context=False"):
        model(tokens, image, family, fs_image=fs_image)
    with pytest.raises(ValueError, match=r"fs_image must have shape \(2, 2, 32, 32\)"):
        teacher(tokens, image, family, fs_image=fs_image[:1])
    rollout = teacher.generate(tokens[0], image, family, fs_image=fs_image)
    assert [tuple(t.shape) for t in rollout] == [(2, g, g) for g in GRIDS]
    # A teacher is a student plus one source embedding per context stride: the student's weights load into it.
    missing = teacher.load_state_dict(model.state_dict(), strict=False).missing_keys
    assert missing == ["source_embed.0", "source_embed.1"]


def test_set_codebook_copies_and_checks_the_shape():
    model = _tiny()
    tokens, image, family = _inputs()
    with torch.no_grad():
        before = model(tokens, image, family)
    codebook = torch.randn(VOCAB, 8)
    model.set_codebook(codebook)
    assert torch.equal(model.codebook, codebook) and model.codebook.data_ptr() != codebook.data_ptr()
    with torch.no_grad():
        after = model(tokens, image, family)
    assert not torch.allclose(before[0], after[0])
    with pytest.raises(ValueError, match=r"shape \(4096, 32\) does not fit .* = 24 x 8"):
        model.set_codebook(torch.randn(4096, 32))
    with pytest.raises(ValueError, match=r"shape \(24, 16\) does not fit .* = 24 x 8"):
        model.set_codebook(torch.randn(VOCAB, 16))


def test_context_encoder_initialises_from_the_aqvae_encoder():
    model = _tiny()
    aqvae_args = {k: TINY[k] for k in ("base_channels", "channel_multipliers", "num_res_blocks", "latent_dim")}
    aqvae_args.update(codebook_size=VOCAB, token_grids=GRIDS, image_size=(32, 32), context_strides=(2, 4))
    torch.manual_seed(5)
    aqvae = AQVAE(**aqvae_args)
    model.init_context_encoder_from(aqvae.encoder.state_dict())
    model.set_codebook(aqvae.quantizer.codebook)
    for key, value in aqvae.encoder.state_dict().items():
        assert torch.equal(model.context_encoder.state_dict()[key], value), key
    wider = AQVAE(**{**aqvae_args, "base_channels": 16})
    with pytest.raises(ValueError, match=r"has 'conv_in.weight' of shape \(16, 2, 3, 3\).* needs \(8, 2, 3, 3\)"):
        model.init_context_encoder_from(wider.encoder.state_dict())
    with pytest.raises(ValueError, match=r"no key 'conv_in\.weight'"):
        model.init_context_encoder_from(aqvae.state_dict())


def test_uncertainty_map_weights_levels_by_their_share_of_the_fused_latent():
    uniform = [torch.full((2, g, g, VOCAB), 1.0 / VOCAB) for g in GRIDS[1:]]
    certain = [F.one_hot(torch.zeros(2, g, g, dtype=torch.long), VOCAB).float() for g in GRIDS[1:]]
    torch.testing.assert_close(token_entropy(uniform)[0], torch.full((2, 4, 4), math.log(VOCAB)))
    torch.testing.assert_close(uncertainty_map(uniform, (32, 32)), torch.full((2, 32, 32), 5 / 6))
    assert torch.equal(uncertainty_map(certain, (32, 32)), torch.zeros(2, 32, 32))
    mixed = [uniform[0], *certain[1:]]
    torch.testing.assert_close(uncertainty_map(mixed, (16, 24)), torch.full((2, 16, 24), 1 / 6))


def test_constructor_checks():
    with pytest.raises(ValueError, match=r"token_grids \(4, 3\)"):
        NextAccel(**{**TINY, "token_grids": (4, 3)})
    with pytest.raises(ValueError, match=r"context_strides \(4, 2\) must name between 1 and depth=1"):
        NextAccel(**{**TINY, "depth": 1})
    with pytest.raises(ValueError, match=r"image_size \(30, 32\)"):
        NextAccel(**{**TINY, "image_size": (30, 32)})
    NextAccel(**TINY, forward_operator=object(), backward_operator=object())  # DIRECT passes its operators


def test_paper_configuration_builds():
    # A CPU build of the paper size initialises ~400M weights (about 20 s on 2 cores); shapes are what matter here.
    with torch.device("meta"):
        model = NextAccel()
    assert sum(p.numel() for p in model.parameters()) == 401_868_768
    assert sum(p.numel() for p in model.context_encoder.parameters()) == 44_205_280
    assert model.block_groups == [0] * 6 + [1] * 5 + [2] * 5  # 16x16, 32x32, 64x64 features at 256x256
    assert sum(model.lengths) == 990  # 12^2 + ... + 16^2 query tokens
    assert model.codebook.shape == (4096, 32) and model.head.out_features == 4096
    assert [block.cross_attn.kv.in_features for block in model.blocks] == [640] * 6 + [320] * 10

"""The plain ViT: block outputs, positional resampling, timm's parameter names, and BiomedCLIP checkpoint loading."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from direct_nextaccel.modules.vit import TRUNK_PREFIX, VisionTransformer, load_biomedclip_visual

TINY = {"image_size": 32, "patch_size": 8, "dim": 32, "depth": 4, "num_heads": 4}


def tiny_vit(seed: int = 0, **overrides) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(**{**TINY, **overrides}).eval()


def open_clip_checkpoint(vit: VisionTransformer, path, extra=None, drop=(), rename=None):
    """An open_clip-like file: the ViT under ``visual.trunk.`` next to entries of other towers."""
    state = {TRUNK_PREFIX + key: value for key, value in vit.state_dict().items()}
    state["visual.head.proj.weight"] = torch.randn(16, vit.pos_embed.shape[-1])
    state["text.transformer.embeddings.word_embeddings.weight"] = torch.randn(10, 8)
    state["logit_scale"] = torch.tensor(4.6)
    for key in drop:
        del state[key]
    for old, new in (rename or {}).items():
        state[new] = state.pop(old)
    state.update(extra or {})
    torch.save(state, path)
    return path


def test_parameter_names_are_timms():
    names = set(VisionTransformer(**{**TINY, "depth": 1}).state_dict())
    layers = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
    block = {f"blocks.0.{layer}.{kind}" for layer in layers for kind in ("weight", "bias")}
    expected = {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "norm.bias",
    }
    assert names == expected | block


def test_vit_b16_parameter_count():
    # timm's vit_base_patch16_224 without its classifier: 85,798,656 parameters; counted on the meta device.
    with torch.device("meta"):
        vit = VisionTransformer()
    assert sum(p.numel() for p in vit.parameters()) == 85_798_656


@pytest.mark.parametrize(("height", "width"), [(32, 32), (48, 64)])
def test_forward_features_shapes(height, width):
    vit = tiny_vit()
    features = vit.forward_features(torch.randn(2, 3, height, width), [3, 1])
    tokens = 1 + (height // 8) * (width // 8)
    assert [f.shape for f in features] == [(2, tokens, 32)] * 2


def test_forward_features_are_the_running_residual_stream():
    vit = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    tokens = vit.embed(x)
    expected = []
    for block in vit.blocks:
        tokens = block(tokens)
        expected.append(tokens)
    features = vit.forward_features(x, [0, 2, 3])
    for got, index in zip(features, [0, 2, 3], strict=True):
        torch.testing.assert_close(got, expected[index])
    torch.testing.assert_close(vit(x), vit.norm(expected[-1]))


def test_block_matches_hand_written_attention():
    vit = tiny_vit()
    block = vit.blocks[0]
    x = torch.randn(2, 5, 32)
    q, k, v = (t.view(2, 5, 4, 8).transpose(1, 2) for t in block.attn.qkv(block.norm1(x)).chunk(3, -1))
    attended = ((q @ k.transpose(-1, -2)) / math.sqrt(8)).softmax(-1) @ v
    h = x + block.attn.proj(attended.transpose(1, 2).reshape(2, 5, 32))
    expected = h + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(h))))
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_positional_embedding_resampling():
    vit = tiny_vit()
    assert vit.positional_embedding((4, 4)) is vit.pos_embed
    with torch.no_grad():  # a constant grid stays constant under bicubic resampling
        vit.pos_embed[:, 1:] = 0.5
        vit.pos_embed[:, 0] = -1.0
    resampled = vit.positional_embedding((6, 8))
    assert resampled.shape == (1, 1 + 48, 32)
    torch.testing.assert_close(resampled[:, 0], vit.pos_embed[:, 0])
    torch.testing.assert_close(resampled[:, 1:], torch.full((1, 48, 32), 0.5))


@pytest.mark.parametrize(("indices", "bad"), [([1, 4], "4"), ([-1], "-1"), ([], "empty")])
def test_block_indices_are_checked(indices, bad):
    with pytest.raises(ValueError, match=bad):
        tiny_vit().forward_features(torch.randn(1, 3, 32, 32), indices)


def test_input_checks():
    vit = tiny_vit()
    with pytest.raises(ValueError, match="30x32"):
        vit.forward_features(torch.randn(1, 3, 30, 32), [0])
    with pytest.raises(ValueError, match=r"\(1, 1, 32, 32\)"):
        vit(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="patch_size 8"):
        VisionTransformer(image_size=36, patch_size=8)


def test_load_biomedclip_visual_round_trip(tmp_path):
    source = tiny_vit(seed=0)
    path = open_clip_checkpoint(source, tmp_path / "open_clip_pytorch_model.bin")
    target = tiny_vit(seed=1)
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(target(x), source(x))
    assert load_biomedclip_visual(target, path) is target
    assert torch.equal(target(x), source(x))
    for got, expected in zip(target.forward_features(x, [1, 3]), source.forward_features(x, [1, 3]), strict=True):
        assert torch.equal(got, expected)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"drop": ["visual.trunk.blocks.2.mlp.fc1.bias"]}, "lacks 'visual.trunk.blocks.2.mlp.fc1.bias'"),
        (
            {"rename": {"visual.trunk.blocks.0.attn.qkv.weight": "visual.trunk.blocks.0.attn.in_proj_weight"}},
            "'visual.trunk.blocks.0.attn.qkv.weight'",
        ),
        ({"extra": {"visual.trunk.fc_norm.weight": torch.ones(32)}}, "has 'visual.trunk.fc_norm.weight'"),
        ({"extra": {"visual.trunk.pos_embed": torch.zeros(1, 50, 32)}}, "'visual.trunk.pos_embed' has shape (1, 50"),
    ],
)
def test_load_biomedclip_visual_names_the_offending_key(tmp_path, change, named):
    path = open_clip_checkpoint(tiny_vit(), tmp_path / "checkpoint.bin", **change)
    with pytest.raises(ValueError, match=re.escape(named)):
        load_biomedclip_visual(tiny_vit(seed=1), path)


def test_load_biomedclip_visual_rejects_a_file_without_a_trunk(tmp_path):
    path = tmp_path / "other.bin"
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=re.escape("no 'visual.trunk.*' entries")):
        load_biomedclip_visual(tiny_vit(), path)

"""Transformer blocks: the block-causal mask really isolates scales, and cached scale-by-scale inference equals it."""

import pytest
import torch
from torch import nn

from direct_nextaccel.modules.attention import KVCache
from direct_nextaccel.modules.rope import Rope2D
from direct_nextaccel.modules.transformer import AdaLNBlock, DropPath, RMSNormBlock, block_causal_mask

GRIDS = [(1, 1), (2, 2), (3, 3)]
LENGTHS = [h * w for h, w in GRIDS]
DIM, HEADS, CONTEXT_DIM, COND_DIM = 16, 2, 6, 5


class Stack(nn.Module):
    """Two blocks of one kind sharing a context, as a model would run them."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        if kind == "adaln":
            self.blocks = nn.ModuleList(
                AdaLNBlock(DIM, HEADS, COND_DIM, CONTEXT_DIM, drop_path=0.1, qk_norm=True) for _ in range(2)
            )
        else:
            rope = Rope2D(DIM // HEADS, GRIDS)
            self.blocks = nn.ModuleList(
                RMSNormBlock(DIM, HEADS, CONTEXT_DIM, drop_path=0.1, rope=rope) for _ in range(2)
            )
        self.head = nn.Linear(DIM, 7)

    def forward(self, x, cond, context_kv, attn_mask=None, caches=None):
        for i, block in enumerate(self.blocks):
            cache = None if caches is None else caches[i]
            if self.kind == "adaln":
                x = block(x, cond, context_kv[i], attn_mask=attn_mask, cache=cache)
            else:
                x = block(x, context_kv[i], attn_mask=attn_mask, cache=cache)
        return x


def make_inputs(kind, seed=0):
    torch.manual_seed(seed)
    stack = Stack(kind).eval()
    x = torch.randn(2, sum(LENGTHS), DIM)
    cond = torch.randn(2, sum(LENGTHS), COND_DIM)  # one label embedding per token, e.g. per acceleration level
    context_kv = [block.precompute_context(torch.randn(2, 10, CONTEXT_DIM)) for block in stack.blocks]
    return stack, x, cond, context_kv


def test_block_causal_mask_by_hand():
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(block_causal_mask([1, 2, 3]), expected)
    with pytest.raises(ValueError, match=r"lengths \[2, 0\]"):
        block_causal_mask([2, 0])


@pytest.mark.parametrize("kind", ["adaln", "rmsnorm"])
def test_earlier_scales_ignore_later_tokens(kind):
    stack, x, cond, context_kv = make_inputs(kind)
    changed = x.clone()
    changed[:, LENGTHS[0] + LENGTHS[1] :] = torch.randn_like(changed[:, LENGTHS[0] + LENGTHS[1] :])
    head = LENGTHS[0] + LENGTHS[1]
    mask = block_causal_mask(LENGTHS)
    with torch.no_grad():
        before = stack(x, cond, context_kv, attn_mask=mask)
        after = stack(changed, cond, context_kv, attn_mask=mask)
        unmasked_before = stack(x, cond, context_kv)
        unmasked_after = stack(changed, cond, context_kv)
    torch.testing.assert_close(after[:, :head], before[:, :head], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(after[:, head:], before[:, head:])
    # Without the mask the same change leaks backwards, so the check above can fail.
    assert not torch.allclose(unmasked_after[:, :head], unmasked_before[:, :head])


@pytest.mark.parametrize("kind", ["adaln", "rmsnorm"])
def test_kv_cache_equals_masked_full_sequence(kind):
    stack, x, cond, context_kv = make_inputs(kind)
    with torch.no_grad():
        full = stack(x, cond, context_kv, attn_mask=block_causal_mask(LENGTHS))
        caches = [KVCache() for _ in stack.blocks]
        cached = torch.cat(
            [
                stack(x_s, cond_s, context_kv, caches=caches)
                for x_s, cond_s in zip(x.split(LENGTHS, dim=1), cond.split(LENGTHS, dim=1), strict=True)
            ],
            dim=1,
        )
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    assert torch.equal(stack.head(cached).argmax(-1), stack.head(full).argmax(-1))
    assert all(cache.length == sum(LENGTHS) for cache in caches)


def test_adaln_accepts_one_condition_per_sample():
    stack, x, cond, context_kv = make_inputs("adaln")
    block = stack.blocks[0]
    per_sample = cond[:, 0]  # B, D
    with torch.no_grad():
        out = block(x, per_sample, context_kv[0])
        broadcast = block(x, per_sample[:, None].expand(-1, x.shape[1], -1), context_kv[0])
    torch.testing.assert_close(out, broadcast)


def test_drop_path():
    x = torch.ones(400, 3)
    drop = DropPath(0.25)
    assert torch.equal(drop.eval()(x), x)
    out = drop.train()(x)
    kept = out[:, 0] != 0
    assert torch.all(out[kept] == 1 / 0.75) and torch.all(out[~kept] == 0)
    assert 0.6 < kept.float().mean() < 0.9
    with pytest.raises(ValueError, match=r"probability 1\.0"):
        DropPath(1.0)


def test_swiglu_hidden_width_matches_gelu_parameter_budget():
    block = RMSNormBlock(dim=48, num_heads=4, context_dim=8, mlp_ratio=4.0)
    assert block.mlp.gate_up.out_features == 2 * 128 and block.mlp.out.in_features == 128

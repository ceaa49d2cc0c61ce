"""Self-/cross-attention against a hand-written reference, and the KV cache against the masked full sequence."""

import math

import pytest
import torch

from direct_nextaccel.modules.attention import CrossAttention, KVCache, SelfAttention
from direct_nextaccel.modules.transformer import block_causal_mask


def reference_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d)) v over (B, H, L, D) tensors, with a boolean mask (True = may attend)."""
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return logits.softmax(-1) @ v


def heads(x, num_heads):
    return x.view(x.shape[0], x.shape[1], num_heads, -1).transpose(1, 2)


def test_self_attention_matches_reference():
    torch.manual_seed(0)
    attn = SelfAttention(dim=12, num_heads=3)
    x = torch.randn(2, 5, 12)
    mask = block_causal_mask([2, 3])
    q, k, v = (heads(t, 3) for t in attn.qkv(x).chunk(3, -1))
    expected = attn.proj(reference_attention(q, k, v, mask).transpose(1, 2).reshape(2, 5, 12))
    torch.testing.assert_close(attn(x, attn_mask=mask), expected, atol=1e-6, rtol=1e-5)


def test_cross_attention_precomputed_context_equals_recomputing():
    torch.manual_seed(0)
    attn = CrossAttention(dim=8, context_dim=6, num_heads=2)
    context = torch.randn(2, 7, 6)
    context_kv = attn.precompute_context(context)
    for length in (1, 4, 9):  # the same K/V serve every scale of a rollout
        x = torch.randn(2, length, 8)
        k, v = (heads(t, 2) for t in attn.kv(context).chunk(2, -1))
        expected = attn.proj(reference_attention(heads(attn.q(x), 2), k, v).transpose(1, 2).reshape(2, length, 8))
        torch.testing.assert_close(attn(x, context_kv), expected, atol=1e-6, rtol=1e-5)
    assert context_kv.keys.shape == (2, 2, 7, 4)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_cached_scales_equal_masked_full_sequence(qk_norm):
    torch.manual_seed(0)
    attn = SelfAttention(dim=8, num_heads=2, qk_norm=qk_norm)
    lengths = [1, 4, 9]
    x = torch.randn(3, sum(lengths), 8)
    full = attn(x, attn_mask=block_causal_mask(lengths))
    cache = KVCache()
    pieces = [attn(chunk, cache=cache) for chunk in x.split(lengths, dim=1)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == sum(lengths)


def test_kv_cache_append_and_reset():
    cache = KVCache()
    assert cache.length == 0
    k1, v1 = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    cache.append(k1, v1)
    keys, values = cache.append(torch.randn(2, 3, 2, 5), torch.randn(2, 3, 2, 5))
    assert cache.length == 6 and keys.shape == values.shape == (2, 3, 6, 5)
    torch.testing.assert_close(keys[:, :, :4], k1)
    cache.reset()
    assert cache.length == 0 and cache.keys is None and cache.values is None


@pytest.mark.parametrize("cls, args", [(SelfAttention, (10, 3)), (CrossAttention, (10, 4, 3))])
def test_heads_must_divide_dim(cls, args):
    with pytest.raises(ValueError, match="num_heads 3"):
        cls(*args)

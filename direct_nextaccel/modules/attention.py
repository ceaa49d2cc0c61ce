"""Self- and cross-attention for scale-wise autoregressive transformers, with an explicit per-layer KV cache.

Inference runs one scale at a time: the tokens of the new scale attend to the cached keys/values of every previous
scale and to each other, which is exactly what the block-causal training mask allows, so no mask is needed then.
The caches are plain objects the caller creates, passes to each call and drops when a sample is done.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Rotary embedding hook: (x (B, heads, L, head_dim), positions of those L tokens in the full sequence) -> rotated x.
RotaryFn = Callable[[Tensor, slice], Tensor]


@dataclass
class KVCache:
    """Keys and values of the tokens one attention layer has already seen.

    Attributes
    ----------
    keys, values : Tensor or None
        Shape (B, heads, L_past, head_dim); ``None`` while empty. Batch is dimension 0, so a decoder can select or
        repeat samples (beam candidates) by indexing both tensors.
    """

    keys: Tensor | None = None
    values: Tensor | None = None

    @property
    def length(self) -> int:
        """Number of cached tokens."""
        return 0 if self.keys is None else self.keys.shape[2]

    def append(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Add the keys/values of new tokens (B, heads, L_new, head_dim) and return all cached ones so far."""
        if self.keys is None or self.values is None:
            self.keys, self.values = keys, values
        else:
            # torch.cat makes new tensors, so a copy of this cache taken before (a beam candidate) is left untouched.
            self.keys = torch.cat((self.keys, keys), dim=2)
            self.values = torch.cat((self.values, values), dim=2)
        return self.keys, self.values

    def reset(self) -> None:
        """Forget every cached token."""
        self.keys = None
        self.values = None


@dataclass
class ContextKV:
    """Cross-attention keys and values of a fixed context, computed once per sample and reused at every scale.

    Attributes
    ----------
    keys, values : Tensor
        Shape (B, heads, N, head_dim), batch first like :class:`KVCache`.
    """

    keys: Tensor
    values: Tensor


def _split_heads(x: Tensor, num_heads: int) -> Tensor:
    batch, length, dim = x.shape
    return x.view(batch, length, num_heads, dim // num_heads).transpose(1, 2)  # B, H, L, Dh


def _merge_heads(x: Tensor) -> Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)  # B, L, C


def _check_heads(dim: int, num_heads: int) -> None:
    if num_heads < 1 or dim % num_heads != 0:
        raise ValueError(f"num_heads {num_heads} does not divide the embedding dimension {dim}")


class SelfAttention(nn.Module):
    """Multi-head self-attention over a sequence of concatenated scales.

    Parameters
    ----------
    dim : int
        Embedding dimension C.
    num_heads : int
        Number of heads; must divide ``dim``.
    qk_norm : bool
        Cosine attention as in VAR: queries and keys are L2-normalised per head and the logits scaled by a learned
        per-head temperature (capped at 100), which keeps attention logits bounded in deep, low-precision training.
    rope : callable, optional
        Rotary embedding applied to queries and keys, called as ``rope(x, positions)`` with x (B, heads, L, head_dim)
        and ``positions`` the slice those L tokens occupy in the full multi-scale sequence (e.g. :class:`Rope2D`).
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False, rope: RotaryFn | None = None) -> None:
        super().__init__()
        _check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope
        self.log_temperature = nn.Parameter(torch.full((1, num_heads, 1, 1), math.log(4.0))) if qk_norm else None

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """Attend ``x`` (B, L, C) to itself and to everything in ``cache``.

        Parameters
        ----------
        x : Tensor
            New tokens, shape (B, L, C).
        attn_mask : Tensor, optional
            Boolean (True = may attend) or additive float mask broadcastable to (B, heads, L, L_past + L).
            Training passes :func:`~direct_nextaccel.modules.transformer.block_causal_mask`; cached inference of a
            whole scale passes nothing.
        cache : KVCache, optional
            Keys/values of earlier tokens of this layer; the new ones are appended to it.

        Returns
        -------
        Tensor
            Shape (B, L, C).
        """
        q, k, v = (_split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))  # B, H, L, Dh each
        scale = None
        if self.log_temperature is not None:
            q = F.normalize(q, dim=-1) * self.log_temperature.clamp(max=math.log(100.0)).exp()
            k = F.normalize(k, dim=-1)
            scale = 1.0
        if self.rope is not None:
            past = 0 if cache is None else cache.length
            positions = slice(past, past + x.shape[1])
            q, k = self.rope(q, positions), self.rope(k, positions)
        if cache is not None:
            k, v = cache.append(k, v)  # B, H, L_past + L, Dh
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
        return self.proj(_merge_heads(out))


class CrossAttention(nn.Module):
    """Multi-head attention from tokens to a fixed context (e.g. encoder features of the measured image).

    Parameters
    ----------
    dim : int
        Token embedding dimension C.
    context_dim : int
        Channel dimension Cc of the context.
    num_heads : int
        Number of heads; must divide ``dim``.
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        _check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def precompute_context(self, context: Tensor) -> ContextKV:
        """Project a context (B, N, Cc) to keys and values once, so every scale of a rollout can reuse them."""
        keys, values = (_split_heads(t, self.num_heads) for t in self.kv(context).chunk(2, dim=-1))
        return ContextKV(keys, values)  # B, H, N, Dh each

    def forward(self, x: Tensor, context_kv: ContextKV) -> Tensor:
        """Attend tokens ``x`` (B, L, C) to a precomputed context; returns (B, L, C)."""
        q = _split_heads(self.q(x), self.num_heads)  # B, H, L, Dh
        out = F.scaled_dot_product_attention(q, context_kv.keys, context_kv.values)
        return self.proj(_merge_heads(out))

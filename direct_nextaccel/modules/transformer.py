"""Transformer blocks of the two scale-wise autoregressive models, the block-causal mask they train with, and the
pieces both share: the 2D sine-cosine position code, the weight initialisation and the token cross-entropy.

:class:`AdaLNBlock` is NextAccel's block (VAR's adaptive-LayerNorm block plus cross-attention to encoder features),
:class:`RMSNormBlock` is MIAR's (pre-RMSNorm, 2D RoPE self-attention, cross-attention to LR features, SwiGLU MLP).
Both take the same inputs so one decoding loop drives either model.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from direct_nextaccel.modules.attention import ContextKV, CrossAttention, KVCache, RotaryFn, SelfAttention


def block_causal_mask(lengths: list[int], device: torch.device | str | None = None) -> Tensor:
    """Boolean attention mask (True = may attend) for scales of ``lengths`` tokens concatenated in order.

    A token of scale s attends to every token of scales <= s, its own scale included, so all tokens of a scale are
    predicted in parallel from the coarser ones (VAR's ``attn_bias_for_masking``).

    Returns
    -------
    Tensor
        Shape (L, L) with L = sum(lengths).
    """
    if not lengths or any(n < 1 for n in lengths):
        raise ValueError(f"lengths {lengths} must be a non-empty list of positive token counts")
    scale_of_token = torch.repeat_interleave(
        torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device)
    )
    return scale_of_token[None, :] <= scale_of_token[:, None]


class DropPath(nn.Module):
    """Stochastic depth: during training drop a residual branch for a random subset of samples.

    Kept samples are scaled by 1 / (1 - p) so the expected branch output is unchanged; evaluation is the identity.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability {p} is not in [0, 1)")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class GeluMLP(nn.Module):
    """VAR's feed-forward network: Linear -> GELU (tanh approximation) -> Linear."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SwiGLU(nn.Module):
    """Gated MLP ``W_out(silu(W_gate x) * W_up x)`` with the gate and up projections fused into one matmul.

    "Fused" means a single Linear(dim, 2 * hidden_dim) computes both projections, whose output is split in two;
    the arithmetic is identical to two separate layers, it just launches one kernel instead of two.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden_dim)
        self.out = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.out(F.silu(gate) * up)


class AdaLNBlock(nn.Module):
    """NextAccel block: adaLN-modulated self-attention, normed cross-attention, adaLN-modulated GELU MLP.

    A condition embedding (acceleration level and mask family labels) produces six vectors per block: scale, shift
    and output gain for the self-attention input and for the MLP input (VAR). The cross-attention sub-layer sits
    between them with its own affine LayerNorm and residual, unmodulated, so the encoder features guide every
    acceleration level the same way.

    Parameters
    ----------
    dim : int
        Token embedding dimension C.
    num_heads : int
        Attention heads for self- and cross-attention.
    cond_dim : int
        Dimension D of the condition embedding.
    context_dim : int
        Channel dimension of the cross-attention context.
    mlp_ratio : float
        MLP hidden width as a multiple of ``dim``.
    drop_path : float
        Stochastic depth probability of each residual branch.
    qk_norm : bool
        Cosine self-attention (see :class:`SelfAttention`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        cond_dim: int,
        context_dim: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.self_attn = SelfAttention(dim, num_heads, qk_norm=qk_norm)
        self.cross_norm = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = CrossAttention(dim, context_dim, num_heads)
        self.mlp = GeluMLP(dim, round(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def precompute_context(self, context: Tensor) -> ContextKV:
        """Cross-attention keys/values of ``context`` (B, N, Cc) for this block."""
        return self.cross_attn.precompute_context(context)

    def forward(
        self,
        x: Tensor,
        cond: Tensor,
        context_kv: ContextKV,
        attn_mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Update tokens ``x`` (B, L, C).

        Parameters
        ----------
        x : Tensor
            Tokens, shape (B, L, C).
        cond : Tensor
            Condition embedding, (B, D) for one label per sample or (B, L, D) for one per token (e.g. per scale).
        context_kv : ContextKV
            From :meth:`precompute_context`.
        attn_mask, cache
            As in :meth:`SelfAttention.forward`.
        """
        modulation = self.ada_lin(cond)
        if modulation.ndim == 2:
            modulation = modulation[:, None]  # B, 1, 6C
        gain_attn, gain_mlp, scale_attn, scale_mlp, shift_attn, shift_mlp = modulation.chunk(6, dim=-1)
        h = self.norm(x) * (1 + scale_attn) + shift_attn
        x = x + self.drop_path(self.self_attn(h, attn_mask=attn_mask, cache=cache) * gain_attn)
        x = x + self.drop_path(self.cross_attn(self.cross_norm(x), context_kv))
        h = self.norm(x) * (1 + scale_mlp) + shift_mlp
        return x + self.drop_path(self.mlp(h) * gain_mlp)


class RMSNormBlock(nn.Module):
    """MIAR block: pre-RMSNorm residual sub-layers of 2D-RoPE self-attention, cross-attention and SwiGLU MLP.

    Parameters
    ----------
    dim : int
        Token embedding dimension C.
    num_heads : int
        Attention heads for self- and cross-attention.
    context_dim : int
        Channel dimension of the LR features attended to.
    mlp_ratio : float
        Parameter budget of the MLP relative to a ``dim -> mlp_ratio * dim -> dim`` GELU MLP: the SwiGLU hidden
        width is 2/3 of ``mlp_ratio * dim`` (rounded up to a multiple of 8), since it has three matrices, not two.
    drop_path : float
        Stochastic depth probability of each residual branch.
    rope : callable, optional
        Rotary embedding for self-attention, typically one :class:`~direct_nextaccel.modules.rope.Rope2D` shared
        by all blocks.
    qk_norm : bool
        Cosine self-attention (see :class:`SelfAttention`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        context_dim: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        rope: RotaryFn | None = None,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        hidden_dim = 8 * -(-round(2 * mlp_ratio * dim / 3) // 8)
        self.attn_norm = nn.RMSNorm(dim, eps=1e-6)
        self.self_attn = SelfAttention(dim, num_heads, qk_norm=qk_norm, rope=rope)
        self.cross_norm = nn.RMSNorm(dim, eps=1e-6)
        self.cross_attn = CrossAttention(dim, context_dim, num_heads)
        self.mlp_norm = nn.RMSNorm(dim, eps=1e-6)
        self.mlp = SwiGLU(dim, hidden_dim)
        self.drop_path = DropPath(drop_path)

    def precompute_context(self, context: Tensor) -> ContextKV:
        """Cross-attention keys/values of ``context`` (B, N, Cc) for this block."""
        return self.cross_attn.precompute_context(context)

    def forward(
        self, x: Tensor, context_kv: ContextKV, attn_mask: Tensor | None = None, cache: KVCache | None = None
    ) -> Tensor:
        """Update tokens ``x`` (B, L, C); ``attn_mask`` and ``cache`` as in :meth:`SelfAttention.forward`."""
        x = x + self.drop_path(self.self_attn(self.attn_norm(x), attn_mask=attn_mask, cache=cache))
        x = x + self.drop_path(self.cross_attn(self.cross_norm(x), context_kv))
        return x + self.drop_path(self.mlp(self.mlp_norm(x)))


def sincos_2d(rows: int, cols: int, dim: int, reference: tuple[int, int], device=None, dtype=None) -> Tensor:
    """Fixed 2D sine-cosine code (rows * cols, dim) of the image regions covered by a ``rows x cols`` grid.

    Cell (i, j) sits at its region centre ``((i + 0.5) / rows * R_h, (j + 0.5) / cols * R_w)`` with
    ``reference = (R_h, R_w)``, so grids of any size that cover the same region get the same code. Half of the
    channels code the row, half the column, each as sin/cos pairs at frequencies ``10000 ** (-k / (dim / 4))``.
    """
    if dim % 4 != 0:
        raise ValueError(f"sine-cosine position dimension {dim} is not divisible by 4")
    omega = 10000.0 ** -(torch.arange(dim // 4, device=device, dtype=torch.float64) / (dim // 4))
    row = (torch.arange(rows, device=device, dtype=torch.float64) + 0.5) / rows * reference[0]
    col = (torch.arange(cols, device=device, dtype=torch.float64) + 0.5) / cols * reference[1]
    row_angle = (row[:, None] * omega).repeat_interleave(cols, dim=0)  # rows*cols, dim/4
    col_angle = (col[:, None] * omega).repeat(rows, 1)  # rows*cols, dim/4
    code = torch.cat((row_angle.sin(), row_angle.cos(), col_angle.sin(), col_angle.cos()), dim=1)
    return code.to(torch.get_default_dtype() if dtype is None else dtype)


def init_transformer_weights(module: nn.Module) -> None:
    """VAR's initialisation of a transformer's linear and embedding layers (truncated normal, std 0.02; zero biases),
    for ``module.apply``."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.trunc_normal_(module.weight, std=0.02)


def token_cross_entropy(logits: Sequence[Tensor], tokens: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy over every token of every scale (VAR), and the fraction of tokens predicted exactly.

    Parameters
    ----------
    logits : Sequence[Tensor]
        (B, s_k^2, V) per scale.
    tokens : Sequence[Tensor]
        Targets, long (B, s_k, s_k) per scale.

    Returns
    -------
    tuple[Tensor, Tensor]
        Scalar loss and scalar accuracy.
    """
    flat_logits = torch.cat(list(logits), dim=1)  # B, L, V
    targets = torch.cat([t.flatten(1) for t in tokens], dim=1)  # B, L
    loss = F.cross_entropy(flat_logits.flatten(0, 1).float(), targets.flatten())
    accuracy = (flat_logits.argmax(dim=-1) == targets).float().mean()
    return loss, accuracy

"""MIAR's transformer: next-scale prediction of MSVQ-VAE tokens, conditioned on low-resolution features.

Sequence (paper appendix A)
    ``<SOS>, F_1, ..., F_{S-1}``: the start token predicts scale 0 (1 x 1); the input predicting scale ``k >= 1`` is
    VAR's: the cumulative latent of scales ``0..k-1`` (sum of their Phi'd, enlarged codes) area-shrunk to scale
    ``k``'s grid and projected to the embedding width. Every token of a scale is predicted in parallel; training uses
    the block-causal scale mask, inference one scale per step with a KV cache and no mask.

Blocks
    :class:`~direct_nextaccel.modules.transformer.RMSNormBlock` (paper default 4): RMSNorm, self-attention with
    scale-aligned 2D RoPE on queries and keys (one :class:`Rope2D` precomputed for all scales, shared by the
    blocks), cross-attention to the LR features, fused SwiGLU MLP.

Low-resolution control (section 3.2)
    The LR image (the zero-filled image of the super-resolution mask, i.e. the zero-padding upsampled acquisition)
    goes through a trainable copy of the MSVQ-VAE encoder, initialised from the tokenizer's
    (:meth:`MIAR.init_context_encoder_from`): its latent (C_lr = latent_dim = 32 channels on the finest token grid) is
    the cross-attention context.

Multi-contrast control (section 4.1.1, ``reference_contrast=True``)
    The fully sampled image of another contrast of the same slice (T1 guiding T2), a magnitude normalised by its own
    maximum, is one more input channel of the LR encoder. Its first convolution's weights for that channel start at
    zero (also when loaded from the tokenizer), so the model starts as exactly the single-contrast one and learns how
    much of the reference to use.

Positions
    RoPE is relative and lives in self-attention only (the shared cross-attention has no rotary hook), so queries
    would not know which LR features are theirs. Token inputs and context tokens therefore also carry a learned
    absolute code, initialised with the same 2D sine-cosine code of the image region they cover (the context grid is
    the finest token grid), and a learned per-scale embedding as in VAR. ``use_rope=False`` is the paper's RoPE
    ablation.

Decoding goes through :mod:`direct_nextaccel.modules.decoding` (argmax, sampling, MIAR's beam search), the same code
NextAccel uses; the frozen tokenizer turns the tokens into the image.

The frozen tokenizer
    MIAR holds the MSVQ-VAE as the submodule ``tokenizer`` (frozen, always in evaluation mode) because teacher
    forcing and decoding run through it and it must follow the model across devices; its weights are the engine's
    (:mod:`direct_nextaccel.miar`): :class:`~direct_nextaccel.miar.transformer_engine.MIAREngine` loads them from
    ``model.tokenizer_checkpoint`` with :meth:`MIAR.load_tokenizer`, and MIAR's ``state_dict()`` leaves every
    ``tokenizer.*`` key out, so no MIAR checkpoint carries them and loading one does not expect them. A checkpoint
    saved before that rule still carries them: it loads if they equal the loaded tokenizer's weights (they are then
    ignored) and is refused in one line if they differ (the transformer was trained on another tokenizer's tokens).
"""

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from direct_nextaccel.core.checkpoints import CheckpointError, load_exactly
from direct_nextaccel.miar.msvqvae import MSVQVAE
from direct_nextaccel.modules.attention import ContextKV, KVCache
from direct_nextaccel.modules.decoding import (
    StepFn,
    beam_search,
    check_decoding,
    decode,
    step_from_history,
)
from direct_nextaccel.modules.quantizer import resize_latent
from direct_nextaccel.modules.rope import Rope2D
from direct_nextaccel.modules.transformer import RMSNormBlock, block_causal_mask, init_transformer_weights, sincos_2d
from direct_nextaccel.modules.vqvae import Encoder

logger = logging.getLogger(__name__)

TOKENIZER_PREFIX = "tokenizer."
"""Key prefix of the frozen MSVQ-VAE's weights in MIAR's state: left out of ``state_dict()``, not expected by
``load_state_dict()``, compared with the loaded tokenizer when an older checkpoint still carries them."""


def _leave_out_tokenizer(module: "MIAR", state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """State-dict post-hook: no ``tokenizer.*`` key in a MIAR's state (so in no checkpoint)."""
    for key in [key for key in state_dict if key.startswith(prefix + TOKENIZER_PREFIX)]:
        del state_dict[key]


def _take_out_carried_tokenizer(module: "MIAR", state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load pre-hook: remove the ``tokenizer.*`` keys an older checkpoint carries, after checking that they are the
    loaded tokenizer's (:meth:`MIAR.check_carried_tokenizer`)."""
    module._state_prefix = prefix  # for the post-hook, which is not told
    start = prefix + TOKENIZER_PREFIX
    carried = {key.removeprefix(start): state_dict.pop(key) for key in [k for k in state_dict if k.startswith(start)]}
    if carried:
        module.check_carried_tokenizer(carried)


def _tokenizer_is_not_missing(module: "MIAR", incompatible_keys: Any) -> None:
    """Load post-hook: the tokenizer's keys are not missing from a MIAR checkpoint, which never has them."""
    start = getattr(module, "_state_prefix", "") + TOKENIZER_PREFIX
    incompatible_keys.missing_keys[:] = [key for key in incompatible_keys.missing_keys if not key.startswith(start)]


class MIAR(nn.Module):
    """Autoregressive super-resolution transformer over MSVQ-VAE scales.

    Parameters
    ----------
    depth, embed_dim, num_heads, mlp_ratio
        Transformer shape (paper: 4 blocks; width not stated, default VAR-d16's 1024 with 16 heads).
    drop_path_rate : float
        Stochastic depth of the last block, increasing linearly from 0 at the first.
    use_rope : bool
        Scale-aligned 2D RoPE in self-attention; needs ``embed_dim / num_heads`` divisible by 4.
    rope_base : float
        RoPE frequency base.
    qk_norm : bool
        Cosine self-attention (VAR); off by default (not in the paper).
    reference_contrast : bool
        Condition the LR encoder also on a reference contrast's image (one extra, zero-initialised input channel).
    in_channels, base_channels, channel_multipliers, num_res_blocks, latent_dim, codebook_size, scales, quant_resi,
    num_phi, image_size
        The MSVQ-VAE's shape: the model holds a frozen tokenizer of that shape (its weights loaded with
        :meth:`load_tokenizer`, never saved in the model's state) and a trainable copy of its encoder for the LR image
        (initialised with :meth:`init_context_encoder_from`).
    forward_operator, backward_operator
        Passed by DIRECT to every model; unused.
    """

    def __init__(
        self,
        depth: int = 4,
        embed_dim: int = 1024,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        use_rope: bool = True,
        rope_base: float = 10000.0,
        qk_norm: bool = False,
        reference_contrast: bool = False,
        in_channels: int = 2,
        base_channels: int = 160,
        channel_multipliers: Sequence[int] = (1, 1, 2, 4),
        num_res_blocks: int = 2,
        latent_dim: int = 32,
        codebook_size: int = 4096,
        scales: Sequence[int] = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
        quant_resi: float = 0.5,
        num_phi: int = 4,
        image_size: Sequence[int] = (256, 256),
        forward_operator: Any = None,
        backward_operator: Any = None,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth {depth} must be at least 1")
        if num_heads < 1 or embed_dim % num_heads:
            raise ValueError(f"num_heads {num_heads} does not divide embed_dim {embed_dim}")
        head_dim = embed_dim // num_heads
        if use_rope and head_dim % 4:
            raise ValueError(
                f"2D RoPE head dimension {head_dim} (embed_dim {embed_dim} / num_heads {num_heads}) is not divisible "
                "by 4"
            )
        if embed_dim % 4:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by 4, needed by the 2D position code")
        self.tokenizer = MSVQVAE(
            in_channels=in_channels,
            base_channels=base_channels,
            channel_multipliers=channel_multipliers,
            num_res_blocks=num_res_blocks,
            latent_dim=latent_dim,
            codebook_size=codebook_size,
            scales=scales,
            quant_resi=quant_resi,
            num_phi=num_phi,
            scale_dropout=0.0,
            image_size=image_size,
        )
        self.tokenizer.requires_grad_(False)
        self.tokenizer.eval()
        self.tokenizer_source: str | None = None  # where load_tokenizer's weights came from, for messages
        self.register_state_dict_post_hook(_leave_out_tokenizer)
        self.register_load_state_dict_pre_hook(_take_out_carried_tokenizer)
        self.register_load_state_dict_post_hook(_tokenizer_is_not_missing)
        self.reference_contrast = reference_contrast
        self.context_encoder = Encoder(
            in_channels=in_channels + int(reference_contrast),
            base_channels=base_channels,
            channel_multipliers=channel_multipliers,
            num_res_blocks=num_res_blocks,
            latent_dim=latent_dim,
            num_labels=(1,),
            feature_strides=(),
        )
        with torch.no_grad():
            self.context_encoder.conv_in.weight[:, in_channels:].zero_()
        self.scales = self.tokenizer.scales
        self.num_scales = self.tokenizer.num_scales
        self.lengths = self.tokenizer.token_lengths
        self.offsets = [sum(self.lengths[:k]) for k in range(self.num_scales + 1)]
        self.codebook_size = codebook_size
        self.image_size = self.tokenizer.image_size
        self.in_channels = in_channels
        grid = self.tokenizer.latent_hw

        self.rope = Rope2D(head_dim, [(s, s) for s in self.scales], base=rope_base) if use_rope else None
        self.context_norm = nn.LayerNorm(latent_dim, eps=1e-6)
        self.context_proj = nn.Linear(latent_dim, embed_dim)
        self.context_pos = nn.Parameter(0.02 * sincos_2d(grid[0], grid[1], embed_dim, grid)[None])  # 1, N, C
        self.start_token = nn.Parameter(torch.zeros(1, 1, embed_dim))  # <SOS>
        self.word_embed = nn.Linear(latent_dim, embed_dim)
        self.pos_embed = nn.Parameter(
            0.02 * torch.cat([sincos_2d(s, s, embed_dim, grid) for s in self.scales])[None]
        )  # 1, L, C
        self.scale_embed = nn.Embedding(self.num_scales, embed_dim)
        drop_path = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            RMSNormBlock(
                embed_dim,
                num_heads,
                context_dim=embed_dim,
                mlp_ratio=mlp_ratio,
                drop_path=drop_path[i],
                rope=self.rope,
                qk_norm=qk_norm,
            )
            for i in range(depth)
        )
        self.head_norm = nn.RMSNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, codebook_size)
        for module in (self.context_proj, self.word_embed, self.scale_embed, self.blocks, self.head):
            module.apply(init_transformer_weights)
        nn.init.trunc_normal_(self.start_token, std=0.02)

    def train(self, mode: bool = True) -> "MIAR":
        """Set training mode for everything but the tokenizer, which stays frozen in evaluation mode."""
        super().train(mode)
        self.tokenizer.eval()
        return self

    # The frozen tokenizer --------------------------------------------------------------------------------------------

    def load_tokenizer(self, state_dict: Mapping[str, Tensor], source: str | None = None) -> None:
        """Load the trained MSVQ-VAE (its ``state_dict()``) into the frozen tokenizer.

        Parameters
        ----------
        state_dict : Mapping
            The MSVQ-VAE's weights.
        source : str, optional
            Where they come from (``model.tokenizer_checkpoint '...'``), for messages.

        Raises
        ------
        ValueError
            Naming the first missing, unexpected or differently shaped key; nothing is loaded then.
        """
        load_exactly(
            self.tokenizer,
            state_dict,
            source or "the MSVQ-VAE state dict",
            "the MIAR config's tokenizer (the config must repeat the MSVQ-VAE's shape)",
        )
        self.tokenizer_source = source or "given to MIAR.load_tokenizer"

    def init_context_encoder_from(self, encoder_state: Mapping[str, Tensor]) -> None:
        """Initialise the trainable LR encoder from the tokenizer's encoder (its ``state_dict()``), paper section 3.2.

        With ``reference_contrast`` the reference channel's input weights start at zero, so the model starts as
        exactly the single-contrast one.
        """
        encoder_state = dict(encoder_state)
        if self.reference_contrast:
            weight = encoder_state["conv_in.weight"]  # base, in_channels, k, k
            encoder_state["conv_in.weight"] = torch.cat(
                [weight, weight.new_zeros(weight.shape[0], 1, *weight.shape[2:])], dim=1
            )
        self.context_encoder.load_state_dict(encoder_state)

    def check_carried_tokenizer(self, carried: Mapping[str, Tensor]) -> None:
        """Accept the tokenizer weights an older MIAR checkpoint carries only if they are the loaded tokenizer's.

        Raises
        ------
        CheckpointError
            In one line, naming the first weight that differs and where the loaded tokenizer came from.
        """
        own = self.tokenizer.state_dict()
        differing = sorted(set(carried) ^ set(own))
        differing += [
            key
            for key, tensor in own.items()
            if key in carried
            and (
                tuple(carried[key].shape) != tuple(tensor.shape)
                or not torch.equal(carried[key].to(tensor.device), tensor)
            )
        ]
        loaded = self.tokenizer_source or "none loaded (MIAREngine loads it from model.tokenizer_checkpoint)"
        if differing:
            raise CheckpointError(
                "this MIAR checkpoint carries its own MSVQ-VAE (tokenizer.* weights, saved before MIAR checkpoints "
                f"left the tokenizer out) and it is not the tokenizer MIAR uses ({loaded}): '{differing[0]}' differs. "
                "The transformer was trained on that tokenizer's tokens: set model.tokenizer_checkpoint to the "
                "MSVQ-VAE checkpoint it was trained with"
            )
        logger.info("The checkpoint's tokenizer.* weights (an older MIAR checkpoint) equal %s: ignored.", loaded)

    # Inputs ---------------------------------------------------------------------------------------------------------

    def _check_image(self, image: Tensor) -> int:
        expected = (self.in_channels, *self.image_size)
        if image.ndim != 4 or tuple(image.shape[1:]) != expected:
            raise ValueError(f"lr_image must have shape (B, {', '.join(map(str, expected))}), got {tuple(image.shape)}")
        return image.shape[0]

    def _check_tokens(self, tokens: Sequence[Tensor], batch: int) -> None:
        if len(tokens) != self.num_scales:
            raise ValueError(f"expected token maps of {self.num_scales} scales, got {len(tokens)}")
        for k, (idx, side) in enumerate(zip(tokens, self.scales, strict=True)):
            if idx.dtype not in (torch.int64, torch.int32):
                raise TypeError(f"tokens[{k}] must be an integer tensor, got {idx.dtype}")
            if tuple(idx.shape) != (batch, side, side):
                raise ValueError(f"tokens[{k}] must have shape ({batch}, {side}, {side}), got {tuple(idx.shape)}")

    def _encoder_input(self, lr_image: Tensor, reference_image: Tensor | None) -> Tensor:
        """The LR image, and with ``reference_contrast`` the reference normalised by its maximum as one more channel."""
        batch = self._check_image(lr_image)
        if not self.reference_contrast:
            if reference_image is not None:
                raise ValueError("reference_image was given to a MIAR built with reference_contrast=False")
            return lr_image
        expected = (batch, *self.image_size)
        if reference_image is None:
            raise ValueError("this MIAR is built with reference_contrast=True and needs reference_image")
        if tuple(reference_image.shape) != expected:
            raise ValueError(
                f"reference_image must have shape ({', '.join(map(str, expected))}), got {tuple(reference_image.shape)}"
            )
        peak = reference_image.abs().amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(reference_image.dtype).tiny)
        return torch.cat([lr_image, (reference_image / peak)[:, None].to(lr_image.dtype)], dim=1)  # B, in + 1, H, W

    def context(self, lr_image: Tensor, reference_image: Tensor | None = None) -> list[ContextKV]:
        """Cross-attention keys/values of every block, computed once.

        Parameters
        ----------
        lr_image : Tensor
            (B, in_channels, H, W).
        reference_image : Tensor, optional
            Reference contrast's magnitude (B, H, W) at any scale; required exactly when ``reference_contrast``.
        """
        encoder_input = self._encoder_input(lr_image, reference_image)
        labels = (torch.zeros(lr_image.shape[0], dtype=torch.long, device=lr_image.device),)
        features = self.context_encoder(encoder_input, labels, check_values=False)  # B, D, h, w; labels built here
        tokens = self.context_proj(self.context_norm(features.flatten(2).transpose(1, 2))) + self.context_pos
        return [block.precompute_context(tokens) for block in self.blocks]

    def _scale_input(self, f_hat: Tensor, scale: int) -> Tensor:
        """Input tokens (B, s_k^2, C) predicting scale ``scale >= 1`` from the cumulative latent of coarser scales."""
        side = self.scales[scale]
        codes = resize_latent(f_hat, (side, side)).flatten(2).transpose(1, 2)  # B, s^2, D
        start = self.offsets[scale]
        position = self.pos_embed[:, start : start + side * side]
        return self.word_embed(codes) + position + self.scale_embed.weight[scale]

    def _start_input(self, batch: int) -> Tensor:
        return (self.start_token + self.pos_embed[:, :1] + self.scale_embed.weight[0]).expand(batch, -1, -1)

    def _logits(self, x: Tensor) -> Tensor:
        return self.head(self.head_norm(x))  # B, L, V

    # Training -------------------------------------------------------------------------------------------------------

    def forward(
        self, lr_image: Tensor, tokens: Sequence[Tensor], reference_image: Tensor | None = None
    ) -> list[Tensor]:
        """Teacher-forced logits of every scale in one block-causal pass.

        Parameters
        ----------
        lr_image : Tensor
            Low-resolution input at the model size, (B, in_channels, H, W).
        tokens : Sequence[Tensor]
            The HR image's token maps from the tokenizer (:meth:`MSVQVAE.tokenize`), long (B, s_k, s_k). The last is
            only a target.
        reference_image : Tensor, optional
            Reference contrast (B, H, W), with ``reference_contrast`` only.

        Returns
        -------
        list of Tensor
            Logits (B, s_k^2, V) per scale; the targets are ``tokens[k].flatten(1)``.
        """
        batch = self._check_image(lr_image)
        self._check_tokens(tokens, batch)
        return self._teacher_forced_logits(tokens[:-1], self.context(lr_image, reference_image), batch)

    def _teacher_forced_logits(self, known: Sequence[Tensor], context_kv: list[ContextKV], batch: int) -> list[Tensor]:
        """Logits of scales ``0..len(known)`` given the tokens of scales ``0..len(known)-1``."""
        inputs = [self._start_input(batch)]
        with torch.no_grad():
            cumulative = self.tokenizer.cumulative_latents(known) if known else []
        inputs += [self._scale_input(f_hat, k + 1) for k, f_hat in enumerate(cumulative)]
        x = torch.cat(inputs, dim=1)  # B, L, C
        lengths = self.lengths[: len(known) + 1]
        mask = block_causal_mask(lengths, device=x.device)
        for block, kv in zip(self.blocks, context_kv, strict=True):
            x = block(x, kv, attn_mask=mask)
        return list(self._logits(x).split(lengths, dim=1))

    # Inference ------------------------------------------------------------------------------------------------------

    def _cached_step(self, tokens: Tensor | None, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """Decoding step: add the previous scale's tokens (N, s^2) to the latent, predict the next scale."""
        scale = state["scale"]
        if tokens is None:
            x = self._start_input(state["f_hat"].shape[0])
            f_hat = state["f_hat"]
        else:
            side = self.scales[scale - 1]
            f_hat = state["f_hat"] + self.tokenizer.contribution(tokens.reshape(-1, side, side), scale - 1)
            x = self._scale_input(f_hat, scale)
        for block, kv, cache in zip(self.blocks, state["context"], state["caches"], strict=True):
            x = block(x, kv, cache=cache)
        return self._logits(x), {**state, "f_hat": f_hat, "scale": scale + 1}

    def _next_scale_logits(self, history: list[Tensor], condition: dict[str, Any]) -> Tensor:
        """Cache-free decoding: recompute all known scales with the block-causal mask, keep the newest logits."""
        batch = condition["context"][0].keys.shape[0]
        known = [t.view(batch, s, s) for t, s in zip(history, self.scales, strict=False)]
        return self._teacher_forced_logits(known, condition["context"], batch)[-1]

    @torch.no_grad()
    def generate(
        self,
        lr_image: Tensor,
        mode: str = "beam",
        beam_k: int = 1,
        beam_alpha: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        reference_image: Tensor | None = None,
    ) -> list[Tensor]:
        """Generate all scales' tokens for LR images, one scale per step.

        Parameters
        ----------
        lr_image : Tensor
            (B, in_channels, H, W).
        mode : str
            ``"argmax"``, ``"multinomial"``, ``"top_k_top_p"`` or ``"beam"`` (paper: beam search, k = 1).
        beam_k, beam_alpha
            Positions branched on per scale (1, 2 or 3) and the margin weight of eq. 4.
        top_k, top_p, temperature, generator
            Sampling settings of the sampling modes.
        use_cache : bool
            Per-block KV caches (default); False recomputes every known scale with the mask at each step.
        reference_image : Tensor, optional
            Reference contrast (B, H, W), with ``reference_contrast`` only.

        Returns
        -------
        list of Tensor
            Long (B, s_k, s_k) per scale.
        """
        check_decoding(mode, beam_k, beam_alpha, top_k, top_p, temperature)
        batch = self._check_image(lr_image)
        context_kv = self.context(lr_image, reference_image)
        step: StepFn
        if use_cache:
            f_hat = lr_image.new_zeros(batch, self.tokenizer.quantizer.dim, *self.tokenizer.latent_hw)
            caches = [KVCache() for _ in self.blocks]
            step, state = self._cached_step, {"context": context_kv, "caches": caches, "f_hat": f_hat, "scale": 0}
        else:
            step, state = step_from_history(self._next_scale_logits), ([], {"context": context_kv})
        if mode == "beam":
            generated, _ = beam_search(step, state, self.num_scales, k=beam_k, alpha=beam_alpha)
        else:
            generated = decode(step, state, self.num_scales, None, mode, temperature, top_k, top_p, generator)
        return [t.view(batch, s, s) for t, s in zip(generated, self.scales, strict=True)]

    @torch.no_grad()
    def super_resolve(self, lr_image: Tensor, reference_image: Tensor | None = None, **decoding: Any) -> Tensor:
        """HR image (B, in_channels, H, W) decoded by the tokenizer from :meth:`generate`'s tokens."""
        return self.tokenizer.decode_indices(self.generate(lr_image, reference_image=reference_image, **decoding))

"""MIAR: autoregressive medical image super-resolution, as ``direct.nn.miar``.

``msvqvae.py`` the MSVQ-VAE tokenizer (VAR's residual multi-scale quantization with scale-aware dropout), ``miar.py``
the next-scale transformer (RMSNorm blocks, 2D RoPE, cross-attention to LR features), ``config.py`` their DIRECT
config dataclasses, ``images.py`` the HR/LR images of a super-resolution batch, ``msvqvae_engine.py`` and
``miar_engine.py`` the DIRECT engines. The task itself is the ``SuperResolution`` mask of
:mod:`direct_nextaccel.masks.superresolution`.
"""

"""MIAR: autoregressive medical image super-resolution (MSVQ-VAE, transformer) as ``direct.nn.miar``.

Layout, one line per module (the same shape as :mod:`direct_nextaccel.nextaccel`):

- ``msvqvae.py``: the tokenizer model, ``MSVQVAE`` (VAR's residual multi-scale quantization, scale-aware dropout).
- ``miar.py``: the transformer model, ``MIAR`` (RMSNorm blocks, 2D RoPE, cross-attention to LR features).
- ``config.py``: their DIRECT config dataclasses (YAML keys under ``model:``).
- ``images.py``: the HR and LR images of a super-resolution batch.
- ``msvqvae_engine.py``: ``MSVQVAEEngine``, the tokenizer's engine.
- ``transformer_engine.py``: ``MIAREngine``, the transformer's engine (training and super-resolution), and
  ``load_tokenizer_state``, the frozen tokenizer read from its checkpoint and checked against the configuration.
- ``miar_engine.py``: only the re-export DIRECT needs (``direct.nn.miar.miar_engine.<Name>Engine``).

The task itself is the ``SuperResolution`` mask of :mod:`direct_nextaccel.masks.superresolution`.

Frozen tokenizer, one rule for both methods: a frozen tokenizer belongs to the engine that uses it: it is loaded from
``model.tokenizer_checkpoint`` when the engine is built (training, validation and ``direct predict`` alike) and no
transformer checkpoint carries it. Here ``MIAREngine`` loads the MSVQ-VAE into ``MIAR.tokenizer``, a frozen submodule
(so it follows the model across devices) whose ``tokenizer.*`` weights MIAR's ``state_dict()`` leaves out and
``load_state_dict()`` does not expect; a fresh training run starts the LR encoder from the tokenizer's encoder, a
resume or ``--initialization-checkpoint`` overrides that. An unset or unusable ``model.tokenizer_checkpoint`` is one
line naming the key or the file. A MIAR checkpoint saved before this rule still carries ``tokenizer.*`` weights: they
are compared with the loaded tokenizer, ignored when equal and refused in one line when not (the transformer was
trained on another tokenizer's tokens).
"""

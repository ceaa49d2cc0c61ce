"""NextAccel: next-acceleration-scale prediction (AQ-VAE, transformer, distillation) as ``direct.nn.nextaccel``.

Layout, one line per module (the same shape as :mod:`direct_nextaccel.miar`):

- ``aqvae.py``: the tokenizer model, ``AQVAE`` (one token grid per acceleration level, one codebook).
- ``nextaccel.py``: the transformer model, ``NextAccel`` (with ``privileged_context`` the distillation teacher).
- ``config.py``: their DIRECT config dataclasses (YAML keys under ``model:``).
- ``acquisition.py``: the six-level acquisition hierarchy (R = 32 ... FS) every NextAccel engine forms from a batch.
- ``tokenizer_loading.py``: the frozen networks of earlier stages (tokenizer, its sensitivity model, teacher), read
  from their checkpoints and checked against the configuration.
- ``aqvae_engine.py``: ``AQVAEEngine``, the tokenizer's engine.
- ``transformer_engine.py``: ``NextAccelEngine``, the transformer's engine (training and reconstruction).
- ``distillation_engine.py``: ``TeacherEngine`` and ``DistillationEngine``, the privileged teacher's and the student's.
- ``nextaccel_engine.py``: only the re-export DIRECT needs (``direct.nn.nextaccel.nextaccel_engine.<Name>Engine``).

Frozen tokenizer, one rule for both methods: a frozen tokenizer belongs to the engine that uses it: it is loaded from
``model.tokenizer_checkpoint`` when the engine is built (training, validation and ``direct predict`` alike) and no
transformer checkpoint carries it. Here ``NextAccelEngine`` (and its teacher and distillation subclasses) holds the
AQ-VAE as its attribute ``tokenizer``, not as a DIRECT model, so it is in no optimizer group and in no checkpoint; a
fresh training run starts the transformer's context encoder and codebook from it, a resume or
``--initialization-checkpoint`` overrides that. An unset or unusable ``model.tokenizer_checkpoint`` is one line naming
the key or the file.
"""

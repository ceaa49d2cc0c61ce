"""Only the re-export DIRECT needs: ``engine_name: <Name>Engine`` of a ``miar.*`` model resolves to
``direct.nn.miar.miar_engine.<Name>Engine`` (DIRECT's ``<alias>.<alias>_engine``).

The engines live in the modules named after what they hold: :mod:`.msvqvae_engine` (``MSVQVAEEngine``, the tokenizer)
and :mod:`.transformer_engine` (``MIAREngine``, the transformer). Import them from there; nothing else belongs here.
"""

from direct_nextaccel.miar.msvqvae_engine import MSVQVAEEngine
from direct_nextaccel.miar.transformer_engine import MIAREngine

__all__ = ["MIAREngine", "MSVQVAEEngine"]

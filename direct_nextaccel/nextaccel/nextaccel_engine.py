"""Only the re-export DIRECT needs: ``engine_name: <Name>Engine`` of a ``nextaccel.*`` model resolves to
``direct.nn.nextaccel.nextaccel_engine.<Name>Engine`` (DIRECT's ``<alias>.<alias>_engine``).

The engines live in the modules named after what they hold: :mod:`.aqvae_engine` (``AQVAEEngine``, the tokenizer),
:mod:`.transformer_engine` (``NextAccelEngine``, the transformer) and :mod:`.distillation_engine` (``TeacherEngine``
and ``DistillationEngine``). Import them from there; nothing else belongs here.
"""

from direct_nextaccel.nextaccel.aqvae_engine import AQVAEEngine
from direct_nextaccel.nextaccel.distillation_engine import DistillationEngine, TeacherEngine
from direct_nextaccel.nextaccel.transformer_engine import NextAccelEngine

__all__ = ["AQVAEEngine", "DistillationEngine", "NextAccelEngine", "TeacherEngine"]

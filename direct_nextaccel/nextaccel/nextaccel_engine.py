"""Engines of the ``direct.nn.nextaccel`` models, where DIRECT looks for them (``<alias>.<alias>_engine``)."""

from direct_nextaccel.nextaccel.aqvae_engine import AQVAEEngine
from direct_nextaccel.nextaccel.distillation_engine import DistillationEngine, TeacherEngine
from direct_nextaccel.nextaccel.transformer_engine import NextAccelEngine

__all__ = ["AQVAEEngine", "DistillationEngine", "NextAccelEngine", "TeacherEngine"]

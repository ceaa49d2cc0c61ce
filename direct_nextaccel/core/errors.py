"""Errors the plugin raises for bad data, shared by engines, losses and data tools (imports nothing heavy)."""

from __future__ import annotations

__all__ = ["NonFiniteError"]


class NonFiniteError(FloatingPointError):
    """A NaN or Inf in a batch, an output or a loss.

    Not a RuntimeError: DIRECT writes a checkpoint when training ends in a RuntimeError, and a model that has seen a
    non-finite batch must not be saved.
    """

"""What every tokenizer engine (AQ-VAE, MSVQ-VAE) does with a batch, and the NaN guard all engines share.

A tokenizer engine only says how a batch becomes outputs (``_forward``) and what it logs after a training step
(``_log_training_scalars``); the iteration around them -- input checks before any forward pass, DIRECT's keyed
losses, backward, the codebook's EMA step -- is written once here.
"""

from __future__ import annotations

from typing import Any

import torch
from direct.engine import DoIterationOutput
from direct.nn.mri_models import MRIModelEngine
from direct.utils import detach_dict, dict_to_device
from torch.amp import autocast


class NonFiniteError(FloatingPointError):
    """A NaN or Inf in a batch or a loss. Not a RuntimeError, so DIRECT does not write a checkpoint on the way out."""


def check_finite(tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
    """Raise :class:`NonFiniteError` naming the tensor and the batch's files and slices if anything is NaN/Inf."""
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            slices = data.get("slice_no")
            slices = slices.tolist() if isinstance(slices, torch.Tensor) else slices
            raise NonFiniteError(
                f"non-finite {name} for batch files {list(data.get('filename', []))} slices {slices}: "
                "training stopped before the update, no checkpoint written"
            )


class TokenizerEngine(MRIModelEngine):
    """Base of the tokenizer engines: subclasses implement ``_forward`` (returning at least ``output_image``
    (B, H, W, 2) and the engine's loss terms) and ``_log_training_scalars``."""

    @property
    def tokenizer(self):
        """The tokenizer itself (unwrapped from DistributedDataParallel)."""
        return getattr(self.model, "module", self.model)

    def forward_function(self, data: dict[str, Any]) -> tuple[torch.Tensor, None]:
        """DIRECT's hook: the tokenizer's reconstruction, (B, H, W, 2)."""
        return self._forward(data)["output_image"], None

    def _forward(self, data: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError("a tokenizer engine defines how a batch becomes outputs")

    def _log_training_scalars(self, outputs: dict[str, Any]) -> None:
        raise NotImplementedError("a tokenizer engine defines what it logs after a training step")

    def _do_iteration(self, data, loss_fns=None, regularizer_fns=None) -> DoIterationOutput:
        loss_fns = loss_fns or {}
        regularizer_fns = regularizer_fns or {}
        data = dict_to_device(data, self.device)
        # Before any forward pass: the codebook's k-means start and EMA statistics must never see a bad batch.
        check_finite({name: data[name] for name in ("kspace", "sensitivity_map") if name in data}, data)
        with autocast("cuda", enabled=self.mixed_precision):
            data["sensitivity_map"] = self.compute_sensitivity_map(data["sensitivity_map"])
            outputs = self._forward(data)
            output_image = torch.linalg.vector_norm(outputs["output_image"], dim=-1)  # B, H, W
            check_finite({"reconstruction": output_image}, data)
            loss_dict, regularizer_dict = self._accumulate_keyed_losses(
                loss_fns, regularizer_fns, data, {**outputs, "output_image": output_image}
            )
        if self.model.training:
            loss = sum(loss_dict.values()) + sum(regularizer_dict.values())
            check_finite({"loss": loss}, data)
            self._scaler.scale(loss).backward()
            self.tokenizer.ema_update()
            self._log_training_scalars(outputs)
        return DoIterationOutput(
            output_image=output_image,
            sensitivity_map=data["sensitivity_map"],
            data_dict={**detach_dict(loss_dict), **detach_dict(regularizer_dict)},
        )

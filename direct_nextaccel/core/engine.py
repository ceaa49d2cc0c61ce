"""The one DIRECT iteration every plugin engine runs; engines only say how a batch becomes outputs.

:meth:`PluginEngine._do_iteration` is the template: batch to the device, frozen networks in evaluation mode, inputs
checked for NaN/Inf before any forward pass (a codebook's k-means start or EMA statistics must never see a bad
batch), autocast with the one mixed-precision policy, DIRECT's sensitivity maps, the engine's
:meth:`~PluginEngine.iteration_outputs`, the magnitude of the reconstruction, DIRECT's keyed losses (in float32, on
the intensity-normalised images when the engine reports its normalisation), backward and the engine's
:meth:`~PluginEngine.after_backward` (EMA steps, a discriminator step, logging).

Checkpoints, ``--resume`` and interrupts: :class:`~direct_nextaccel.core.resume.ResumableEngine` (a resumed run
continues exactly as the uninterrupted one), checkpoint files through :mod:`direct_nextaccel.core.checkpoints`.

Mixed precision (``--mixed-precision``): bfloat16 autocast on the engine's own device type (so CPU runs exercise the
same path), no GradScaler (bfloat16 has float32's exponent range), TF32 for the float32 matrix products on a GPU as
the paper trains; quantizer distances and the losses stay in float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from direct.engine import DoIterationOutput
from direct.nn.mri_models import MRIModelEngine
from direct.utils import detach_dict, dict_to_device
from torch import nn
from torch.amp import GradScaler, autocast

from direct_nextaccel.core.errors import NonFiniteError
from direct_nextaccel.core.resume import ResumableEngine

__all__ = ["INTENSITY_KEY", "PluginEngine", "TokenizerEngine", "check_finite"]

INTENSITY_KEY = "intensity_factor"
"""Output key of the per-slice factor (B,) that maps DIRECT's scale to the tokenizer's (:mod:`.intensity`)."""


def _slice_label(data: Mapping[str, Any], index: int) -> str:
    filenames = data.get("filename")
    slices = data.get("slice_no")
    name = filenames[index] if filenames is not None and index < len(filenames) else f"batch index {index}"
    if isinstance(slices, torch.Tensor):
        slices = slices.tolist()
    slice_no = slices[index] if slices is not None and index < len(slices) else "?"
    return f"{name} slice {slice_no}"


def check_finite(tensors: Mapping[str, torch.Tensor], data: Mapping[str, Any], training: bool) -> None:
    """Raise :class:`NonFiniteError` naming the tensor and the first offending file and slice.

    Parameters
    ----------
    tensors : Mapping
        Name -> tensor; batched tensors have the batch first, a 0-d tensor (a loss) names the whole batch.
    data : Mapping
        The batch, for its ``filename`` and ``slice_no``.
    training : bool
        Whether the iteration trains (the message then says that no update and no checkpoint happened).
    """
    for name, tensor in tensors.items():
        finite = torch.isfinite(tensor)
        if bool(finite.all()):
            continue
        if tensor.ndim == 0:
            where = f"batch of {list(data.get('filename', []))}"
        else:
            where = _slice_label(data, int((~finite.flatten(1).all(dim=1)).nonzero()[0]))
        consequence = "training stopped before the update, no checkpoint written" if training else "not written"
        raise NonFiniteError(f"non-finite {name} in {where}: {consequence}")


class PluginEngine(ResumableEngine, MRIModelEngine):
    """Base of every plugin engine: one ``_do_iteration``; subclasses implement :meth:`iteration_outputs`.

    Class attributes
    ----------------
    ENGINE_LOSSES : dict
        Loss names the engine adds to ``training.loss.losses`` (output keys of :meth:`iteration_outputs`).
    ONLY_ENGINE_LOSSES : bool
        Whether the engine trains on its own losses alone (the transformers: no image loss reaches a model through
        discrete tokens); checked at construction.
    CHECKED_INPUTS : tuple of str
        Batch keys checked for NaN/Inf before any forward pass.
    """

    ENGINE_LOSSES: ClassVar[dict[str, str]] = {}
    ONLY_ENGINE_LOSSES: ClassVar[bool] = False
    CHECKED_INPUTS: ClassVar[tuple[str, ...]] = ("kspace", "masked_kspace", "sensitivity_map", "reference_image")

    def __init__(self, cfg, model, device, forward_operator, backward_operator, mixed_precision=False, **models):
        super().__init__(
            cfg,
            model,
            device,
            forward_operator=forward_operator,
            backward_operator=backward_operator,
            mixed_precision=mixed_precision,
            **models,
        )
        self.device_type = torch.device(device).type
        self._scaler = GradScaler(self.device_type, enabled=False)  # bfloat16 needs no loss scaling
        if mixed_precision and self.device_type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # the paper's setting: TF32 for what stays in float32
            torch.backends.cudnn.allow_tf32 = True
        if self.ONLY_ENGINE_LOSSES:
            names = [entry.function for entry in cfg.training.loss.losses]
            foreign = [name for name in names if name not in self.ENGINE_LOSSES]
            if foreign or not names:
                raise ValueError(
                    f"training.loss.losses {names} must only name {list(self.ENGINE_LOSSES)}: {type(self).__name__} "
                    "trains on token distributions, and no image loss reaches the model through discrete tokens"
                )

    @property
    def network(self) -> nn.Module:
        """The engine's model itself (unwrapped from DistributedDataParallel)."""
        return getattr(self.model, "module", self.model)

    @property
    def frozen_modules(self) -> list[nn.Module]:
        """Networks that stay in evaluation mode (DIRECT puts every additional model in training mode)."""
        return []

    def iteration_outputs(self, data: dict[str, Any]) -> dict[str, Any]:
        """The engine's outputs for one batch whose sensitivity maps are computed.

        Returns
        -------
        dict
            ``output_image`` (B, H, W, 2) at DIRECT's scale and matrix when the iteration reconstructs, the engine's
            loss terms (:attr:`ENGINE_LOSSES`), optionally :data:`INTENSITY_KEY` (B,) so that image losses compare
            intensity-normalised images, and anything :meth:`after_backward` needs.
        """
        raise NotImplementedError(f"{type(self).__name__} defines how a batch becomes outputs")

    def after_backward(self, outputs: dict[str, Any], data: dict[str, Any]) -> None:
        """After the training backward pass: EMA steps, discriminator steps, logging. Default: nothing."""

    def after_evaluation(self, outputs: dict[str, Any], data: dict[str, Any]) -> None:
        """After a validation or prediction iteration. Default: nothing."""

    def forward_function(self, data: dict[str, Any]) -> tuple[torch.Tensor | None, None]:
        """DIRECT's hook: the reconstruction (B, H, W, 2), or None when the iteration reconstructs nothing."""
        return self.iteration_outputs(data).get("output_image"), None

    def _do_iteration(self, data, loss_fns=None, regularizer_fns=None) -> DoIterationOutput:
        training = self.model.training
        data = dict_to_device(data, self.device)
        for module in self.frozen_modules:
            module.eval()
        check_finite({name: data[name] for name in self.CHECKED_INPUTS if name in data}, data, training)
        with autocast(self.device_type, dtype=torch.bfloat16, enabled=self.mixed_precision):
            data["sensitivity_map"] = self.compute_sensitivity_map(data["sensitivity_map"])
            outputs = self.iteration_outputs(data)
        output_image = outputs.get("output_image")
        if output_image is not None:
            output_image = torch.linalg.vector_norm(output_image.float(), dim=-1)  # B, H, W
            check_finite({"reconstruction": output_image}, data, training)
        loss_outputs, loss_data = dict(outputs), data
        factor = outputs.get(INTENSITY_KEY)
        if output_image is not None:
            loss_outputs["output_image"] = output_image
            if factor is not None and "target" in data:
                factor = factor.float()[:, None, None]
                loss_outputs["output_image"] = output_image * factor
                loss_data = {**data, "target": data["target"] * factor}
        loss_dict, regularizer_dict = self._accumulate_keyed_losses(
            loss_fns or {}, regularizer_fns or {}, loss_data, loss_outputs
        )
        if training:
            loss = sum(loss_dict.values()) + sum(regularizer_dict.values())
            check_finite({"loss": loss}, data, training)
            loss.backward()
            self.after_backward(outputs, data)
        else:
            self.after_evaluation(outputs, data)
        return DoIterationOutput(
            output_image=output_image,
            sensitivity_map=data["sensitivity_map"],
            data_dict={**detach_dict(loss_dict), **detach_dict(regularizer_dict)},
        )


class TokenizerEngine(PluginEngine):
    """Base of the tokenizer engines (AQ-VAE, MSVQ-VAE): the codebook's EMA step after every backward pass, then the
    engine's :meth:`log_training_scalars`."""

    @property
    def tokenizer(self) -> nn.Module:
        """The tokenizer itself (unwrapped from DistributedDataParallel)."""
        return self.network

    def log_training_scalars(self, outputs: dict[str, Any]) -> None:
        """Log what a training step measured besides its losses. Default: nothing."""

    def after_backward(self, outputs: dict[str, Any], data: dict[str, Any]) -> None:
        self.tokenizer.ema_update()
        self.log_training_scalars(outputs)

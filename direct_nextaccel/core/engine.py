"""The one DIRECT iteration every plugin engine runs; engines only say how a batch becomes outputs.

:meth:`PluginEngine._do_iteration` is the template: batch to the device, frozen networks in evaluation mode, inputs
checked for NaN/Inf before any forward pass (a codebook's k-means start or EMA statistics must never see a bad
batch), autocast with the one mixed-precision policy, DIRECT's sensitivity maps, the engine's
:meth:`~PluginEngine.iteration_outputs`, the magnitude of the reconstruction, DIRECT's keyed losses (in float32, on
the intensity-normalised images when the engine reports its normalisation), backward and the engine's
:meth:`~PluginEngine.after_backward` (EMA steps, a discriminator step, logging).

Checkpoints, ``--resume`` and interrupts: :class:`~direct_nextaccel.core.resume.ResumableEngine` (a resumed run
continues exactly as the uninterrupted one), checkpoint files through :mod:`direct_nextaccel.core.checkpoints`.

Several processes (``direct train --num-gpus N``, DistributedDataParallel): DIRECT synchronises only ``engine.model``.
Each rank seeds its random numbers from ``--seed`` and its rank when the engine is built; when training starts, rank
0's parameters and buffers of every other module the engine trains or holds (DIRECT's additional models, a
discriminator, a frozen tokenizer or teacher) go to every rank, and before each step of DIRECT's optimizer the
gradients of the parameters it steps outside the DDP-wrapped model (a trainable sensitivity model) are averaged over
the ranks (:mod:`.distributed`). The NaN/Inf checks of a training iteration are agreed by all ranks (one all-reduced
flag each, the first before any other collective of the iteration), so a bad batch on one rank stops every rank with
a :class:`NonFiniteError` naming the rank, file and slice, instead of leaving the others waiting in an all-reduce.

Mixed precision (``--mixed-precision``): bfloat16 autocast on the engine's own device type (so CPU runs exercise the
same path), no GradScaler (bfloat16 has float32's exponent range), TF32 for the float32 matrix products on a GPU as
the paper trains; quantizer distances and the losses stay in float32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from direct.engine import DoIterationOutput
from direct.nn.mri_models import MRIModelEngine
from direct.utils import detach_dict, dict_to_device
from torch import nn
from torch.amp import GradScaler, autocast

from direct_nextaccel.core import distributed
from direct_nextaccel.core.errors import NonFiniteError
from direct_nextaccel.core.intensity import IntensityError, check_scale, usable_scale
from direct_nextaccel.core.resume import ResumableEngine
from direct_nextaccel.modules.options import validate_model_config

__all__ = ["INTENSITY_KEY", "SCALARS_KEY", "SCALE_KEY", "PluginEngine", "TokenizerEngine", "check_finite"]

INTENSITY_KEY = "intensity_factor"
"""Output key of the per-slice factor (B,) that maps DIRECT's scale to the tokenizer's (:mod:`.intensity`)."""

SCALE_KEY = "reference_scale"
"""Batch key of the per-slice reference scale (B,) (:mod:`.intensity`) an engine computes before the forward pass
(:meth:`PluginEngine.reference_scale`): checked positive and finite with the inputs, then used by the forward pass."""

SCALARS_KEY = "scalars"
"""Output key of what a training step logs besides its losses: name -> 0-d tensor. The values reach the host with
the loss's finiteness check (one read of the device) and :meth:`PluginEngine.after_backward` sees them as floats."""


def _slice_label(data: Mapping[str, Any], index: int) -> str:
    filenames = data.get("filename")
    slices = data.get("slice_no")
    name = filenames[index] if filenames is not None and index < len(filenames) else f"batch index {index}"
    if isinstance(slices, torch.Tensor):
        slices = slices.tolist()
    slice_no = slices[index] if slices is not None and index < len(slices) else "?"
    return f"{name} slice {slice_no}"


def check_finite(
    tensors: Mapping[str, torch.Tensor],
    data: Mapping[str, Any],
    training: bool,
    fetch: Sequence[torch.Tensor] = (),
    scale: torch.Tensor | None = None,
) -> list[float]:
    """Raise :class:`NonFiniteError` naming the tensor and the first offending file and slice.

    All tensors are checked with one read of the device (one fused flag); only after a failure is the offender
    searched for. ``fetch`` (0-d tensors, e.g. what a training step logs) comes back to the host in the same read,
    and so does the check of ``scale``, the batch's reference scales (an :class:`~.intensity.IntensityError` naming
    the slice whose scale is zero or not finite, after the tensors' own check).

    Parameters
    ----------
    tensors : Mapping
        Name -> tensor; batched tensors have the batch first, a 0-d tensor (a loss) names the whole batch.
    data : Mapping
        The batch, for its ``filename`` and ``slice_no``.
    training : bool
        Whether the iteration trains (the message then says that no update and no checkpoint happened).
    fetch : sequence of torch.Tensor
        0-d tensors to read with the flags.
    scale : torch.Tensor, optional
        Reference scales (B,) (:mod:`.intensity`), which must be positive and finite.

    Returns
    -------
    list of float
        The values of ``fetch``.
    """
    flags = [torch.isfinite(tensor).all() for tensor in tensors.values()]
    if scale is not None:
        flags.append(usable_scale(scale).all())
    values = [value.detach().float() for value in fetch]
    if not flags and not values:
        return []
    host = torch.stack([*(flag.float() for flag in flags), *values]).tolist()
    if all(host[: len(flags)]):
        return host[len(flags) :]
    for (name, tensor), finite in zip(tensors.items(), host, strict=False):
        if finite:
            continue
        if tensor.ndim == 0:
            where = f"batch of {list(data.get('filename', []))}"
        else:
            rows = torch.isfinite(tensor).flatten(1).all(dim=1)
            where = _slice_label(data, int((~rows).nonzero()[0]))
        consequence = "training stopped before the update, no checkpoint written" if training else "not written"
        raise NonFiniteError(f"non-finite {name} in {where}: {consequence}")
    check_scale(scale, data.get("filename"), data.get("slice_no"))
    return host[len(flags) :]


class PluginEngine(ResumableEngine, MRIModelEngine):
    """Base of every plugin engine: one ``_do_iteration``; subclasses implement :meth:`iteration_outputs`.

    Class attributes
    ----------------
    ENGINE_LOSSES : dict
        Loss names the engine adds to ``training.loss.losses`` (output keys of :meth:`iteration_outputs`).
    ONLY_ENGINE_LOSSES : bool
        Whether the engine trains on its own losses alone (the transformers: no image loss reaches a model through
        discrete tokens); checked at construction.
    CONFIG_CLASS : type or None
        The model's config dataclass, whose range checks run first in the constructor (``validate_model_config``).
    CHECKED_INPUTS : tuple of str
        Batch keys checked for NaN/Inf before any forward pass.
    """

    ENGINE_LOSSES: ClassVar[dict[str, str]] = {}
    ONLY_ENGINE_LOSSES: ClassVar[bool] = False
    CONFIG_CLASS: ClassVar[type | None] = None
    CHECKED_INPUTS: ClassVar[tuple[str, ...]] = ("kspace", "masked_kspace", "sensitivity_map", "reference_image")

    def __init__(self, cfg, model, device, forward_operator, backward_operator, mixed_precision=False, **models):
        if self.CONFIG_CLASS is not None:  # value ranges; DIRECT's merge has already checked the choices (Enums)
            validate_model_config(cfg.model, self.CONFIG_CLASS)
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
        if distributed.is_distributed():  # DIRECT seeded only the launching process from --seed
            seed = distributed.seed_rank()
            self.logger.info("Rank %d seeded its random numbers with %d (from --seed).", distributed.rank(), seed)
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
            intensity-normalised images, :data:`SCALARS_KEY` (what a training step logs, read with the loss check)
            and anything :meth:`after_backward` needs.
        """
        raise NotImplementedError(f"{type(self).__name__} defines how a batch becomes outputs")

    def after_backward(self, outputs: dict[str, Any], data: dict[str, Any]) -> None:
        """After the training backward pass: EMA steps, discriminator steps, logging. Default: nothing."""

    def after_evaluation(self, outputs: dict[str, Any], data: dict[str, Any]) -> None:
        """After a validation or prediction iteration. Default: nothing."""

    # Several ranks (DistributedDataParallel) -------------------------------------------------------------------

    def rank_synchronised_modules(self) -> dict[str, nn.Module]:
        """Modules whose parameters and buffers rank 0 sends to every rank when training starts: DIRECT's additional
        models and every module attribute of the engine (a discriminator, a frozen tokenizer or teacher), each once.
        The model itself is left out: DistributedDataParallel broadcast it when DIRECT wrapped it."""
        skip = {id(self.model), id(self.network)}
        found: dict[str, nn.Module] = {}
        candidates = [(f"models.{name}", module) for name, module in self.models.items()]
        candidates += [(name, value) for name, value in vars(self).items()]
        for name, module in candidates:
            if isinstance(module, nn.Module) and id(module) not in skip:
                found[name] = module
                skip.add(id(module))
        return found

    def check_finite_on_all_ranks(
        self,
        tensors: Mapping[str, torch.Tensor],
        data: Mapping[str, Any],
        training: bool,
        first: bool = False,
        fetch: Sequence[torch.Tensor] = (),
        scale: torch.Tensor | None = None,
    ) -> list[float]:
        """:func:`check_finite`, agreed by every rank in a training iteration under DistributedDataParallel.

        Every rank checks its own batch, then one all-reduced flag says whether any rank found a NaN/Inf; if one did,
        every rank raises :class:`NonFiniteError` with the message of each rank that found one (rank, tensor, file and
        slice), so no rank is left waiting in a later all-reduce. ``first`` marks the first check of the iteration
        (before any other collective of it): its all-reduce also agrees on a pending interrupt
        (:meth:`~.resume.ResumableEngine.agree_on_interrupt`). Evaluation checks stay per rank (the ranks' validation
        shards differ in length, so there is no common point to agree at). Returns the values of ``fetch``
        (:func:`check_finite`).
        """
        if not (training and distributed.is_distributed()):
            return check_finite(tensors, data, training, fetch, scale)
        error, values = None, []
        try:
            values = check_finite(tensors, data, training, fetch, scale)
        except (NonFiniteError, IntensityError) as found:
            error = found
        flags = [error is not None]
        if first:
            flags.append(self._interrupt_pending)
        agreed = distributed.any_rank(flags, self.device)
        if first:
            self.agree_on_interrupt(agreed[1])
        if not agreed[0]:
            return values
        messages = distributed.gather_objects(None if error is None else str(error))
        found = [f"rank {index} of {len(messages)}: {text}" for index, text in enumerate(messages) if text]
        message = "; ".join(found) + "; every rank stopped"
        self.logger.error("%s", message)
        raise NonFiniteError(message) from error

    def train(self, optimizer, lr_scheduler, training_datasets, experiment_directory, *args, **kwargs):
        """DIRECT's training; under DistributedDataParallel, refuses up front fewer validation volumes than ranks
        (DIRECT's validation sampler would crash at the first validation, after training up to it)."""
        validation = kwargs.get("validation_datasets", args[0] if args else None)
        ranks = distributed.world_size()
        for dataset in validation or []:
            volumes = len(getattr(dataset, "volume_indices", None) or {})
            if ranks > 1 and 0 < volumes < ranks:
                name = getattr(dataset, "text_description", None) or type(dataset).__name__
                raise ValueError(
                    f"validation dataset {name!r} has {volumes} volumes for {ranks} processes: DIRECT gives each "
                    "process whole volumes and crashes at validation when one gets none; validate on at least as many "
                    "volumes as processes"
                )
        return super().train(optimizer, lr_scheduler, training_datasets, experiment_directory, *args, **kwargs)

    def training_loop(self, *args, **kwargs):
        """DIRECT's training loop, after rank 0's state of :meth:`rank_synchronised_modules` has reached every rank,
        with the gradients outside the DDP-wrapped model that DIRECT's optimizer steps averaged before each step.
        DataParallel (DIRECT's choice for one process seeing several GPUs) is refused."""
        if isinstance(self.model, nn.DataParallel):
            raise ValueError(
                f"{torch.cuda.device_count()} GPUs are visible to a single-process run, so DIRECT wrapped the model "
                "in DataParallel, whose per-batch replicas drop what the plugin's engines keep on their modules "
                "between the forward pass and the update (codebook EMA statistics): use --num-gpus N for "
                "DistributedDataParallel, or expose one GPU (CUDA_VISIBLE_DEVICES=0)"
            )
        hook = None
        if distributed.is_distributed():
            modules = self.rank_synchronised_modules()
            count = distributed.broadcast_modules(modules.values())
            self.logger.info("Rank 0's state of %s (%d tensors) sent to every rank.", sorted(modules), count)
            inside = {id(parameter) for parameter in self.network.parameters()}
            optimizer = self._require_optimizer()
            outside = [
                parameter
                for group in optimizer.param_groups
                for parameter in group["params"]
                if parameter.requires_grad and id(parameter) not in inside
            ]
            if outside:
                hook = optimizer.register_step_pre_hook(lambda *_: distributed.average_gradients(outside))
        try:
            return super().training_loop(*args, **kwargs)
        finally:
            if hook is not None:
                hook.remove()

    def reference_scale(self, data: dict[str, Any]) -> torch.Tensor | None:
        """The batch's per-slice reference scale (B,) (:mod:`.intensity`), unchecked; None (the default) for an engine
        that computes none before its forward pass.

        :meth:`_do_iteration` checks it with the inputs' one finiteness read and puts it in the batch under
        :data:`SCALE_KEY` for :meth:`iteration_outputs`, so the check costs no read of the device of its own.
        """
        return None

    def forward_function(self, data: dict[str, Any]) -> tuple[torch.Tensor | None, None]:
        """DIRECT's hook: the reconstruction (B, H, W, 2), or None when the iteration reconstructs nothing."""
        return self.iteration_outputs(data).get("output_image"), None

    def _do_iteration(self, data, loss_fns=None, regularizer_fns=None) -> DoIterationOutput:
        training = self.model.training
        data = dict_to_device(data, self.device)
        for module in self.frozen_modules:
            module.eval()
        scale = self.reference_scale(data)
        self.check_finite_on_all_ranks(
            {name: data[name] for name in self.CHECKED_INPUTS if name in data}, data, training, first=True, scale=scale
        )
        if scale is not None:
            data[SCALE_KEY] = scale
        with autocast(self.device_type, dtype=torch.bfloat16, enabled=self.mixed_precision):
            data["sensitivity_map"] = self.compute_sensitivity_map(data["sensitivity_map"])
            outputs = self.iteration_outputs(data)
        output_image = outputs.get("output_image")
        if output_image is not None:
            output_image = torch.linalg.vector_norm(output_image.float(), dim=-1)  # B, H, W
            self.check_finite_on_all_ranks({"reconstruction": output_image}, data, training)
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
            scalars = outputs.get(SCALARS_KEY) or {}
            # The step's logged scalars come to the host in the loss check's one read of the device.
            values = self.check_finite_on_all_ranks({"loss": loss}, data, training, fetch=list(scalars.values()))
            if scalars:
                outputs[SCALARS_KEY] = dict(zip(scalars, values, strict=True))
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

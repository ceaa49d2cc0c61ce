"""How a DIRECT batch trains the MIAR transformer, and how DIRECT's low-resolution input becomes its super-resolution.

:class:`MIAREngine` trains the transformer by teacher forcing: the fully sampled image of each slice is tokenized by
the frozen MSVQ-VAE, the LR input is the zero-filled image of DIRECT's ``SuperResolution`` mask (optionally blurred in
k-space), and the loss is the cross-entropy of every scale's tokens. Validation and ``direct predict`` generate the
tokens from the LR input alone with the configured decoding (``model.decoding``: argmax, multinomial, top_k_top_p or
MIAR's beam search with ``beam_k`` in 1..3) and decode them with the tokenizer.

The frozen tokenizer (the rule of :mod:`direct_nextaccel.miar`): the engine loads the MSVQ-VAE from
``model.tokenizer_checkpoint`` when it is built (:func:`load_tokenizer_state`, through the one checkpoint reader), for
training, validation and ``direct predict`` alike; MIAR holds it as a frozen submodule whose weights no MIAR checkpoint
carries (:mod:`direct_nextaccel.miar.miar`). A fresh training run also starts the LR encoder from the tokenizer's
encoder (:meth:`MIAREngine.initialise_from_tokenizer`); a resumed run or ``--initialization-checkpoint`` overrides it.

With ``model.reference_contrast`` (multi-contrast SR, T1 guiding T2) the batch's ``reference_image`` (B, H, W), the
fully sampled image of the reference contrast that the ``FastMRIReference`` dataset attaches at DIRECT's matrix, is
mapped to the model size like the LR input (:class:`~direct_nextaccel.core.images.WorkingGrid`) and conditions the
LR encoder through one more input channel whose weights start at zero.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from direct_nextaccel.core.checkpoints import (
    CheckpointError,
    check_run_config,
    read_checkpoint,
    without_module_prefix,
)
from direct_nextaccel.core.engine import PluginEngine
from direct_nextaccel.core.images import WorkingGrid, coil_combined
from direct_nextaccel.core.intensity import IntensityError, check_convention
from direct_nextaccel.miar.config import MIARConfig, MSVQVAEShape
from direct_nextaccel.miar.images import low_resolution_image
from direct_nextaccel.miar.miar import MIAR
from direct_nextaccel.miar.msvqvae import MSVQVAE
from direct_nextaccel.miar.msvqvae_engine import intensity_factor, replace_schedule, require_kspace
from direct_nextaccel.modules.transformer import token_cross_entropy

__all__ = ["TOKENIZER_KEYS", "MIAREngine", "load_tokenizer_state"]

logger = logging.getLogger(__name__)


TOKENIZER_KEYS = tuple(MSVQVAEShape.__dataclass_fields__)
"""The MSVQ-VAE's architecture (:class:`~direct_nextaccel.miar.config.MSVQVAEShape`), which a MIAR config repeats;
compared with the tokenizer run's ``config.yaml`` where it is next to the checkpoint (``quant_resi`` and
``image_size``, for example, do not show in a state dict)."""


def load_tokenizer_state(
    path: str | Path | None, model_config: Mapping[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """The MSVQ-VAE state dict of a DIRECT checkpoint (``model_<N>.pt`` of an MSVQ-VAE run).

    Parameters
    ----------
    path : path or None
        ``model.tokenizer_checkpoint``.
    model_config : Mapping, optional
        The MIAR ``model`` configuration: its :data:`TOKENIZER_KEYS` are compared with the tokenizer run's
        ``config.yaml`` when there is one.

    Raises
    ------
    CheckpointError
        A ValueError in one line naming the file: unset, it does not exist (also a FileNotFoundError), is a run
        directory, is truncated or not a DIRECT checkpoint (:func:`~direct_nextaccel.core.checkpoints.read_checkpoint`),
        its ``config.yaml`` names another model than the MSVQ-VAE or another tokenizer shape, or it was saved before
        the intensity convention.
    """
    what = "model.tokenizer_checkpoint"
    checkpoint = read_checkpoint(path, what)
    expected = {key: model_config[key] for key in TOKENIZER_KEYS if key in model_config} if model_config else {}
    check_run_config(path, {"model_name": "miar.msvqvae.MSVQVAE", **expected}, f"{what} {str(path)!r}")
    state = without_module_prefix(checkpoint["model"])  # a run under DistributedDataParallel saves module.* keys
    check_convention(state, f"{what} {str(path)!r}")
    return state


class MIAREngine(PluginEngine):
    """DIRECT engine of :class:`direct_nextaccel.miar.miar.MIAR`.

    Loss name it adds to ``training.loss.losses``, and the only one it accepts: ``token_cross_entropy`` (mean over
    all tokens of all scales). Logged besides: ``token_accuracy`` (teacher-forced argmax equals the target token).
    Building the engine loads the frozen MSVQ-VAE from ``model.tokenizer_checkpoint`` (:meth:`load_tokenizer`).
    """

    ENGINE_LOSSES: ClassVar[dict[str, str]] = {"token_cross_entropy": "token_cross_entropy"}
    ONLY_ENGINE_LOSSES: ClassVar[bool] = True

    CONFIG_CLASS: ClassVar[type] = MIARConfig

    def __init__(self, cfg, model, device, forward_operator, backward_operator, mixed_precision=False, **models):
        super().__init__(cfg, model, device, forward_operator, backward_operator, mixed_precision, **models)
        if not isinstance(self.miar, MIAR):
            raise TypeError(f"{type(self).__name__} trains miar.miar.MIAR, got {type(self.miar).__name__}")
        self.load_tokenizer()

    @property
    def miar(self) -> MIAR:
        """The MIAR model itself (unwrapped from DistributedDataParallel)."""
        return getattr(self.model, "module", self.model)

    @property
    def tokenizer(self) -> MSVQVAE:
        """The frozen MSVQ-VAE (held by MIAR as a submodule, loaded by this engine, in no checkpoint)."""
        return self.miar.tokenizer

    @property
    def decoding(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`MIAR.generate` from the config."""
        config = self.cfg.model
        return {
            "mode": config.decoding,
            "beam_k": config.beam_k,
            "beam_alpha": config.beam_alpha,
            "top_k": config.top_k,
            "top_p": config.top_p,
            "temperature": config.temperature,
        }

    def load_tokenizer(self) -> None:
        """Load ``model.tokenizer_checkpoint`` into MIAR's frozen tokenizer.

        Raises
        ------
        CheckpointError
            One line naming the key when it is unset, or the file when it cannot be used
            (:func:`load_tokenizer_state`, or weights that do not fit the configured shape).
        """
        path = self.cfg.model.tokenizer_checkpoint
        if not path:
            raise CheckpointError(
                "model.tokenizer_checkpoint is not set: train the MSVQ-VAE first and point it to its model_<N>.pt "
                "(MIAR's engine loads its frozen tokenizer from there for training and for direct predict)"
            )
        what = f"model.tokenizer_checkpoint {str(path)!r}"
        state = load_tokenizer_state(path, self.cfg.model)
        try:
            self.miar.load_tokenizer(state, source=what)
        except ValueError as error:  # the state dict does not fit; the message names the file
            raise CheckpointError(str(error)) from None
        logger.info("Loaded the frozen MSVQ-VAE tokenizer from %s.", path)

    def initialise_from_tokenizer(self) -> None:
        """Copy the tokenizer's encoder into the LR encoder (paper section 3.2; the reference channel starts at 0)."""
        self.miar.init_context_encoder_from(self.tokenizer.encoder.state_dict())

    def train(self, optimizer, lr_scheduler, training_datasets, experiment_directory, *args, **kwargs):
        """Start the LR encoder from the tokenizer's, then DIRECT's training with ``model.lr_schedule``.

        The initialisation happens before DIRECT loads anything: a resumed checkpoint or an
        ``--initialization-checkpoint`` overwrites it, so only a fresh model keeps it.
        """
        self.initialise_from_tokenizer()
        lr_scheduler = replace_schedule(self, optimizer, lr_scheduler)
        return super().train(optimizer, lr_scheduler, training_datasets, experiment_directory, *args, **kwargs)

    def iteration_outputs(self, data: dict[str, Any]) -> dict[str, Any]:
        """The super-resolved image (evaluation) and the teacher-forced loss (training, and validation when the HR
        k-space is in the batch), all at the tokenizer's intensity (:mod:`direct_nextaccel.core.intensity`).

        Returns
        -------
        dict
            ``output_image`` (B, H, W, 2) at DIRECT's scale (evaluation), ``token_cross_entropy`` and
            ``token_accuracy`` (when the HR k-space is there).
        """
        factor = self.intensity_factor(data)
        lr_image, reference_image = self.lr_image(data, factor), self._reference_image(data)
        outputs = {}
        if self.model.training or "kspace" in data:
            outputs.update(self._teacher_forced(data, lr_image, reference_image, factor))
        if not self.model.training:
            outputs["output_image"] = self._super_resolve(data, lr_image, reference_image, factor)
        return outputs

    def after_backward(self, outputs: dict[str, Any], data: dict[str, Any]) -> None:
        from direct.utils.events import get_event_storage

        get_event_storage().add_scalar("token_accuracy", float(outputs["token_accuracy"]))

    def intensity_factor(self, data: dict[str, Any]) -> torch.Tensor:
        """``intensity_gain / s`` per slice (B,), ``s`` from the low-resolution block of DIRECT's input."""
        return intensity_factor(self.tokenizer.intensity_gain, data, data["masked_kspace"], self.backward_operator)

    def working_grid(self, data: dict[str, Any]) -> WorkingGrid:
        """The map between the batch's matrix (and reconstruction size) and the model's image size."""
        return WorkingGrid.of_batch(data, tuple(data["masked_kspace"].shape[2:4]), self.miar.image_size)

    def lr_image(self, data: dict[str, Any], factor: torch.Tensor | None = None) -> torch.Tensor:
        """LR input (B, 2, h, w) at the model size and the tokenizer's intensity, from a batch whose
        ``sensitivity_map`` is already computed (``factor``: :meth:`intensity_factor`, computed when not given)."""
        factor = self.intensity_factor(data) if factor is None else factor
        image = low_resolution_image(
            data["masked_kspace"],
            data["sampling_mask"],
            data["sensitivity_map"],
            self.backward_operator,
            blur_sigma=self.cfg.model.lr_blur_sigma,
        )
        return self.working_grid(data).to_working(image * factor[:, None, None, None].to(image.dtype))

    def _reference_image(self, data: dict[str, Any]) -> torch.Tensor | None:
        """The reference contrast (B, h, w) at the model size, divided by its own maximum, when
        ``model.reference_contrast``, else None."""
        if not self.cfg.model.reference_contrast:
            return None
        if "reference_image" not in data:
            raise ValueError(
                "model.reference_contrast is on but the batch has no 'reference_image': use the dataset "
                "`name: FastMRIReference` (direct_nextaccel.data.reference) for training, validation and inference"
            )
        reference = data["reference_image"]
        peak = reference.flatten(1).amax(dim=1)  # B
        if not bool((peak > 0).all()):
            index = int((peak <= 0).nonzero()[0])
            raise IntensityError(
                f"{data['filename'][index]} slice {int(data['slice_no'][index])}: the reference contrast's image is "
                "all zero"
            )
        return self.working_grid(data).to_working(reference / peak[:, None, None])

    def _super_resolve(
        self,
        data: dict[str, Any],
        lr_image: torch.Tensor,
        reference_image: torch.Tensor | None,
        factor: torch.Tensor,
    ) -> torch.Tensor:
        image = self.miar.super_resolve(lr_image, reference_image, **self.decoding)  # B, 2, h, w
        image = self.working_grid(data).from_working(image)
        return (image / factor[:, None, None, None].to(image.dtype)).permute(0, 2, 3, 1)

    def _teacher_forced(
        self,
        data: dict[str, Any],
        lr_image: torch.Tensor,
        reference_image: torch.Tensor | None,
        factor: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        kspace = require_kspace(data, "MIAREngine")
        hr_image = coil_combined(kspace, data["sensitivity_map"], self.backward_operator)
        hr_image = hr_image * factor[:, None, None, None].to(hr_image.dtype)
        tokens, _ = self.tokenizer.tokenize(self.working_grid(data).to_working(hr_image))
        loss, accuracy = token_cross_entropy(self.model(lr_image, tokens, reference_image), tokens)
        return {"token_cross_entropy": loss, "token_accuracy": accuracy}

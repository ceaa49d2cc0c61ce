"""Engines of the ``direct.nn.miar`` models, where DIRECT looks for them (``<alias>.<alias>_engine``), and MIAR's.

:class:`MIAREngine` trains the transformer by teacher forcing: the fully sampled image of each slice is tokenized by
the frozen MSVQ-VAE (loaded from ``model.tokenizer_checkpoint`` when training starts), the LR input is the zero-filled
image of DIRECT's ``SuperResolution`` mask (optionally blurred in k-space), and the loss is the cross-entropy of every
scale's tokens. Validation and ``direct predict`` generate the tokens from the LR input alone with the configured
decoding (``model.decoding``: argmax, multinomial, top_k_top_p or MIAR's beam search with ``beam_k`` in 1..3) and
decode them with the tokenizer.

With ``model.reference_contrast`` (multi-contrast SR, T1 guiding T2) the batch's ``reference_image`` (B, H, W), the
fully sampled image of the reference contrast that the ``FastMRIReference`` dataset attaches at DIRECT's matrix, is
centre-cropped or zero-padded to the model size like the LR input and conditions the LR encoder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import torch

from direct_nextaccel.core.checkpoints import CheckpointError, check_run_config, read_checkpoint, without_module_prefix
from direct_nextaccel.core.engine import PluginEngine
from direct_nextaccel.core.images import center_crop_or_pad, coil_combined
from direct_nextaccel.core.intensity import IntensityError, check_convention
from direct_nextaccel.miar.config import MIARConfig
from direct_nextaccel.miar.images import low_resolution_image
from direct_nextaccel.miar.miar import token_cross_entropy
from direct_nextaccel.miar.msvqvae_engine import MSVQVAEEngine, intensity_factor, replace_schedule, require_kspace
from direct_nextaccel.modules.options import validate_model_config

__all__ = ["MIAREngine", "MSVQVAEEngine", "load_tokenizer_state"]

logger = logging.getLogger(__name__)


def load_tokenizer_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The MSVQ-VAE state dict of a DIRECT checkpoint (``model_<N>.pt`` of an MSVQ-VAE run).

    Raises
    ------
    CheckpointError
        A ValueError in one line naming the file: it does not exist (also a FileNotFoundError), is a run directory,
        is truncated or not a DIRECT checkpoint (:func:`~direct_nextaccel.core.checkpoints.read_checkpoint`), or its
        ``config.yaml`` names another model than the MSVQ-VAE.
    """
    what = "model.tokenizer_checkpoint"
    checkpoint = read_checkpoint(path, what)
    check_run_config(path, {"model_name": "miar.msvqvae.MSVQVAE"}, f"{what} {str(path)!r}")
    state = without_module_prefix(checkpoint["model"])  # a run under DistributedDataParallel saves module.* keys
    check_convention(state, f"{what} {str(path)!r}")
    return state


class MIAREngine(PluginEngine):
    """DIRECT engine of :class:`direct_nextaccel.miar.miar.MIAR`.

    Loss name it adds to ``training.loss.losses``, and the only one it accepts: ``token_cross_entropy`` (mean over
    all tokens of all scales). Logged besides: ``token_accuracy`` (teacher-forced argmax equals the target token).
    """

    ENGINE_LOSSES: ClassVar[dict[str, str]] = {"token_cross_entropy": "token_cross_entropy"}
    ONLY_ENGINE_LOSSES: ClassVar[bool] = True

    def __init__(self, cfg, model, device, forward_operator, backward_operator, mixed_precision=False, **models):
        validate_model_config(cfg.model, MIARConfig)  # ranges; DIRECT's merge has checked the choices
        super().__init__(
            cfg,
            model,
            device,
            forward_operator=forward_operator,
            backward_operator=backward_operator,
            mixed_precision=mixed_precision,
            **models,
        )

    @property
    def miar(self):
        """The MIAR model itself (unwrapped from DistributedDataParallel)."""
        return getattr(self.model, "module", self.model)

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
        """Load ``model.tokenizer_checkpoint`` into the frozen tokenizer and the LR encoder (before any resume)."""
        path = self.cfg.model.tokenizer_checkpoint
        if not path:
            raise ValueError(
                "model.tokenizer_checkpoint is not set: train the MSVQ-VAE first and point it to its model_<N>.pt"
            )
        state = load_tokenizer_state(path)
        try:
            self.miar.load_tokenizer(state)
        except ValueError as error:  # the state dict does not fit: name the file
            raise CheckpointError(f"model.tokenizer_checkpoint {str(path)!r}: {error}") from None
        logger.info("Loaded the MSVQ-VAE tokenizer from %s and initialised the LR encoder from its encoder.", path)

    def train(self, optimizer, lr_scheduler, training_datasets, experiment_directory, *args, **kwargs):
        """Load the tokenizer, then DIRECT's training (whose resume, if asked, overrides it with the checkpoint's)."""
        self.load_tokenizer()
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
        return intensity_factor(self.miar.tokenizer.intensity_gain, data, data["masked_kspace"], self.backward_operator)

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
        return center_crop_or_pad(image * factor[:, None, None, None].to(image.dtype), self.miar.image_size)

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
        return center_crop_or_pad(reference / peak[:, None, None], self.miar.image_size)

    def _super_resolve(
        self,
        data: dict[str, Any],
        lr_image: torch.Tensor,
        reference_image: torch.Tensor | None,
        factor: torch.Tensor,
    ) -> torch.Tensor:
        image = self.miar.super_resolve(lr_image, reference_image, **self.decoding)  # B, 2, h, w
        image = center_crop_or_pad(image, tuple(data["masked_kspace"].shape[2:4]))
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
        tokens, _ = self.miar.tokenizer.tokenize(center_crop_or_pad(hr_image, self.miar.image_size))
        loss, accuracy = token_cross_entropy(self.model(lr_image, tokens, reference_image), tokens)
        return {"token_cross_entropy": loss, "token_accuracy": accuracy}

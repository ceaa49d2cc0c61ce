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
import math
from pathlib import Path
from typing import Any, ClassVar

import torch
from direct.engine import DoIterationOutput
from direct.nn.mri_models import MRIModelEngine
from direct.utils import detach_dict, dict_to_device
from torch.amp import autocast

from direct_nextaccel.miar.images import center_crop_or_pad, coil_combined, low_resolution_image
from direct_nextaccel.miar.miar import check_decoding, token_cross_entropy
from direct_nextaccel.miar.msvqvae_engine import MSVQVAEEngine, replace_schedule, require_kspace
from direct_nextaccel.tokenizer_engine import check_finite

__all__ = ["MIAREngine", "MSVQVAEEngine", "load_tokenizer_state"]

logger = logging.getLogger(__name__)


def load_tokenizer_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The MSVQ-VAE state dict of a DIRECT checkpoint (``model_<N>.pt`` of an MSVQ-VAE run).

    Raises
    ------
    ValueError
        If the file does not exist or holds no ``model`` state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"tokenizer_checkpoint {str(path)!r} is not a file (a model_<N>.pt of an MSVQ-VAE run)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"tokenizer_checkpoint {str(path)!r} has no 'model' state dict (not a DIRECT checkpoint)")
    # A run under DistributedDataParallel saves the wrapped model's keys.
    return {key.removeprefix("module."): value for key, value in state.items()}


class MIAREngine(MRIModelEngine):
    """DIRECT engine of :class:`direct_nextaccel.miar.miar.MIAR`.

    Loss name it adds to ``training.loss.losses``, and the only one it accepts: ``token_cross_entropy`` (mean over
    all tokens of all scales). Logged besides: ``token_accuracy`` (teacher-forced argmax equals the target token).
    """

    ENGINE_LOSSES: ClassVar[dict[str, str]] = {"token_cross_entropy": "token_cross_entropy"}

    def __init__(self, cfg, model, device, forward_operator, backward_operator, mixed_precision=False, **models):
        config = cfg.model
        check_decoding(
            config.decoding, config.beam_k, config.beam_alpha, config.top_k, config.top_p, config.temperature
        )
        if not math.isfinite(config.lr_blur_sigma) or config.lr_blur_sigma < 0:
            raise ValueError(f"lr_blur_sigma {config.lr_blur_sigma} must be >= 0 (0 switches the blur off)")
        for entry in cfg.training.loss.losses:
            if entry.function not in self.ENGINE_LOSSES:
                raise ValueError(
                    f"loss {entry.function!r} is not available to MIAR, which trains on tokens: use token_cross_entropy"
                )
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
        self.miar.load_tokenizer(load_tokenizer_state(path))
        logger.info("Loaded the MSVQ-VAE tokenizer from %s and initialised the LR encoder from its encoder.", path)

    def train(self, optimizer, lr_scheduler, training_datasets, experiment_directory, *args, **kwargs):
        """Load the tokenizer, then DIRECT's training (whose resume, if asked, overrides it with the checkpoint's)."""
        self.load_tokenizer()
        lr_scheduler = replace_schedule(self, optimizer, lr_scheduler)
        return super().train(optimizer, lr_scheduler, training_datasets, experiment_directory, *args, **kwargs)

    def forward_function(self, data: dict[str, Any]) -> tuple[torch.Tensor, None]:
        """DIRECT's hook: the super-resolved image (B, H, W, 2) decoded as configured."""
        return self._super_resolve(data, self.lr_image(data), self._reference_image(data)), None

    def lr_image(self, data: dict[str, Any]) -> torch.Tensor:
        """LR input (B, 2, h, w) at the model size, from a batch whose ``sensitivity_map`` is already computed."""
        image = low_resolution_image(
            data["masked_kspace"],
            data["sampling_mask"],
            data["sensitivity_map"],
            self.backward_operator,
            blur_sigma=self.cfg.model.lr_blur_sigma,
        )
        return center_crop_or_pad(image, self.miar.image_size)

    def _reference_image(self, data: dict[str, Any]) -> torch.Tensor | None:
        """The reference contrast (B, h, w) at the model size when ``model.reference_contrast``, else None."""
        if not self.cfg.model.reference_contrast:
            return None
        if "reference_image" not in data:
            raise ValueError(
                "model.reference_contrast is on but the batch has no 'reference_image': use the dataset "
                "`name: FastMRIReference` (direct_nextaccel.data.reference) for training, validation and inference"
            )
        return center_crop_or_pad(data["reference_image"], self.miar.image_size)

    def _super_resolve(
        self, data: dict[str, Any], lr_image: torch.Tensor, reference_image: torch.Tensor | None
    ) -> torch.Tensor:
        image = self.miar.super_resolve(lr_image, reference_image, **self.decoding)  # B, 2, h, w
        return center_crop_or_pad(image, tuple(data["masked_kspace"].shape[2:4])).permute(0, 2, 3, 1)

    def _teacher_forced(
        self, data: dict[str, Any], lr_image: torch.Tensor, reference_image: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        kspace = require_kspace(data, "MIAREngine")
        hr_image = coil_combined(kspace, data["sensitivity_map"], self.backward_operator)
        tokens, _ = self.miar.tokenizer.tokenize(center_crop_or_pad(hr_image, self.miar.image_size))
        loss, accuracy = token_cross_entropy(self.model(lr_image, tokens, reference_image), tokens)
        return {"token_cross_entropy": loss, "token_accuracy": accuracy}

    def _do_iteration(self, data, loss_fns=None, regularizer_fns=None) -> DoIterationOutput:
        data = dict_to_device(data, self.device)
        present = ("masked_kspace", "kspace", "sensitivity_map", "reference_image")
        check_finite({name: data[name] for name in present if name in data}, data)
        training = self.model.training
        output_image = None
        with autocast("cuda", enabled=self.mixed_precision):
            data["sensitivity_map"] = self.compute_sensitivity_map(data["sensitivity_map"])
            lr_image, reference_image = self.lr_image(data), self._reference_image(data)
            # Validation scores the teacher-forced loss too when the HR k-space is there; prediction usually has none.
            outputs = self._teacher_forced(data, lr_image, reference_image) if training or "kspace" in data else {}
            if not training:
                output_image = self._super_resolve(data, lr_image, reference_image)
                output_image = torch.linalg.vector_norm(output_image, dim=-1)  # B, H, W
                check_finite({"reconstruction": output_image}, data)
                outputs["output_image"] = output_image
            # DIRECT skips a loss whose source is missing: predicting without the HR k-space scores nothing.
            loss_dict, regularizer_dict = self._accumulate_keyed_losses(
                loss_fns or {}, regularizer_fns or {}, data, outputs
            )
        if training:
            loss = sum(loss_dict.values()) + sum(regularizer_dict.values())
            check_finite({"loss": loss}, data)
            self._scaler.scale(loss).backward()
            from direct.utils.events import get_event_storage

            get_event_storage().add_scalar("token_accuracy", float(outputs["token_accuracy"]))
        return DoIterationOutput(
            output_image=output_image,
            sensitivity_map=data["sensitivity_map"],
            data_dict={**detach_dict(loss_dict), **detach_dict(regularizer_dict)},
        )

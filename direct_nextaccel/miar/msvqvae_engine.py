"""How a DIRECT batch trains the MSVQ-VAE: tokenize and reconstruct the fully sampled (HR) image, score it.

The engine needs the fully sampled k-space in the batch (``delete_kspace: false`` in the dataset transforms); the
masking of the dataset only matters through the sensitivity maps DIRECT estimates from it, so the tokenizer is trained
with the ``SuperResolution`` mask of the MIAR runs that will use it. The output image is the reconstruction from all
scales, so ``direct predict`` writes the tokenizer's reconstruction (its quality bound for MIAR, paper Table 3).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
from direct.engine import DoIterationOutput
from direct.nn.mri_models import MRIModelEngine
from direct.utils import detach_dict, dict_to_device
from torch.amp import autocast

from direct_nextaccel import _hook
from direct_nextaccel.miar.images import center_crop_or_pad, coil_combined
from direct_nextaccel.nextaccel.aqvae_engine import check_finite
from direct_nextaccel.schedules import warmup_schedule

logger = logging.getLogger(__name__)

# The engine adds a loss name to DIRECT's; the patched loss builder must be in place even when this module is
# imported directly rather than through ``direct.nn.miar``.
_hook.install()


def require_kspace(data: dict[str, Any], engine: str) -> torch.Tensor:
    """The batch's fully sampled k-space, or a ValueError telling how to keep it."""
    if "kspace" not in data:
        raise ValueError(
            f"{engine} needs the fully sampled k-space in the batch: set `delete_kspace: false` in the dataset "
            "transforms"
        )
    return data["kspace"]


def replace_schedule(engine: MRIModelEngine, optimizer, lr_scheduler):
    """The schedule the config's ``model.lr_schedule`` asks for: DIRECT's own, or warm-up then cosine/linear decay."""
    config = engine.cfg.model
    if config.lr_schedule == "direct":
        return lr_scheduler
    return warmup_schedule(
        optimizer,
        config.lr_schedule,
        engine.cfg.training.lr_warmup_iter,
        engine.cfg.training.num_iterations,
        config.min_lr,
    )


class MSVQVAEEngine(MRIModelEngine):
    """DIRECT engine of :class:`direct_nextaccel.miar.msvqvae.MSVQVAE`.

    Loss name it adds to ``training.loss.losses``: ``commitment_loss`` (the quantizer's ``beta`` is already inside,
    so its multiplier is normally 1). Image losses (``l1_loss``, ``ssim_magnitude_loss``, any DIRECT loss) compare
    the magnitude of the reconstruction with DIRECT's target. Logged besides the losses: codebook usage and
    perplexity per scale and the mean number of scales the decoder saw (scale-aware dropout).
    """

    ENGINE_LOSSES: ClassVar[dict[str, str]] = {"commitment_loss": "commitment_loss"}

    @property
    def tokenizer(self):
        """The MSVQ-VAE itself (unwrapped from DistributedDataParallel)."""
        return getattr(self.model, "module", self.model)

    def train(self, optimizer, lr_scheduler, training_datasets, experiment_directory, *args, **kwargs):
        """DIRECT's training with the schedule of ``model.lr_schedule``."""
        lr_scheduler = replace_schedule(self, optimizer, lr_scheduler)
        return super().train(optimizer, lr_scheduler, training_datasets, experiment_directory, *args, **kwargs)

    def forward_function(self, data: dict[str, Any]) -> tuple[torch.Tensor, None]:
        """DIRECT's hook: the image reconstructed from all scales, (B, H, W, 2)."""
        return self._forward(data)["output_image"], None

    def _forward(self, data: dict[str, Any]) -> dict[str, Any]:
        kspace = require_kspace(data, "MSVQVAEEngine")
        height, width = kspace.shape[2:4]
        image = coil_combined(kspace, data["sensitivity_map"], self.backward_operator)  # B, 2, H, W
        result = self.model(center_crop_or_pad(image, self.tokenizer.image_size))
        reconstruction = center_crop_or_pad(result["reconstruction"], (height, width))
        return {
            "output_image": reconstruction.permute(0, 2, 3, 1),
            "commitment_loss": result["commit_loss"],
            "usage": result["usage"],
            "kept_scales": result["kept_scales"],
        }

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

    def _log_training_scalars(self, outputs: dict[str, Any]) -> None:
        from direct.utils.events import get_event_storage

        storage = get_event_storage()
        for side, (used, perplexity) in zip(self.tokenizer.scales, outputs["usage"], strict=True):
            storage.add_scalar(f"codebook_usage_s{side}", float(used))
            storage.add_scalar(f"codebook_perplexity_s{side}", float(perplexity))
        storage.add_scalar("decoded_scales_mean", float(outputs["kept_scales"].float().mean()))

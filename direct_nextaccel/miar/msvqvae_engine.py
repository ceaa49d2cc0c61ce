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
from direct.nn.mri_models import MRIModelEngine

from direct_nextaccel import _hook
from direct_nextaccel.core.engine import INTENSITY_KEY, TokenizerEngine
from direct_nextaccel.core.images import WorkingGrid, coil_combined
from direct_nextaccel.core.intensity import reference_scale
from direct_nextaccel.miar.config import MSVQVAEConfig
from direct_nextaccel.miar.images import sr_factor_of_mask
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


def intensity_factor(gain: torch.Tensor, data: dict[str, Any], kspace: torch.Tensor, backward_operator) -> torch.Tensor:
    """``gain / s`` per slice (B,), ``s`` from the low-resolution block (DIRECT's ``sampling_mask``) of ``kspace``.

    The block is what the super-resolution input holds, so training (fully sampled k-space) and inference (the
    masked k-space) compute the same scale.
    """
    sr_factor_of_mask(data["sampling_mask"])  # refuses a mask that is not a super-resolution block
    region = data["sampling_mask"][:, 0, :, :, 0].bool()  # B, H, W
    return gain / reference_scale(kspace, region, backward_operator, data.get("filename"), data.get("slice_no"))


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


class MSVQVAEEngine(TokenizerEngine):
    """DIRECT engine of :class:`direct_nextaccel.miar.msvqvae.MSVQVAE`.

    Loss name it adds to ``training.loss.losses``: ``commitment_loss`` (the quantizer's ``beta`` is already inside,
    so its multiplier is normally 1). Image losses (``l1_loss``, ``ssim_magnitude_loss``, any DIRECT loss) compare
    the magnitude of the reconstruction with DIRECT's target. Logged besides the losses: codebook usage and
    perplexity per scale and the mean number of scales the decoder saw (scale-aware dropout).
    """

    ENGINE_LOSSES: ClassVar[dict[str, str]] = {"commitment_loss": "commitment_loss"}
    CONFIG_CLASS: ClassVar[type] = MSVQVAEConfig

    def train(self, optimizer, lr_scheduler, training_datasets, experiment_directory, *args, **kwargs):
        """DIRECT's training with the schedule of ``model.lr_schedule``."""
        lr_scheduler = replace_schedule(self, optimizer, lr_scheduler)
        return super().train(optimizer, lr_scheduler, training_datasets, experiment_directory, *args, **kwargs)

    def iteration_outputs(self, data: dict[str, Any]) -> dict[str, Any]:
        """Tokenize and decode the fully sampled image of each slice at the tokenizer's intensity.

        Returns
        -------
        dict
            ``output_image`` (B, H, W, 2) at DIRECT's scale and matrix, ``commitment_loss``, ``usage``,
            ``kept_scales`` and ``intensity_factor`` (B,).
        """
        kspace = require_kspace(data, "MSVQVAEEngine")
        height, width = kspace.shape[2:4]
        factor = intensity_factor(self.tokenizer.intensity_gain, data, kspace, self.backward_operator)
        image = coil_combined(kspace, data["sensitivity_map"], self.backward_operator)  # B, 2, H, W
        image = image * factor[:, None, None, None].to(image.dtype)
        grid = WorkingGrid.of_batch(data, (height, width), self.tokenizer.image_size)
        result = self.model(grid.to_working(image))
        reconstruction = grid.from_working(result["reconstruction"])
        reconstruction = reconstruction / factor[:, None, None, None].to(reconstruction.dtype)
        return {
            "output_image": reconstruction.permute(0, 2, 3, 1),
            "commitment_loss": result["commit_loss"],
            "usage": result["usage"],
            "kept_scales": result["kept_scales"],
            INTENSITY_KEY: factor,
        }

    def log_training_scalars(self, outputs: dict[str, Any]) -> None:
        from direct.utils.events import get_event_storage

        storage = get_event_storage()
        for side, (used, perplexity) in zip(self.tokenizer.scales, outputs["usage"], strict=True):
            storage.add_scalar(f"codebook_usage_s{side}", float(used))
            storage.add_scalar(f"codebook_perplexity_s{side}", float(perplexity))
        storage.add_scalar("decoded_scales_mean", float(outputs["kept_scales"].float().mean()))

"""How a DIRECT batch trains the AQ-VAE: simulate the six acquisitions of each slice, tokenize, decode, score.

The engine needs the fully sampled k-space in the batch (``delete_kspace: false`` in the dataset transforms): from it
and the slice's nested mask family it forms the coil-combined images of R = 32, 16, 8, 4, 2 and the fully sampled
data, exactly as every later NextAccel engine does (:mod:`direct_nextaccel.nextaccel.acquisition`). The output image
is the reconstruction decoded from the tokens of all six levels, so ``direct predict`` writes that.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import torch

from direct_nextaccel import _hook
from direct_nextaccel.core.checkpoints import CheckpointError, read_checkpoint
from direct_nextaccel.core.engine import INTENSITY_KEY, SCALE_KEY, TokenizerEngine
from direct_nextaccel.core.images import WorkingGrid
from direct_nextaccel.masks.nested import FAMILIES, LEVELS, family_index
from direct_nextaccel.nextaccel import acquisition
from direct_nextaccel.nextaccel.config import AQVAEConfig
from direct_nextaccel.schedules import warmup_schedule

logger = logging.getLogger(__name__)

MASK_SEED_OFFSET = 1
"""Offset added to the process's torch seed for the generator of the training masks' random inputs (on the engine's
device), so that its stream differs from the family choice's."""


def _recorded_best_ssim(path: Path) -> float | None:
    """The validation SSIM a ``model_best.pt`` records, or None (an older file, or one that cannot be read)."""
    try:
        checkpoint = read_checkpoint(path, "model_best.pt")
    except CheckpointError as error:  # a damaged model_best.pt must not stop a resume: the next best replaces it
        logger.warning("%s: the next validation replaces it.", error)
        return None
    value = checkpoint.get("training_state", {}).get("best_ssim")
    if value is None:
        logger.warning(
            "%s records no validation SSIM (an older version wrote it): the next validation replaces it.", path
        )
        return None
    return float(value)


LEVEL_NAMES = (*(f"R{r}" for r in LEVELS), "FS")

# Engines of this package add loss names to DIRECT's; make sure the patched loss builder is in place even when the
# package was imported directly rather than through ``direct.nn.nextaccel``.
_hook.install()


class AQVAEEngine(TokenizerEngine):
    """DIRECT engine of :class:`direct_nextaccel.nextaccel.aqvae.AQVAE`.

    Loss names it adds to ``training.loss.losses``: ``commitment_loss`` (already weighted by the quantizer's
    ``beta`` = 0.25, the paper's single commitment weight, so its YAML multiplier is 1.0) and ``adversarial_loss``
    (0.1). Image losses (``ssim_magnitude_loss``, ``lpips_loss``, or any DIRECT loss) compare the magnitude of the
    reconstruction with DIRECT's target.
    """

    ENGINE_LOSSES: ClassVar[dict[str, str]] = {
        "commitment_loss": "commitment_loss",
        "adversarial_loss": "adversarial_loss",
    }

    CONFIG_CLASS: ClassVar[type] = AQVAEConfig

    def __init__(self, cfg, model, device, forward_operator, backward_operator, mixed_precision=False, **models):
        super().__init__(cfg, model, device, forward_operator, backward_operator, mixed_precision, **models)
        self.families = tuple(cfg.model.mask_families)
        # Checked here once: the steps pass the labels of these families to the model without reading them back.
        outside = [family for family in self.families if family_index(family) >= self.tokenizer.num_families]
        if outside:
            raise ValueError(
                f"model.mask_families {list(self.families)} has {outside}, whose labels are outside the model's "
                f"num_families {self.tokenizer.num_families} (labels in the order of {list(FAMILIES)})"
            )
        self.center_fraction = cfg.model.mask_center_fraction
        self.output_levels = tuple(cfg.model.output_levels)
        self.discriminator = None
        self.discriminator_optimizer = None
        # Families are drawn on the host (the masks are built per family), the masks' random inputs on the device.
        self._family_generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
        self._mask_generator = torch.Generator(device).manual_seed((torch.initial_seed() + MASK_SEED_OFFSET) % 2**63)
        self._best_ssim = float("-inf")

    def _loss_names(self) -> list[str]:
        return [entry.function for entry in self.cfg.training.loss.losses]

    def train(self, optimizer, lr_scheduler, training_datasets, experiment_directory, *args, **kwargs):
        """Add VAR initialisation, the discriminator with its own optimizer, and the paper's schedule."""
        self._initialise_from_var()
        config = self.cfg.model
        if "adversarial_loss" in self._loss_names():
            self._build_discriminator()
        if config.lr_schedule != "direct":
            lr_scheduler = warmup_schedule(
                optimizer,
                config.lr_schedule,
                self.cfg.training.lr_warmup_iter,
                self.cfg.training.num_iterations,
                config.min_lr,
            )
        return super().train(optimizer, lr_scheduler, training_datasets, experiment_directory, *args, **kwargs)

    def _initialise_from_var(self) -> None:
        """Paper: encoder, decoder and Phi start from VAR's VQ-VAE; training from scratch must be asked for."""
        from direct_nextaccel.weights import find_weight, missing_weight_message

        config = self.cfg.model
        if config.var_init == "none":
            logger.warning("model.var_init is 'none': the AQ-VAE trains from scratch, not from VAR's VQ-VAE.")
            return
        path = config.var_checkpoint or find_weight("var_vqvae")
        if path is None:
            raise FileNotFoundError(f"{missing_weight_message('var_vqvae')}; or set model.var_init: none")
        self.tokenizer.load_var_weights(path)
        logger.info("Initialised the AQ-VAE from VAR weights %s.", path)

    def validate_model_at_interval(self, func, iter_idx, total_iter):
        """DIRECT's validation, then ``model_best.pt`` whenever the mean validation SSIM improves (paper: the
        tokenizer is selected by validation SSIM; DIRECT itself keeps no best checkpoint).

        ``model_best.pt`` is written atomically and never moves ``last_model.txt`` (``--resume`` loads the last
        ``model_<N>.pt``); it records its score, and a resumed run starts from the best score of its checkpoint or of
        ``model_best.pt``, whichever is higher, so it never replaces ``model_best.pt`` with a worse model.
        """
        super().validate_model_at_interval(func, iter_idx, total_iter)
        from direct.utils import communication
        from direct.utils.events import get_event_storage

        scores = [
            value
            for name, value in get_event_storage().latest().items()
            if name.startswith("val/") and name.endswith("fastmri_ssim_metric")
        ]
        if not scores:
            return
        score = float(sum(scores) / len(scores))
        if score <= self._best_ssim:
            return
        self._best_ssim = score  # on every rank, so that any rank's checkpoint holds it
        if communication.is_main_process():
            self._require_checkpointer().save("best")
            logger.info(
                "Validation SSIM %.4f at iteration %d is the best so far: saved model_best.pt.", score, iter_idx
            )

    # Resume ---------------------------------------------------------------------------------------------------------

    def resume_checkpointables(self) -> dict[str, Any]:
        """The discriminator's optimizer (its learning rate is constant: it has no schedule of its own)."""
        if self.discriminator_optimizer is None:
            return {}
        return {"discriminator_optimizer": self.discriminator_optimizer}

    def training_state(self) -> dict[str, Any]:
        return {**super().training_state(), "best_ssim": self._best_ssim}

    def restore_training_state(self, state: dict[str, Any] | None, path) -> None:
        """Also the best validation SSIM: the higher of the checkpoint's and the one ``model_best.pt`` records."""
        super().restore_training_state(state, path)
        best = float((state or {}).get("best_ssim", float("-inf")))
        best_file = Path(path).parent / "model_best.pt"
        recorded = _recorded_best_ssim(best_file) if best_file.is_file() else None
        if recorded is not None:
            best = max(best, recorded)
        self._best_ssim = best

    def _build_discriminator(self) -> None:
        from direct_nextaccel.modules.discriminator import ProjectedDiscriminator, build_discriminator_optimizer

        config = self.cfg.model
        if config.discriminator_backbone == "none":
            raise ValueError("training.loss.losses has adversarial_loss but model.discriminator_backbone is 'none'")
        self.discriminator = ProjectedDiscriminator(
            backbone=config.discriminator_backbone, weights_path=config.discriminator_weights
        ).to(self.device)
        # Registered after DIRECT built its optimizer: saved in checkpoints, stepped only by its own optimizer.
        # Several ranks: each builds its own (random heads, and a random ViT with vit_random); rank 0's reaches every
        # rank when training starts (PluginEngine.training_loop) and discriminator_step averages its gradients.
        self.models["discriminator"] = self.discriminator
        self.discriminator_optimizer = build_discriminator_optimizer(
            self.discriminator, lr=config.discriminator_lr, weight_decay=config.discriminator_weight_decay
        )

    def iteration_outputs(self, data: dict[str, Any]) -> dict[str, Any]:
        """Tokenize and decode the six levels of each slice at the tokenizer's intensity (:mod:`.core.intensity`).

        Returns
        -------
        dict
            ``output_image`` (B, H, W, 2) at DIRECT's scale and matrix, ``commitment_loss``, ``usage``,
            ``intensity_factor`` (B,) and, in training with a discriminator, ``adversarial_loss``.
        """
        if "kspace" not in data:
            raise ValueError(
                "AQVAEEngine needs the fully sampled k-space in the batch: set `delete_kspace: false` in the "
                "dataset transforms"
            )
        kspace = data["kspace"]
        height, width = kspace.shape[2:4]
        families = acquisition.choose_families(
            data["filename"], self.families, self._family_generator if self.model.training else None
        )
        # Training draws a fresh nested family per slice (like the baselines' use_seed: false); evaluation uses
        # DIRECT's per-file seed so runs are comparable.
        draws = self._mask_generator if self.model.training else None
        masks = acquisition.level_masks(
            data["filename"], families, (height, width), self.center_fraction, draws, kspace.device
        )
        factor = self.intensity_factor(data)
        images = acquisition.hierarchy_images(kspace, data["sensitivity_map"], masks, self.backward_operator) * factor[
            :, None, None, None, None
        ].to(kspace.dtype)
        grid = WorkingGrid.of_batch(data, (height, width), self.tokenizer.image_size)
        images = grid.to_working(images)  # B, 6, 2, h, w
        labels = acquisition.family_labels(families, kspace.device)
        result = self.model(images, labels, check_values=False)  # labels of validated family names
        if not self.model.training and self.output_levels != tuple(range(acquisition.NUM_LEVELS)):
            tokens = [result["indices"][level] for level in self.output_levels]
            result["reconstruction"] = self.tokenizer.decode_indices(tokens, levels=self.output_levels)
        reconstruction = grid.from_working(result["reconstruction"])  # B, 2, H, W
        reconstruction = reconstruction / factor[:, None, None, None].to(reconstruction.dtype)
        outputs = {
            "output_image": reconstruction.permute(0, 2, 3, 1),
            "commitment_loss": result["commit_loss"],
            "usage": result["usage"],
            INTENSITY_KEY: factor,
        }
        if self.discriminator is not None and self.model.training:
            from direct_nextaccel.modules.discriminator import generator_adversarial_loss

            real, fake = self._discriminator_inputs(images[:, -1], result["reconstruction"])
            outputs["adversarial_loss"] = generator_adversarial_loss(self.discriminator(fake))
            outputs["discriminator_inputs"] = (real, fake)
        return outputs

    def reference_scale(self, data: dict[str, Any]) -> torch.Tensor | None:
        """The fully sampled k-space's reference scale (B,), unchecked: :meth:`_do_iteration` checks it with the
        inputs."""
        if "kspace" not in data:
            return None  # the iteration refuses the batch in its own words
        return acquisition.calibration_scale(data["kspace"], self.center_fraction, self.backward_operator, check=False)

    def intensity_factor(self, data: dict[str, Any]) -> torch.Tensor:
        """``intensity_gain / s`` per slice (B,), ``s`` from the calibration centre every family shares: the batch's
        checked :data:`SCALE_KEY` inside an iteration, else computed and checked here."""
        scale = data.get(SCALE_KEY)
        if scale is None:
            scale = acquisition.calibration_scale(
                data["kspace"], self.center_fraction, self.backward_operator, data.get("filename"), data.get("slice_no")
            )
        return self.tokenizer.intensity_gain / scale

    @staticmethod
    def _discriminator_inputs(fully_sampled: torch.Tensor, reconstruction: torch.Tensor):
        """Magnitudes (B, 1, h, w) scaled by the fully sampled image's maximum, as the discriminator expects."""
        real = torch.linalg.vector_norm(fully_sampled, dim=1, keepdim=True)
        fake = torch.linalg.vector_norm(reconstruction, dim=1, keepdim=True)
        scale = real.detach().flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None, None]
        return real / scale, fake / scale

    def log_training_scalars(self, outputs: dict[str, Any]) -> None:
        """Step the discriminator, then log its loss and the per-level codebook usage (not summed into the loss)."""
        from direct.utils.events import get_event_storage

        storage = get_event_storage()
        if self.discriminator is not None:
            from direct_nextaccel.modules.discriminator import discriminator_step

            self.discriminator.zero_grad(set_to_none=True)  # drop the generator pass's gradients
            real, fake = outputs["discriminator_inputs"]
            d_loss = discriminator_step(
                self.discriminator,
                self.discriminator_optimizer,
                real,
                fake.detach(),
                grad_clip=self.cfg.model.discriminator_grad_clip,
            )
            storage.add_scalar("discriminator_loss", d_loss)
        for level, (used, perplexity) in enumerate(outputs["usage"]):
            storage.add_scalar(f"codebook_usage_{LEVEL_NAMES[level]}", float(used))
            storage.add_scalar(f"codebook_perplexity_{LEVEL_NAMES[level]}", float(perplexity))

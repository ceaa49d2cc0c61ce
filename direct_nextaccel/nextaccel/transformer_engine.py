"""How a DIRECT batch trains the NextAccel transformer, and how DIRECT's R = 32 input becomes a reconstruction.

Training (teacher forcing, paper section 4.2) needs the fully sampled k-space in the batch (``delete_kspace: false``):
the engine forms the six coil-combined images of the model's one mask family (:mod:`acquisition`, as the tokenizer
engine does), tokenizes them with the frozen AQ-VAE and scores the transformer's predictions of levels R16 ... FS
by cross-entropy, the engine loss ``token_cross_entropy``. Validation and ``direct predict`` use DIRECT's
``masked_kspace`` and ``sampling_mask`` alone: SENSE image -> Q32 tokens -> five decoding steps -> AQ-VAE decoder
-> DIRECT's matrix, so DIRECT's metrics score exactly what the model reconstructs from the R = 32 measurement.

Frozen networks (:mod:`tokenizer_loading`): the tokenizer is an engine attribute, never a DIRECT model, so it is in
no optimizer group and in no checkpoint. A tokenizer trained with a learned ``sensitivity_model`` needs the same
``additional_models.sensitivity_model`` here: its weights are loaded from the tokenizer checkpoint and frozen, so the
transformer sees the coil combination the tokenizer was trained on.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np
import torch
from direct.data import transforms as T
from direct.nn.mri_models import _compute_resolution
from torch import Tensor, nn

from direct_nextaccel import _hook
from direct_nextaccel.core.engine import PluginEngine
from direct_nextaccel.core.images import WorkingGrid, sense_adjoint
from direct_nextaccel.masks.nested import LEVELS, MASK_NAMES, family_of, mask_func_for_family
from direct_nextaccel.modules.transformer import token_cross_entropy
from direct_nextaccel.nextaccel import acquisition
from direct_nextaccel.nextaccel.aqvae_engine import LEVEL_NAMES
from direct_nextaccel.nextaccel.config import NextAccelConfig
from direct_nextaccel.nextaccel.nextaccel import NextAccel, uncertainty_map
from direct_nextaccel.nextaccel.tokenizer_loading import load_checkpoint, load_frozen_additional_model, load_tokenizer
from direct_nextaccel.schedules import warmup_schedule

logger = logging.getLogger(__name__)

ACCELERATION_TOLERANCE = 1.5
"""An input whose sampled fraction is within this factor of 1/32 counts as R = 32 (DIRECT's padding removes a few
samples); anything else (R = 16, R = 64, a wrong masking block) is refused at evaluation."""

UNCERTAINTY_FOLDER = "uncertainty"

_hook.install()


class NextAccelEngine(PluginEngine):
    """DIRECT engine of :class:`NextAccel`, the base model (the default engine of ``nextaccel.nextaccel.NextAccel``).

    Engine loss: ``token_cross_entropy`` (mean over every predicted token of levels R16 ... FS, VAR's loss), the only
    loss it trains with. Logged per level (not in the loss): ``token_accuracy_R16`` ... ``token_accuracy_FS``.
    Subclasses: :class:`~direct_nextaccel.nextaccel.distillation_engine.TeacherEngine` and
    :class:`~direct_nextaccel.nextaccel.distillation_engine.DistillationEngine`.
    """

    ENGINE_LOSSES: ClassVar[dict[str, str]] = {"token_cross_entropy": "token_cross_entropy"}
    ONLY_ENGINE_LOSSES: ClassVar[bool] = True
    #: whether the engine's model is the privileged teacher (its context also holds the fully sampled image)
    PRIVILEGED: ClassVar[bool] = False

    CONFIG_CLASS: ClassVar[type] = NextAccelConfig

    def __init__(self, cfg, model, device, forward_operator, backward_operator, mixed_precision=False, **models):
        super().__init__(cfg, model, device, forward_operator, backward_operator, mixed_precision, **models)
        config = cfg.model
        if not isinstance(self.transformer, NextAccel):
            raise TypeError(f"{type(self).__name__} trains nextaccel.nextaccel.NextAccel, got {type(model).__name__}")
        if bool(config.privileged_context) != self.PRIVILEGED:
            engine = "TeacherEngine" if config.privileged_context else "NextAccelEngine or DistillationEngine"
            raise ValueError(
                f"model.privileged_context is {bool(config.privileged_context)}, which {type(self).__name__} does "
                f"not train: use engine_name: {engine}"
            )
        self.family = family_of(config.mask_family)
        #: every family the model is trained on (model.mask_families, else model.mask_family alone)
        self.families = [family_of(str(family)) for family in (config.mask_families or [config.mask_family])]
        if len(self.families) > 1 and config.training_masks != "fresh":
            raise ValueError(
                f"model.mask_families {self.families} trains one model on several families with "
                "model.training_masks: fresh (a family and a nested mask drawn per slice and step)"
            )
        self.center_fraction = config.mask_center_fraction
        mask_func_for_family(self.family, (LEVELS[0],), [self.center_fraction])  # refuses a bad centre fraction
        self._mask_generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)

        checkpoint = load_checkpoint(config.tokenizer_checkpoint, "tokenizer_checkpoint")
        self.tokenizer = load_tokenizer(checkpoint, config.tokenizer_checkpoint, config, device)
        self.frozen: list[nn.Module] = [self.tokenizer]
        if "sensitivity_model" in self.models:
            self.frozen.append(
                load_frozen_additional_model(
                    self.models["sensitivity_model"],
                    checkpoint,
                    "sensitivity_model",
                    config.tokenizer_checkpoint,
                    "tokenizer_checkpoint",
                )
            )
        elif "sensitivity_model" in checkpoint:
            raise ValueError(
                f"model.tokenizer_checkpoint {config.tokenizer_checkpoint!r} was trained with a sensitivity_model: "
                "configure the same additional_models.sensitivity_model (its weights are loaded from the tokenizer "
                "checkpoint and frozen) so that the transformer sees the tokenizer's coil combination"
            )
        # (filename -> [(slice, map)]) while `predict` collects uncertainty maps, else None.
        self._uncertainty: dict[str, list[tuple[int, np.ndarray]]] | None = None
        self._uncertainty_crop: str | None = None

    @property
    def transformer(self) -> NextAccel:
        """The NextAccel model itself (unwrapped from DistributedDataParallel)."""
        return getattr(self.model, "module", self.model)

    # Training -------------------------------------------------------------------------------------------------------

    def initialise_from_tokenizer(self) -> None:
        """Copy the tokenizer's encoder into the context encoder and its codebook into the model (paper 4.2)."""
        self.transformer.init_context_encoder_from(self.tokenizer.encoder.state_dict())
        self.transformer.set_codebook(self.tokenizer.quantizer.codebook)

    def train(
        self,
        optimizer,
        lr_scheduler,
        training_datasets,
        experiment_directory,
        validation_datasets=None,
        resume: bool = False,
        start_with_validation: bool = False,
        initialization=None,
        num_workers: int = 6,
    ):
        """Start from the tokenizer, set the AdamW betas and the paper's schedule, then run DIRECT's training.

        The tokenizer initialisation happens before DIRECT loads anything: a resumed checkpoint or an
        ``--initialization-checkpoint`` overwrites it, so only a fresh model keeps it. DIRECT's optimizer takes no
        betas from the configuration, so ``model.adam_betas`` is written into its parameter groups here (a resumed
        optimizer state brings its own).
        """
        config = self.cfg.model
        self.initialise_from_tokenizer()
        if config.adam_betas is not None:
            betas = tuple(float(beta) for beta in config.adam_betas)
            if any("betas" not in group for group in optimizer.param_groups):
                raise ValueError(
                    f"model.adam_betas {list(betas)} needs an Adam-type training.optimizer, got "
                    f"{self.cfg.training.optimizer!r} (set adam_betas: null)"
                )
            for group in optimizer.param_groups:
                group["betas"] = betas
        if config.lr_schedule != "direct":
            lr_scheduler = warmup_schedule(
                optimizer,
                config.lr_schedule,
                self.cfg.training.lr_warmup_iter,
                self.cfg.training.num_iterations,
                config.min_lr,
            )
        return super().train(
            optimizer,
            lr_scheduler,
            training_datasets,
            experiment_directory,
            validation_datasets=validation_datasets,
            resume=resume,
            start_with_validation=start_with_validation,
            initialization=initialization,
            num_workers=num_workers,
        )

    def hierarchy(self, data: dict[str, Any], levels: tuple[int, ...] | None = None) -> tuple[Tensor, Tensor]:
        """Images of the model's nested family from the batch's fully sampled k-space, at the model's size.

        The masks are seeded by the file name, and level R32 is checked to be DIRECT's own input (``sampling_mask``)
        so that training and evaluation see the same acquisition, unless ``model.training_masks`` is ``"fresh"``:
        then training draws a new nested mask per slice.

        Parameters
        ----------
        data : dict
            DIRECT batch with ``kspace``, ``sensitivity_map``, ``sampling_mask`` and ``filename``.
        levels : tuple of int, optional
            Level indices to form (0 = R32 ... 5 = FS); default all six.

        Returns
        -------
        images : Tensor
            (B, len(levels), 2, h, w) with (h, w) the model's ``image_size``.
        family : Tensor
            Long (B,) family labels.
        """
        if "kspace" not in data:
            raise ValueError(
                f"{type(self).__name__} needs the fully sampled k-space in the batch: set `delete_kspace: false` in "
                "the dataset transforms"
            )
        kspace = data["kspace"]
        filenames = [str(name) for name in data["filename"]]
        fresh = self.model.training and self.cfg.model.training_masks == "fresh"
        families = [self.family] * len(filenames)
        seeds = None
        if fresh:
            families = acquisition.choose_families(filenames, self.families, self._mask_generator)
            seeds = [tuple(torch.randint(2**31, (2,), generator=self._mask_generator).tolist()) for _ in filenames]
        masks = acquisition.level_masks(filenames, families, tuple(kspace.shape[2:4]), self.center_fraction, seeds)
        masks = masks.to(kspace.device)
        if not fresh:
            self._check_sampling_mask(masks[:, 0], data)
        if levels is not None:
            masks = masks[:, list(levels)]
        images = acquisition.hierarchy_images(kspace, data["sensitivity_map"], masks, self.backward_operator)
        images = images * self.intensity_factor(kspace, data)[:, None, None, None, None].to(images.dtype)
        return self.working_grid(data).to_working(images), acquisition.family_labels(families, kspace.device)

    def intensity_factor(self, kspace: Tensor, data: dict[str, Any]) -> Tensor:
        """``intensity_gain / s`` per slice (B,) (:func:`acquisition.intensity_factor`): the fully sampled and the R32
        k-space give the same value."""
        return acquisition.intensity_factor(
            kspace,
            self.center_fraction,
            self.tokenizer.intensity_gain,
            self.backward_operator,
            data.get("filename"),
            data.get("slice_no"),
        )

    def working_grid(self, data: dict[str, Any]) -> WorkingGrid:
        """The map between the batch's matrix (and reconstruction size) and the model's image size."""
        key = "kspace" if "kspace" in data else "masked_kspace"
        return WorkingGrid.of_batch(data, tuple(data[key].shape[2:4]), self.tokenizer.image_size)

    def _check_sampling_mask(self, level0: Tensor, data: dict[str, Any]) -> None:
        expected = level0  # B, H, W
        if "padding" in data:  # DIRECT zeroes its mask where the k-space is padding
            expected = expected & ~data["padding"][:, 0, :, :, 0].bool()
        given = data["sampling_mask"][:, 0, :, :, 0].bool()
        for index in range(given.shape[0]):
            if not torch.equal(expected[index], given[index]):
                raise ValueError(
                    f"DIRECT's sampling mask of {data['filename'][index]} is not level R{LEVELS[0]} of the nested "
                    f"{self.family} mask this model was trained on (seeded by the file name, centre fraction "
                    f"{self.center_fraction}): "
                    f"set the dataset masking to name: {MASK_NAMES[self.family]}, accelerations: [{LEVELS[0]}], "
                    f"center_fractions: [{self.center_fraction}] and use_seed: true, matching model.mask_family and "
                    "model.mask_center_fraction"
                )

    def teacher_forcing_tokens(
        self, tokens: list[Tensor], image32: Tensor, family: Tensor, fs_image: Tensor | None
    ) -> list[Tensor]:
        """The token maps fed to teacher forcing; the base model gets the tokenizer's own."""
        return tokens

    def training_outputs(self, data: dict[str, Any]) -> dict[str, Any]:
        """Teacher-forced pass on one batch (sensitivity maps already normalised).

        Returns
        -------
        dict
            ``token_cross_entropy`` (scalar, with gradient) and ``scalars``, the per-level accuracies to log.
        """
        images, family = self.hierarchy(data)
        image32 = images[:, 0]
        fs_image = images[:, -1] if self.PRIVILEGED else None
        with torch.no_grad():
            tokens = self.tokenizer.encode(images, family).indices  # 6 x (B, g, g)
        inputs = self.teacher_forcing_tokens(tokens, image32, family, fs_image)
        logits = self.model(inputs, image32, family, **({"fs_image": fs_image} if self.PRIVILEGED else {}))
        loss, _ = token_cross_entropy(logits, tokens[1:])
        with torch.no_grad():
            accuracy = [
                (level_logits.argmax(dim=-1) == level.flatten(1)).float().mean()
                for level_logits, level in zip(logits, tokens[1:], strict=True)
            ]
        names = [f"token_accuracy_{name}" for name in LEVEL_NAMES[1:]]
        return {"token_cross_entropy": loss, "scalars": dict(zip(names, accuracy, strict=True))}

    # Evaluation -----------------------------------------------------------------------------------------------------

    def privileged_image(self, data: dict[str, Any]) -> Tensor | None:
        """The fully sampled image the privileged teacher also sees; None for a student."""
        return None

    def reconstruct(self, data: dict[str, Any], want_probs: bool = False) -> dict[str, Any]:
        """Reconstruct from DIRECT's R32 input alone.

        Returns
        -------
        dict
            ``output_image`` (B, H, W, 2) on DIRECT's matrix, ``tokens`` (six (B, g, g) maps) and, with
            ``want_probs``, ``uncertainty`` (B, H, W) in [0, 1] (:func:`uncertainty_map`).
        """
        config = self.cfg.model
        masked_kspace, sampling_mask = data["masked_kspace"], data["sampling_mask"]
        self._check_acceleration(sampling_mask, data)
        height, width = masked_kspace.shape[2:4]
        # The input must be level R32 of the family this model was trained on, as in training: a checkpoint of one
        # family would otherwise reconstruct another family's acquisition silently (and badly).
        filenames = [str(name) for name in data["filename"]]
        expected = acquisition.level_masks(
            filenames, [self.family] * len(filenames), (height, width), self.center_fraction
        )
        self._check_sampling_mask(expected[:, 0].to(sampling_mask.device), data)
        factor = self.intensity_factor(masked_kspace, data)  # B
        image32 = sense_adjoint(
            masked_kspace, data["sensitivity_map"], sampling_mask[:, 0, :, :, 0], self.backward_operator
        )  # B, H, W, 2
        grid = self.working_grid(data)
        image32 = grid.to_working(image32.permute(0, 3, 1, 2) * factor[:, None, None, None])  # B, 2, h, w
        family = acquisition.family_labels([self.family] * image32.shape[0], image32.device)
        q32 = self.tokenizer.encode(image32[:, None], family, levels=[0]).indices[0]
        generated = self.transformer.generate(
            q32,
            image32,
            family,
            mode=config.decoding,
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            beam_k=config.beam_k,
            beam_alpha=config.beam_alpha,
            return_probs=want_probs,
            fs_image=self.privileged_image(data),
        )
        tokens, probs = generated if want_probs else (generated, None)
        reconstruction = self.tokenizer.decode_indices(tokens) / factor[:, None, None, None]  # B, 2, h, w
        reconstruction = grid.from_working(reconstruction).permute(0, 2, 3, 1)  # B, H, W, 2
        if config.data_consistency:
            reconstruction = self.data_consistency(
                reconstruction, masked_kspace, data["sensitivity_map"], sampling_mask
            )
        outputs = {"output_image": reconstruction, "tokens": tokens}
        if probs is not None:
            # Resampling can ring slightly outside [0, 1]; the map stays a fraction of the maximal entropy.
            outputs["uncertainty"] = grid.from_working(uncertainty_map(probs, self.tokenizer.image_size)).clamp(0, 1)
        return outputs

    def _check_acceleration(self, sampling_mask: Tensor, data: dict[str, Any]) -> None:
        fraction = sampling_mask[:, 0, :, :, 0].flatten(1).float().mean(dim=1)  # B
        for index, sampled in enumerate(fraction.tolist()):
            acceleration = math.inf if sampled == 0 else 1.0 / sampled
            if not LEVELS[0] / ACCELERATION_TOLERANCE <= acceleration <= LEVELS[0] * ACCELERATION_TOLERANCE:
                raise ValueError(
                    f"the input of {data['filename'][index]} is sampled at R = {acceleration:.1f}: NextAccel "
                    f"reconstructs from R = {LEVELS[0]} measurements (masking.accelerations: [{LEVELS[0]}])"
                )

    def data_consistency(
        self, image: Tensor, masked_kspace: Tensor, sensitivity_map: Tensor, sampling_mask: Tensor
    ) -> Tensor:
        """Replace the acquired k-space samples of ``image`` (B, H, W, 2) by the measured ones (beyond the papers).

        Coil k-space ``F(S_c x)`` keeps its values where nothing was measured and takes ``masked_kspace`` where
        ``sampling_mask`` is set; the result is coil-combined with the same (normalised) maps.
        """
        coil_kspace = self.forward_operator(T.expand_operator(image, sensitivity_map, dim=1), dim=(2, 3))
        kspace = torch.where(sampling_mask.bool(), masked_kspace, coil_kspace)  # B, C, H, W, 2
        return T.reduce_operator(self.backward_operator(kspace, dim=(2, 3)), sensitivity_map, dim=1)

    # DIRECT's hooks -------------------------------------------------------------------------------------------------

    @property
    def frozen_modules(self) -> list[nn.Module]:
        """The tokenizer (and its sensitivity model): frozen, kept in evaluation mode."""
        return self.frozen

    def iteration_outputs(self, data: dict[str, Any]) -> dict[str, Any]:
        """Teacher-forced loss in training (no image is decoded), the reconstruction in evaluation."""
        self._check_codebook()
        if self.model.training:
            return self.training_outputs(data)
        return self.reconstruct(data, want_probs=self._uncertainty is not None)

    def after_backward(self, outputs: dict[str, Any], data: dict[str, Any]) -> None:
        from direct.utils.events import get_event_storage

        storage = get_event_storage()
        for name, value in outputs["scalars"].items():
            storage.add_scalar(name, float(value.detach()))

    def after_evaluation(self, outputs: dict[str, Any], data: dict[str, Any]) -> None:
        if self._uncertainty is not None:
            self._collect_uncertainty(outputs["uncertainty"], data)

    def _check_codebook(self) -> None:
        if not torch.equal(self.transformer.codebook, self.tokenizer.quantizer.codebook.to(self.transformer.codebook)):
            raise ValueError(
                f"the model's codebook differs from model.tokenizer_checkpoint {self.cfg.model.tokenizer_checkpoint!r}"
                ": its checkpoint was trained with another tokenizer"
            )

    # Uncertainty output ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, dataset, experiment_directory, checkpoint=-1, num_workers=6, batch_size=1, crop=None):
        """DIRECT's prediction; with ``model.write_uncertainty`` also one uncertainty file per volume.

        DIRECT writes ``OUTPUT/<file>`` itself after this returns (mode ``"w"``), so the map cannot go into that
        file; it goes to ``EXPERIMENT/uncertainty/<file>`` (``EXPERIMENT`` is ``OUTPUT`` unless ``direct predict``
        gets ``--experiment_directory`` or ``--name``): dataset ``uncertainty`` (slices, H, W) float32 in [0, 1],
        cropped like the reconstruction.
        """
        if not self.cfg.model.write_uncertainty:
            return super().predict(dataset, experiment_directory, checkpoint, num_workers, batch_size, crop)
        # DIRECT crops with `crop` unless inference metrics are configured, then with inference.crop.
        self._uncertainty_crop = self.cfg.inference.crop if self.cfg.inference.metrics else crop
        self._uncertainty = defaultdict(list)
        try:
            output = super().predict(dataset, experiment_directory, checkpoint, num_workers, batch_size, crop)
            collected = self._uncertainty
        finally:
            self._uncertainty = None
        folder = Path(experiment_directory) / UNCERTAINTY_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        for filename, slices in collected.items():
            volume = np.stack([value for _, value in sorted(slices, key=lambda item: item[0])]).astype(np.float32)
            with h5py.File(folder / filename, "w") as handle:
                handle.create_dataset("uncertainty", data=volume)
            logger.info("Wrote the uncertainty map of %s to %s.", filename, folder / filename)
        return output

    def _collect_uncertainty(self, uncertainty: Tensor, data: dict[str, Any]) -> None:
        resolution = _compute_resolution(self._uncertainty_crop, data.get("reconstruction_size"))
        if resolution is not None:
            uncertainty = T.center_crop(uncertainty, resolution)
        for index, (filename, slice_no) in enumerate(zip(data["filename"], data["slice_no"].tolist(), strict=True)):
            self._uncertainty[Path(filename).name].append((int(slice_no), uncertainty[index].float().cpu().numpy()))

"""``--task reconstruction`` (issue 4): NextAccel at R = 32 next to DIRECT's E2EVarNet and RecurrentVarNet.

Every method reconstructs the same synthetic batch under a ``NestedCartesianY`` R = 32 mask (:func:`synthetic_batch`).

- E2EVarNet and RecurrentVarNet: DIRECT's own engines built from the baseline configs, so the time is that of
  ``direct predict``: the sensitivity U-Net refines the estimate coil by coil (``compute_sensitivity_map``), then the
  engine's ``forward_function`` (network, inverse FFT, RSS).
- NextAccel (:func:`nextaccel_runner`): the same sensitivity step with the AQ-VAE config's U-Net; SENSE-combined R32
  image (``core.images.sense_adjoint``) at the reference scale; AQ-VAE encoding of level 0 (tokens Q32);
  ``NextAccel.generate`` with argmax or beam search (k = 1, 2, 3) and the KV cache; ``AQVAE.decode_indices`` of all
  six levels.

Configurations: ``paper``: 256 x 256, 16 coils, the paper-size configs of ``projects/fastmri_brain/configs``
(``nextaccel_cartesian_y.yaml`` for the transformer); ``tiny``: 64 x 64, 4 coils, the CPU configs shipped in
``direct_nextaccel/configs/`` (``tiny_nextaccel.yaml`` for the transformer, so its checkpoints load).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from direct_nextaccel.benchmark.speed.models import build_engine, config_file, decoded_magnitude, load_weights
from direct_nextaccel.benchmark.speed.task import Setup, Source, Task, decoding_options
from direct_nextaccel.benchmark.speed.timing import Runner, StageClock, TimedMethod

if TYPE_CHECKING:
    import torch
    from direct.engine import Engine
    from torch import nn

MODELS = ("nextaccel", "varnet", "recurrentvarnet")
LABELS = {
    "argmax": "NextAccel argmax",
    "beam1": "NextAccel beam k=1",
    "beam2": "NextAccel beam k=2",
    "beam3": "NextAccel beam k=3",
    "varnet": "E2EVarNet",
    "recurrentvarnet": "RecurrentVarNet",
}
"""Row name (a NextAccel decoding mode or a baseline) -> label in the table."""

RATIOS: tuple[tuple[str, str, float | None], ...] = (
    ("argmax", "varnet", 1.0),
    ("argmax", "recurrentvarnet", None),
    ("beam1", "argmax", 1.7),
    ("beam2", "argmax", None),
    ("beam3", "argmax", None),
)
"""(numerator row, denominator row, issue 4's upper target or None) of the printed ratios of seconds per slice."""

FAMILY = "cartesian_y"
"""Mask family of the benchmark batch, that of the baseline configs."""

SETUPS = {
    "paper": Setup(
        matrix=(256, 256),
        coils=16,
        configs={
            "aqvae": "projects/fastmri_brain/configs/aqvae.yaml",
            "nextaccel": "projects/fastmri_brain/configs/nextaccel_cartesian_y.yaml",
            "varnet": "projects/fastmri_brain/configs/baselines/varnet_cartesian_y.yaml",
            "recurrentvarnet": "projects/fastmri_brain/configs/baselines/recurrentvarnet_cartesian_y.yaml",
        },
    ),
    "tiny": Setup(
        matrix=(64, 64),
        coils=4,
        configs={
            "aqvae": "direct_nextaccel/configs/tiny_aqvae.yaml",
            "nextaccel": "direct_nextaccel/configs/tiny_nextaccel.yaml",
            "varnet": "direct_nextaccel/configs/tiny_varnet_cartesian_y.yaml",
            "recurrentvarnet": "direct_nextaccel/configs/tiny_recurrentvarnet_cartesian_y.yaml",
        },
    ),
}
"""``--config`` -> sizes and configs. The NextAccel path uses the AQ-VAE config's sensitivity model and the NextAccel
config's transformer, which must repeat the AQ-VAE's shape."""


def synthetic_batch(setup: Setup, batch_size: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random k-space and sensitivity estimate under the R = 32 mask of :data:`FAMILY`, as DIRECT's transforms give.

    Returns ``masked_kspace`` (B, C, H, W, 2), ``sampling_mask`` bool (B, 1, H, W, 1), ``sensitivity_map``
    (B, C, H, W, 2) and ``family`` long (B,).
    """
    import torch

    from direct_nextaccel.benchmark.speed.models import random_batch
    from direct_nextaccel.masks.nested import family_index, nested_masks

    mask = torch.from_numpy(nested_masks(FAMILY, setup.matrix, seed=seed)[0])  # H, W
    batch = random_batch(mask, setup.coils, batch_size, seed)
    batch["family"] = torch.full((batch_size,), family_index(FAMILY), dtype=torch.long)
    return {key: value.to(device) for key, value in batch.items()}


def build_nextaccel(aqvae_engine: Engine, config_path: Path, checkpoint: str | os.PathLike | None = None) -> nn.Module:
    """NextAccel of the YAML ``config_path``, built as ``direct train`` builds it, on the AQ-VAE of ``aqvae_engine``:
    its codebook, a copy of its encoder as context encoder.

    The config must repeat the AQ-VAE's shape (``ValueError`` naming the first key that differs). A checkpoint
    replaces those weights (and its ``sensitivity_model`` the AQ-VAE engine's, when it has one).
    """
    from omegaconf import OmegaConf

    from direct_nextaccel.core.direct_build import build_model, load_config, model_configs
    from direct_nextaccel.nextaccel.tokenizer_loading import TOKENIZER_KEYS

    classes, configs = model_configs(load_config(config_file(config_path)))
    config = OmegaConf.to_container(configs.model)
    tokenizer = OmegaConf.to_container(aqvae_engine.cfg.model)
    tokenizer["context_strides"] = sorted(tokenizer["context_strides"], reverse=True)  # NextAccel: coarse to fine
    for key in (*TOKENIZER_KEYS, "context_strides"):
        ours, theirs = (list(v) if isinstance(v, list | tuple) else v for v in (config[key], tokenizer[key]))
        if ours != theirs:
            raise ValueError(f"{config_path}: model.{key} {ours} differs from the AQ-VAE's {theirs}")
    model = build_model(classes["model"], config)
    aqvae = aqvae_engine.model
    model.set_codebook(aqvae.quantizer.codebook)
    model.init_context_encoder_from(aqvae.encoder.state_dict())
    load_weights(checkpoint, {"model": model, **aqvae_engine.models})
    return model


def nextaccel_runner(aqvae_engine: Engine, nextaccel: nn.Module, mode: str, bf16: bool) -> Runner:
    """NextAccel's inference from the R32 batch: sensitivities, SENSE image, Q32, generation, decoding.

    ``bf16`` runs the transformer (``generate``, context encoder included) under bf16 autocast, the paper's
    inference precision; the tokenizer and the sensitivity U-Net stay in float32.
    """
    import torch

    from direct_nextaccel.core.images import WorkingGrid, sense_adjoint
    from direct_nextaccel.nextaccel.acquisition import intensity_factor

    aqvae = aqvae_engine.model
    options = decoding_options(mode)

    def reconstruct(batch: dict[str, Any], clock: StageClock) -> torch.Tensor:
        kspace = batch["masked_kspace"]
        sensitivity_map = aqvae_engine.compute_sensitivity_map(batch["sensitivity_map"])
        clock("sensitivities")
        mask = batch["sampling_mask"][:, 0, :, :, 0]  # B, H, W
        factor = intensity_factor(
            kspace, aqvae_engine.center_fraction, aqvae.intensity_gain, aqvae_engine.backward_operator
        )[:, None, None, None]  # B, 1, 1, 1
        image = sense_adjoint(kspace, sensitivity_map, mask, aqvae_engine.backward_operator)  # B, H, W, 2
        grid = WorkingGrid.of_batch(batch, tuple(kspace.shape[2:4]), aqvae.image_size)
        image32 = grid.to_working(image.permute(0, 3, 1, 2) * factor)  # B, 2, h, w
        q32 = aqvae.encode(image32[:, None], batch["family"], levels=[0]).indices[0]  # B, g0, g0
        clock("tokenize")
        with torch.autocast(kspace.device.type, dtype=torch.bfloat16, enabled=bf16):
            tokens = nextaccel.generate(q32, image32, batch["family"], use_cache=True, **options)
        clock("generate")
        return decoded_magnitude(aqvae, tokens, factor, grid, clock)

    return reconstruct


def nextaccel_method(sources: Mapping[str, Source], modes: Sequence[str], bf16: bool) -> TimedMethod:
    """NextAccel on its AQ-VAE, one row per decoding mode in ``modes``; the AQ-VAE engine's networks count as its."""
    aqvae_engine = build_engine(sources["aqvae"].config, sources["aqvae"].checkpoint)
    nextaccel = build_nextaccel(aqvae_engine, sources["nextaccel"].config, sources["nextaccel"].checkpoint)
    runners = {mode: nextaccel_runner(aqvae_engine, nextaccel, mode, bf16) for mode in modes}
    return TimedMethod([aqvae_engine.model, *aqvae_engine.models.values(), nextaccel], runners)


RECONSTRUCTION = Task(
    name="reconstruction",
    models=MODELS,
    labels=LABELS,
    ratios=RATIOS,
    networks={"nextaccel": ("aqvae", "nextaccel")},
    setups=SETUPS,
    mask=f"{FAMILY} R=32",
    transformer="NextAccel",
    make_batch=synthetic_batch,
    build_generator=nextaccel_method,
)

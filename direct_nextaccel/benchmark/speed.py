"""Inference speed of the autoregressive methods next to DIRECT's baselines, one run on one device (issues 4 and 7).

Two tasks (``--task``), each with its own methods, configs and batch; within a task every method reconstructs the
same synthetic batch of the form DIRECT's fastMRI transforms hand to an engine: masked k-space (B, C, H, W, 2), the
mask (B, 1, H, W, 1) and the RSS sensitivity estimate (B, C, H, W, 2). The timed region runs from that batch to the
magnitude image (B, H, W); data loading, the transforms and writing are outside it, as they are the same for every
method.

``reconstruction`` (default; issue 4): a ``NestedCartesianY`` R = 32 mask.

- E2EVarNet and RecurrentVarNet: DIRECT's own engines built from the baseline configs, so the time is that of
  ``direct predict``: the sensitivity U-Net refines the estimate coil by coil (``compute_sensitivity_map``), then the
  engine's ``forward_function`` (network, inverse FFT, RSS).
- NextAccel: the same sensitivity step with the AQ-VAE config's U-Net; SENSE-combined R32 image
  (``core.images.sense_adjoint``); AQ-VAE encoding of level 0 (tokens Q32); ``NextAccel.generate`` with argmax or
  beam search (k = 1, 2, 3) and the KV cache; ``AQVAE.decode_indices`` of all six levels.

``superresolution`` (issue 7): MIAR's 4 x 4 super-resolution, DIRECT's ``SuperResolution`` mask of acceleration 16
(the central (H/4) x (W/4) k-space block).

- E2EVarNet, RecurrentVarNet and U-Net: the baseline configs of ``projects/miar_brain``, timed as above (with one
  coil DIRECT's ``compute_sensitivity_map`` only normalises the estimate: the sensitivity U-Net needs several coils).
- MIAR: the path of ``MIAREngine``'s prediction: sensitivity normalisation; the zero-filled LR image of the block at
  the model size (``images.low_resolution_image``); ``MIAR.generate`` with argmax or MIAR's beam search
  (k = 1, 2, 3) and the KV cache, whose LR encoder (the cross-attention context) is reported as its own stage; the
  tokenizer's ``decode_indices`` of all scales. The MSVQ-VAE of ``msvqvae.yaml`` is loaded into MIAR's tokenizer
  as training does, which checks that the two configs agree. Ratios are printed next to the MIAR paper's own
  (RTX 4090, ms per slice: argmax 257, beam k = 1, 2, 3: 432, 705, 1372).

Stages are timed separately (with a device synchronisation between them on GPU) and reported per slice next to the
total. Speed does not depend on the weights' values: no method has data-dependent control flow (beam search always
scores 2^k candidates per level), so randomly initialised weights are used unless checkpoints are given.

Configurations: ``paper`` and ``tiny`` per task.

- reconstruction ``paper``: 256 x 256, 16 coils, the paper-size configs of ``projects/fastmri_brain/configs``
  (``nextaccel_cartesian_y.yaml`` for the transformer); ``tiny``: 64 x 64, 4 coils, the CPU configs shipped in
  ``direct_nextaccel/configs/`` (``tiny_nextaccel.yaml`` for the transformer, so its checkpoints load).
- superresolution ``paper``: 256 x 256, 1 coil (MIAR's single-image setting, the data of ``projects/miar_brain``),
  ``projects/miar_brain/configs/{msvqvae,miar}.yaml`` and ``baselines/*_sr4.yaml``; ``tiny``: 64 x 64, 4 coils (the
  data the tiny configs are written for), ``direct_nextaccel/configs/tiny_{msvqvae,miar}.yaml`` and
  ``direct_nextaccel/configs/tiny_sr_*.yaml``.

The tiny configs are package data (read through :mod:`direct_nextaccel.resources`, so ``--config tiny`` works from a
wheel as from a checkout); the paper-size configs are read from the checkout named by ``--repo-root``.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from direct.engine import Engine
    from torch import nn

logger = logging.getLogger(__name__)

MODELS = ("nextaccel", "varnet", "recurrentvarnet")
MODES = ("argmax", "beam1", "beam2", "beam3")
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

REPOSITORY = Path(__file__).resolve().parents[2]
"""Checkout holding ``projects/`` with the paper-size configs (the default of ``--repo-root``)."""

PACKAGE_CONFIGS = "direct_nextaccel/configs/"
"""Prefix of the setups' configs that are package data rather than files of the checkout."""

WEIGHTS_NOTE = "randomly initialised: inference time does not depend on the weights' values"


@dataclass(frozen=True)
class Setup:
    """Sizes and model configs of one configuration of ``--task reconstruction``.

    Attributes
    ----------
    matrix : tuple[int, int]
        k-space (H, W).
    coils : int
        Receive coils.
    aqvae_config, nextaccel_config, varnet_config, recurrentvarnet_config : str
        DIRECT YAML files (see :func:`resolve_config`); their ``model`` and ``additional_models`` sections build the
        networks (the NextAccel path uses the AQ-VAE config's sensitivity model and the NextAccel config's
        transformer, which must repeat the AQ-VAE's shape).
    """

    matrix: tuple[int, int]
    coils: int
    aqvae_config: str
    nextaccel_config: str
    varnet_config: str
    recurrentvarnet_config: str


SETUPS = {
    "paper": Setup(
        matrix=(256, 256),
        coils=16,
        aqvae_config="projects/fastmri_brain/configs/aqvae.yaml",
        nextaccel_config="projects/fastmri_brain/configs/nextaccel_cartesian_y.yaml",
        varnet_config="projects/fastmri_brain/configs/baselines/varnet_cartesian_y.yaml",
        recurrentvarnet_config="projects/fastmri_brain/configs/baselines/recurrentvarnet_cartesian_y.yaml",
    ),
    "tiny": Setup(
        matrix=(64, 64),
        coils=4,
        aqvae_config="direct_nextaccel/configs/tiny_aqvae.yaml",
        nextaccel_config="direct_nextaccel/configs/tiny_nextaccel.yaml",
        varnet_config="direct_nextaccel/configs/tiny_varnet_cartesian_y.yaml",
        recurrentvarnet_config="direct_nextaccel/configs/tiny_recurrentvarnet_cartesian_y.yaml",
    ),
}

# NextAccel arguments that must equal the AQ-VAE's: its context encoder is a copy of the AQ-VAE encoder and it
# predicts the AQ-VAE's tokens.
_SHARED_WITH_AQVAE = (
    "in_channels",
    "base_channels",
    "channel_multipliers",
    "num_res_blocks",
    "latent_dim",
    "codebook_size",
    "token_grids",
    "num_families",
    "image_size",
)


SR_MODELS = ("miar", "varnet", "recurrentvarnet", "unet")
SR_LABELS = {
    "argmax": "MIAR argmax",
    "beam1": "MIAR beam k=1",
    "beam2": "MIAR beam k=2",
    "beam3": "MIAR beam k=3",
    "varnet": "E2EVarNet",
    "recurrentvarnet": "RecurrentVarNet",
    "unet": "U-Net",
}
"""Row name (a MIAR decoding mode or a baseline) -> label in the table of ``--task superresolution``."""

SR_RATIOS: tuple[tuple[str, str, float | None], ...] = (
    ("argmax", "varnet", None),
    ("argmax", "recurrentvarnet", None),
    ("argmax", "unet", None),
    ("beam1", "argmax", None),
    ("beam2", "argmax", None),
    ("beam3", "argmax", None),
)
"""Printed ratios of ``--task superresolution``; the MIAR paper's timings are a reference, not an upper target."""

MIAR_PAPER_MS = {"argmax": 257.0, "beam1": 432.0, "beam2": 705.0, "beam3": 1372.0}
"""MIAR paper, table of decoding strategies: ms per slice on an RTX 4090 ("w/o Beam Search" is argmax)."""

SR_MASK = "SuperResolution acceleration 16 (4 x 4: the central (H/4) x (W/4) k-space block)"


@dataclass(frozen=True)
class SuperResolutionSetup:
    """Sizes and model configs of one configuration of ``--task superresolution``.

    Attributes
    ----------
    matrix : tuple[int, int]
        k-space (H, W).
    coils : int
        Receive coils of the data the configs are written for.
    coil_source : str
        Where that coil count comes from.
    factor : int
        Super-resolution factor per axis (the configs' ``SuperResolution`` acceleration 16 is 4 x 4).
    msvqvae_config, miar_config, varnet_config, recurrentvarnet_config, unet_config : str
        DIRECT YAML files (see :func:`resolve_config`).
    """

    matrix: tuple[int, int]
    coils: int
    coil_source: str
    factor: int
    msvqvae_config: str
    miar_config: str
    varnet_config: str
    recurrentvarnet_config: str
    unet_config: str


SR_SETUPS = {
    "paper": SuperResolutionSetup(
        matrix=(256, 256),
        coils=1,
        coil_source="MIAR's single-image setting: projects/miar_brain simulates its data with --coils 1",
        factor=4,
        msvqvae_config="projects/miar_brain/configs/msvqvae.yaml",
        miar_config="projects/miar_brain/configs/miar.yaml",
        varnet_config="projects/miar_brain/configs/baselines/varnet_sr4.yaml",
        recurrentvarnet_config="projects/miar_brain/configs/baselines/recurrentvarnet_sr4.yaml",
        unet_config="projects/miar_brain/configs/baselines/unet_sr4.yaml",
    ),
    "tiny": SuperResolutionSetup(
        matrix=(64, 64),
        coils=4,
        coil_source="the data of the tiny configs tiny_msvqvae.yaml and tiny_miar.yaml, simulated with --coils 4",
        factor=4,
        msvqvae_config="direct_nextaccel/configs/tiny_msvqvae.yaml",
        miar_config="direct_nextaccel/configs/tiny_miar.yaml",
        varnet_config="direct_nextaccel/configs/tiny_sr_varnet.yaml",
        recurrentvarnet_config="direct_nextaccel/configs/tiny_sr_recurrentvarnet.yaml",
        unet_config="direct_nextaccel/configs/tiny_sr_unet.yaml",
    ),
}


@dataclass(frozen=True)
class Task:
    """What ``--task`` times: its methods (the autoregressive one first), rows, ratios, checkpoints and setups."""

    models: tuple[str, ...]
    modes: tuple[str, ...]
    labels: Mapping[str, str]
    ratios: tuple[tuple[str, str, float | None], ...]
    checkpoints: tuple[str, ...]
    setups: Mapping[str, Setup | SuperResolutionSetup]
    paper_ms: Mapping[str, float] = field(default_factory=dict)

    @property
    def generator(self) -> str:
        """The autoregressive method, whose rows are its decoding modes."""
        return self.models[0]


TASKS = {
    "reconstruction": Task(MODELS, MODES, LABELS, RATIOS, ("aqvae", "nextaccel", "varnet", "recurrentvarnet"), SETUPS),
    "superresolution": Task(
        SR_MODELS,
        MODES,
        SR_LABELS,
        SR_RATIOS,
        ("msvqvae", "miar", "varnet", "recurrentvarnet", "unet"),
        SR_SETUPS,
        MIAR_PAPER_MS,
    ),
}
ALL_MODELS = tuple(dict.fromkeys(model for task in TASKS.values() for model in task.models))
ALL_CHECKPOINTS = tuple(dict.fromkeys(name for task in TASKS.values() for name in task.checkpoints))


# Options ------------------------------------------------------------------------------------------------------------


def check_options(
    config: str,
    device: str,
    batch_sizes: Sequence[int],
    repeats: int,
    warmup: int,
    modes: Sequence[str],
    models: Sequence[str],
    checkpoints: Mapping[str, str | os.PathLike | None],
    task: str = "reconstruction",
) -> None:
    """Raise ``ValueError``/``FileNotFoundError`` naming the first bad option of :func:`benchmark`."""
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {tuple(TASKS)}")
    spec = TASKS[task]
    if config not in spec.setups:
        raise ValueError(f"config {config!r} is not one of {tuple(spec.setups)}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not one of ('cpu', 'cuda')")
    if not batch_sizes:
        raise ValueError("batch_sizes is empty")
    for size in batch_sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"batch size {size!r} is not a positive integer")
    if len(set(batch_sizes)) != len(batch_sizes):
        raise ValueError(f"batch sizes {list(batch_sizes)} repeat a size")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats {repeats!r} is not a positive integer")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup {warmup!r} is not a non-negative integer")
    if not models:
        raise ValueError(f"models is empty: name some of {spec.models}")
    for model in models:
        if model not in spec.models:
            raise ValueError(f"model {model!r} is not one of {spec.models} of task {task!r}")
    if spec.generator in models and not modes:
        raise ValueError(f"modes is empty: name some of {spec.modes}")
    for mode in modes:
        if mode not in spec.modes:
            raise ValueError(f"mode {mode!r} is not one of {spec.modes} of task {task!r}")
    for name, path in checkpoints.items():
        if name not in spec.checkpoints:
            raise ValueError(
                f"checkpoint of {name!r}: only {', '.join(spec.checkpoints[:-1])} and {spec.checkpoints[-1]} load one "
                f"in task {task!r}"
            )
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{name} checkpoint {path} does not exist")


def resolve_device(device: str) -> torch.device:
    """``torch.device`` for ``"cpu"`` or ``"cuda"``; refuses CUDA without a GPU."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch.cuda.is_available() is False")
    return torch.device(device)


def resolve_config(config: str, repo_root: str | os.PathLike = REPOSITORY) -> Path:
    """File of a setup's config: one under ``direct_nextaccel/configs/`` is package data (found in a wheel as in a
    checkout, whatever ``repo_root``), any other path is relative to the checkout ``repo_root``."""
    from direct_nextaccel import resources

    if config.startswith(PACKAGE_CONFIGS):
        return resources.config_path(config.removeprefix(PACKAGE_CONFIGS))
    return Path(repo_root) / config


# Building the methods -----------------------------------------------------------------------------------------------


def load_checkpoint(path: str | os.PathLike, modules: Mapping[str, nn.Module]) -> list[str]:
    """Load a DIRECT checkpoint (``{"model": ..., "sensitivity_model": ...}``) or a bare state dict of ``model``.

    Loads with ``weights_only=True``, as ``direct predict`` does. Returns the names of ``modules`` the checkpoint had
    weights for (``model`` always; the others when present). A state dict that does not fit raises ``ValueError``.
    """
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as err:
        raise ValueError(f"checkpoint {path} cannot be loaded: {str(err).splitlines()[0]}") from err
    if not isinstance(state, Mapping):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    if "model" not in state or not isinstance(state["model"], Mapping):
        state = {"model": state}
    loaded = []
    for name, module in modules.items():
        if name in state:
            try:
                module.load_state_dict(state[name])
            except RuntimeError as err:
                raise ValueError(f"'{name}' of checkpoint {path} does not fit: {str(err).splitlines()[0]}") from err
            loaded.append(name)
    return loaded


def build_engine(config_path: Path, checkpoint: str | os.PathLike | None = None) -> Engine:
    """DIRECT's engine of one YAML config with its model and additional models on the CPU, in eval mode.

    Models are built as ``direct train`` builds them (config dataclass merged with the YAML, constructor arguments
    filtered by signature, the physics' FFT operators), without ``direct train``'s logging set-up.
    """
    from direct.config.defaults import PhysicsConfig
    from direct.environment import build_operators, load_models_into_environment_config, setup_engine
    from direct.utils import filter_arguments_by_signature
    from omegaconf import OmegaConf

    if not config_path.is_file():
        raise FileNotFoundError(
            f"config {config_path} does not exist: run from a direct-nextaccel checkout or pass --repo-root"
        )
    raw = OmegaConf.load(config_path)
    classes, configs = load_models_into_environment_config(raw)
    physics = OmegaConf.merge(OmegaConf.structured(PhysicsConfig), raw.get("physics", {}))
    forward_operator, backward_operator = build_operators(physics)
    operators = {"forward_operator": forward_operator, "backward_operator": backward_operator}
    built = {}
    for name, cls in classes.items():
        kwargs = {k: v for k, v in configs[name].items() if k not in ("model_name", "engine_name")}
        built[name] = cls(**filter_arguments_by_signature(cls, {**kwargs, **operators})).eval()
    if checkpoint is not None:
        loaded = load_checkpoint(checkpoint, built)
        logger.info("Loaded %s from %s.", ", ".join(loaded), checkpoint)
    cfg = OmegaConf.create(
        {"model": configs.model, "additional_models": {name: configs[name] for name in configs if name != "model"}}
    )
    if "training" in raw and "loss" in raw.training:
        cfg.training = {"loss": raw.training.loss}  # MIAREngine checks at construction that it can compute them
    model = built.pop("model")
    engine = setup_engine(cfg, "cpu", model, built, **operators)
    engine.ndim = 2  # set by DIRECT from the dataset; compute_sensitivity_map reads it
    return engine


def build_nextaccel(aqvae_engine: Engine, config_path: Path, checkpoint: str | os.PathLike | None = None) -> nn.Module:
    """NextAccel of the YAML ``config_path``, built as ``direct train`` builds it, on the AQ-VAE of ``aqvae_engine``:
    its codebook, a copy of its encoder as context encoder.

    The config must repeat the AQ-VAE's shape (``ValueError`` naming the first key that differs). A checkpoint
    replaces those weights (and its ``sensitivity_model`` the AQ-VAE engine's, when it has one).
    """
    from direct.environment import load_models_into_environment_config
    from direct.utils import filter_arguments_by_signature
    from omegaconf import OmegaConf

    if not config_path.is_file():
        raise FileNotFoundError(
            f"config {config_path} does not exist: run from a direct-nextaccel checkout or pass --repo-root"
        )
    classes, configs = load_models_into_environment_config(OmegaConf.load(config_path))
    config = OmegaConf.to_container(configs.model)
    tokenizer = OmegaConf.to_container(aqvae_engine.cfg.model)
    tokenizer["context_strides"] = sorted(tokenizer["context_strides"], reverse=True)  # NextAccel: coarse to fine
    for key in (*_SHARED_WITH_AQVAE, "context_strides"):
        ours, theirs = (list(v) if isinstance(v, list | tuple) else v for v in (config[key], tokenizer[key]))
        if ours != theirs:
            raise ValueError(f"{config_path}: model.{key} {ours} differs from the AQ-VAE's {theirs}")
    cls = classes["model"]
    kwargs = {key: value for key, value in config.items() if key not in ("model_name", "engine_name")}
    model = cls(**filter_arguments_by_signature(cls, kwargs)).eval()
    aqvae = aqvae_engine.model
    model.set_codebook(aqvae.quantizer.codebook)
    model.init_context_encoder_from(aqvae.encoder.state_dict())
    if checkpoint is not None:
        modules = {"model": model, **aqvae_engine.models}
        loaded = load_checkpoint(checkpoint, modules)
        logger.info("Loaded %s from %s.", ", ".join(loaded), checkpoint)
    return model


def build_miar(
    miar_config: Path,
    msvqvae_config: Path,
    msvqvae_checkpoint: str | os.PathLike | None = None,
    miar_checkpoint: str | os.PathLike | None = None,
) -> Engine:
    """MIAR's engine with the MSVQ-VAE of ``msvqvae_config`` as its tokenizer and LR encoder start, as training has.

    The tokenizer is built from its own config (and checkpoint) and loaded into MIAR's with ``MIAR.load_tokenizer``,
    which refuses a MIAR config that does not repeat the tokenizer's shape. A MIAR checkpoint then replaces all of it.
    """
    tokenizer = build_engine(msvqvae_config, msvqvae_checkpoint).model
    engine = build_engine(miar_config)
    engine.miar.load_tokenizer(tokenizer.state_dict())
    if miar_checkpoint is not None:
        loaded = load_checkpoint(miar_checkpoint, {"model": engine.model, **engine.models})
        logger.info("Loaded %s from %s.", ", ".join(loaded), miar_checkpoint)
    return engine


def _random_batch(mask: torch.Tensor, coils: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Random k-space under ``mask`` (H, W) and a random sensitivity estimate, in DIRECT's batch layout."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, coils, *mask.shape, 2)
    sampling_mask = mask[None, None, :, :, None].expand(batch_size, 1, *mask.shape, 1).contiguous()
    return {
        "masked_kspace": torch.randn(shape, generator=generator) * sampling_mask,
        "sampling_mask": sampling_mask,
        "sensitivity_map": torch.randn(shape, generator=generator),
    }


def synthetic_batch(setup: Setup, batch_size: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random k-space and sensitivity estimate under the R = 32 mask of :data:`FAMILY`, as DIRECT's transforms give.

    Returns ``masked_kspace`` (B, C, H, W, 2), ``sampling_mask`` bool (B, 1, H, W, 1), ``sensitivity_map``
    (B, C, H, W, 2) and ``family`` long (B,).
    """
    import torch

    from direct_nextaccel.masks.nested import family_index, nested_masks

    mask = torch.from_numpy(nested_masks(FAMILY, setup.matrix, seed=seed)[0])  # H, W
    batch = _random_batch(mask, setup.coils, batch_size, seed)
    batch["family"] = torch.full((batch_size,), family_index(FAMILY), dtype=torch.long)
    return {key: value.to(device) for key, value in batch.items()}


def superresolution_batch(
    setup: SuperResolutionSetup, batch_size: int, device: torch.device, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random k-space and sensitivity estimate under the ``SuperResolution`` mask of ``setup.factor``.

    Returns ``masked_kspace`` (B, C, H, W, 2), ``sampling_mask`` bool (B, 1, H, W, 1) and ``sensitivity_map``
    (B, C, H, W, 2).
    """
    import torch

    from direct_nextaccel.masks.superresolution import superresolution_mask

    mask = torch.from_numpy(superresolution_mask(setup.matrix, setup.factor))  # H, W
    return {key: value.to(device) for key, value in _random_batch(mask, setup.coils, batch_size, seed).items()}


# What is timed ------------------------------------------------------------------------------------------------------


class StageClock:
    """Wall-clock seconds of consecutive stages of one call; waits for the GPU at every stage boundary."""

    def __init__(self, device: torch.device) -> None:
        import torch

        self._sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.stages: dict[str, float] = {}
        self._sync()
        self._last = time.perf_counter()

    def __call__(self, stage: str) -> None:
        """End ``stage``: it lasted from the previous call (or the clock's creation) until now."""
        self._sync()
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self._last
        self._last = now


Runner = Callable[[dict[str, Any], StageClock], Any]
"""One reconstruction of a batch, reporting its stages to the clock; returns the magnitude images (B, H, W)."""


def baseline_runner(engine: Engine) -> Runner:
    """DIRECT's inference of an E2EVarNet/RecurrentVarNet engine: refine the sensitivities, then forward."""

    def reconstruct(batch: dict[str, Any], clock: StageClock) -> torch.Tensor:
        data = {
            "masked_kspace": batch["masked_kspace"],
            "sampling_mask": batch["sampling_mask"],
            "sensitivity_map": engine.compute_sensitivity_map(batch["sensitivity_map"]),
        }
        clock("sensitivities")
        image, _ = engine.forward_function(data)  # B, H, W
        clock("network")
        return image

    return reconstruct


def decoding_options(mode: str) -> dict[str, Any]:
    """``generate`` keywords of a row of :data:`MODES`: argmax, or beam search with k = the row's digit."""
    return {"mode": "argmax"} if mode == "argmax" else {"mode": "beam", "beam_k": int(mode.removeprefix("beam"))}


def nextaccel_runner(aqvae_engine: Engine, nextaccel: nn.Module, mode: str, bf16: bool) -> Runner:
    """NextAccel's inference from the R32 batch: sensitivities, SENSE image, Q32, generation, decoding.

    ``bf16`` runs the transformer (``generate``, context encoder included) under bf16 autocast, the paper's
    inference precision; the tokenizer and the sensitivity U-Net stay in float32.
    """
    import torch

    from direct_nextaccel.core.images import center_crop_or_pad, sense_adjoint
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
        image32 = center_crop_or_pad(image.permute(0, 3, 1, 2) * factor, aqvae.image_size)  # B, 2, h, w
        q32 = aqvae.encode(image32[:, None], batch["family"], levels=[0]).indices[0]  # B, g0, g0
        clock("tokenize")
        with torch.autocast(kspace.device.type, dtype=torch.bfloat16, enabled=bf16):
            tokens = nextaccel.generate(q32, image32, batch["family"], use_cache=True, **options)
        clock("generate")
        decoded = center_crop_or_pad(aqvae.decode_indices(tokens) / factor, tuple(kspace.shape[2:4]))  # B, 2, H, W
        magnitude = torch.linalg.vector_norm(decoded, dim=1)  # B, H, W
        clock("decode")
        return magnitude

    return reconstruct


def miar_runner(engine: Engine, mode: str, bf16: bool) -> Runner:
    """MIAR's inference as ``MIAREngine`` predicts: sensitivities, LR image, LR encoder, generation, decoding.

    The decoding settings other than ``mode`` and ``beam_k`` (``beam_alpha``) are the config's. The LR encoder runs
    inside ``MIAR.generate``; a forward hook on it ends its stage, so ``generate`` holds the context projection, the
    blocks' cross-attention keys/values and the scale-by-scale decoding. ``bf16`` runs ``generate`` (LR encoder
    included) under bf16 autocast; the tokenizer's decoder stays in float32.
    """
    import torch

    from direct_nextaccel.core.images import center_crop_or_pad

    miar = engine.miar
    options = {**engine.decoding, **decoding_options(mode)}

    def reconstruct(batch: dict[str, Any], clock: StageClock) -> torch.Tensor:
        kspace = batch["masked_kspace"]
        sensitivity_map = engine.compute_sensitivity_map(batch["sensitivity_map"])
        clock("sensitivities")
        data = {**batch, "sensitivity_map": sensitivity_map}
        factor = engine.intensity_factor(data)[:, None, None, None]  # B, 1, 1, 1
        lr_image = engine.lr_image(data, factor[:, 0, 0, 0])  # B, 2, h, w
        clock("lr_image")
        hook = miar.context_encoder.register_forward_hook(lambda *_: clock("lr_encoder"))
        try:
            with torch.autocast(kspace.device.type, dtype=torch.bfloat16, enabled=bf16):
                tokens = miar.generate(lr_image, **options)
        finally:
            hook.remove()
        clock("generate")
        decoded = center_crop_or_pad(miar.tokenizer.decode_indices(tokens) / factor, tuple(kspace.shape[2:4]))
        magnitude = torch.linalg.vector_norm(decoded, dim=1)  # B, H, W
        clock("decode")
        return magnitude

    return reconstruct


# Measuring ----------------------------------------------------------------------------------------------------------

_MIB = 2**20

MEMORY_MEASURES = {
    "cuda": "torch.cuda.max_memory_allocated over the timed repeats, with only the row's networks and batch on the GPU",
    "cpu": (
        "weights and batch plus the growth of the peak resident set over the timed repeats (Linux VmHWM, reset through "
        "/proc/self/clear_refs, after malloc_trim), i.e. what the row adds to the process; null where /proc is absent"
    ),
}


def _proc_status_kib(key: str) -> int | None:
    """A ``kB`` entry (``VmRSS``, ``VmHWM``) of ``/proc/self/status``, or None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> int | None:
    """Return freed heap memory to the OS, reset the peak resident set and return the current one (KiB), or None."""
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc keeps freed buffers of earlier rows resident, hiding new growth
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current VmRSS
    except OSError:
        return None
    return _proc_status_kib("VmRSS")


class PeakMemory:
    """Peak memory (MiB) of the work inside a ``with`` block, measured as :data:`MEMORY_MEASURES` says.

    Parameters
    ----------
    device : torch.device
        Where the work runs.
    resident_bytes : int
        Weights and inputs of the row, already resident on the CPU before the block (ignored on GPU, where
        ``max_memory_allocated`` sees them).
    """

    def __init__(self, device: torch.device, resident_bytes: int) -> None:
        self.device = device
        self.resident_bytes = resident_bytes
        self.mib: float | None = None
        self._rss_before: int | None = None

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._rss_before = _reset_peak_rss()
        return self

    def __exit__(self, *exc_info: object) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = torch.cuda.max_memory_allocated(self.device) / _MIB
            return
        peak = _proc_status_kib("VmHWM")
        if self._rss_before is not None and peak is not None:
            self.mib = (self.resident_bytes + 1024 * max(peak - self._rss_before, 0)) / _MIB


def _tensor_bytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class Method:
    """One benchmarked method: its networks (moved to the device while it runs) and one runner per table row."""

    modules: list[nn.Module]
    runners: dict[str, Runner]

    def weights_bytes(self) -> int:
        return _tensor_bytes([t for m in self.modules for t in (*m.parameters(), *m.buffers())])

    def parameters(self) -> int:
        return sum(p.numel() for m in self.modules for p in m.parameters())

    def to(self, device: torch.device) -> None:
        for module in self.modules:
            module.to(device)


def summarize(
    name: str,
    batch_size: int,
    samples: Sequence[Mapping[str, float]],
    peak_mib: float | None,
    parameters: int,
    labels: Mapping[str, str] = LABELS,
) -> dict[str, Any]:
    """One table row from the stage times (seconds per call) of the timed repeats; ``labels`` are the task's."""
    import numpy as np

    totals = np.array([sum(stages.values()) for stages in samples]) / batch_size  # seconds per slice
    q25, median, q75 = (float(q) for q in np.percentile(totals, [25, 50, 75]))
    stages = {stage: float(np.median([s[stage] for s in samples])) / batch_size for stage in samples[0]}
    return {
        "name": name,
        "label": labels[name],
        "batch_size": batch_size,
        "repeats": len(samples),
        "seconds_per_slice": {"median": median, "q25": q25, "q75": q75, "iqr": q75 - q25},
        "seconds_per_slice_samples": totals.tolist(),
        "stage_seconds_per_slice": stages,
        "peak_memory_mib": peak_mib,
        "parameters": parameters,
    }


def compute_ratios(rows: Sequence[Mapping[str, Any]], task: str = "reconstruction") -> list[dict[str, Any]]:
    """The ratios of median seconds per slice of ``task``, per batch size, for the rows present in ``rows``.

    A ratio of two rows the paper timed (``--task superresolution``: MIAR's decoding modes) also carries the paper's
    ratio as ``paper_reference``.
    """
    spec = TASKS[task]
    by_key = {(row["name"], row["batch_size"]): row for row in rows}
    ratios = []
    for batch_size in sorted({row["batch_size"] for row in rows}):
        for numerator, denominator, target in spec.ratios:
            if (numerator, batch_size) not in by_key or (denominator, batch_size) not in by_key:
                continue
            value = (
                by_key[numerator, batch_size]["seconds_per_slice"]["median"]
                / by_key[denominator, batch_size]["seconds_per_slice"]["median"]
            )
            ratio = {
                "label": f"{spec.labels[numerator]} / {spec.labels[denominator]}",
                "numerator": numerator,
                "denominator": denominator,
                "batch_size": batch_size,
                "ratio": value,
                "target_at_most": target,
                "meets_target": None if target is None else value <= target,
            }
            if spec.paper_ms:
                paper = spec.paper_ms
                ratio["paper_reference"] = (
                    paper[numerator] / paper[denominator] if numerator in paper and denominator in paper else None
                )
            ratios.append(ratio)
    return ratios


def _device_name(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), None)
    except OSError:
        model = None
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} logical cores"


def benchmark(
    config: str = "tiny",
    device: str = "cpu",
    batch_sizes: Sequence[int] = (1, 8),
    repeats: int = 20,
    warmup: int = 3,
    modes: Sequence[str] = MODES,
    models: Sequence[str] | None = None,
    bf16: bool = False,
    checkpoints: Mapping[str, str | os.PathLike | None] | None = None,
    repo_root: str | os.PathLike = REPOSITORY,
    progress: bool = False,
    task: str = "reconstruction",
) -> dict[str, Any]:
    """Time every requested method and decoding mode of a task at every batch size, in one process on one device.

    Parameters
    ----------
    config : str
        ``"paper"`` or ``"tiny"`` (a key of the task's setups: :data:`SETUPS` or :data:`SR_SETUPS`).
    device : str
        ``"cpu"`` or ``"cuda"``.
    batch_sizes : Sequence[int]
        Slices per call.
    repeats, warmup : int
        Timed calls per row (median and IQR over them) and untimed calls before them.
    modes : Sequence[str]
        Decoding modes of the task's autoregressive method (NextAccel or MIAR), of :data:`MODES`.
    models : Sequence[str], optional
        Methods, of the task's (:data:`MODELS` or :data:`SR_MODELS`); all of them by default.
    bf16 : bool
        bf16 autocast for the autoregressive transformer (see :func:`nextaccel_runner`, :func:`miar_runner`).
    checkpoints : Mapping[str, path or None], optional
        Weights for the names of the task's checkpoints (``"aqvae"``, ``"nextaccel"``, ``"varnet"``,
        ``"recurrentvarnet"``; superresolution: ``"msvqvae"``, ``"miar"``, ``"varnet"``, ``"recurrentvarnet"``,
        ``"unet"``); random weights otherwise.
    repo_root : path
        Checkout holding ``projects/`` (the paper-size configs; the tiny ones are package data).
    progress : bool
        Show a tqdm bar over all calls.
    task : str
        ``"reconstruction"`` (NextAccel, issue 4) or ``"superresolution"`` (MIAR, issue 7).

    Returns
    -------
    dict[str, Any]
        JSON-ready: the environment (device, versions, threads, load), the options, ``rows`` (see
        :func:`summarize`) and ``ratios`` (see :func:`compute_ratios`), all from this run. Super-resolution results
        also name the ``task``, where the coil count comes from and the MIAR paper's timings.
    """
    spec = TASKS.get(task)
    if models is None and spec is not None:
        models = spec.models
    check_options(config, device, batch_sizes, repeats, warmup, modes, models or (), checkpoints or {}, task)
    checkpoints = {name: path for name, path in (checkpoints or {}).items() if path is not None}
    import torch

    torch_device = resolve_device(device)
    setup, root = spec.setups[config], Path(repo_root)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()

    if task == "reconstruction":
        methods = _reconstruction_methods(setup, root, modes, models, bf16, checkpoints)
        make_batch = synthetic_batch
    else:
        methods = _superresolution_methods(setup, root, modes, models, bf16, checkpoints)
        make_batch = superresolution_batch
    rows = _time_methods(
        methods,
        lambda size: make_batch(setup, size, torch_device),
        spec.labels,
        batch_sizes,
        repeats,
        warmup,
        torch_device,
        progress,
    )

    from importlib.metadata import version

    environment = {
        "started": started,
        "config": config,
        "device": _device_name(torch_device),
        "device_type": torch_device.type,
        "torch": torch.__version__,
        "direct": version("direct-recon"),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "matrix": list(setup.matrix),
        "coils": setup.coils,
    }
    options = {
        "batch_sizes": list(batch_sizes),
        "repeats": repeats,
        "warmup": warmup,
        "timed": "masked k-space, mask and sensitivity estimate on the device -> magnitude image (B, H, W)",
        "memory_measure": MEMORY_MEASURES[torch_device.type],
    }
    weights = {name: str(checkpoints.get(name, WEIGHTS_NOTE)) for name in _checkpoint_names(task, models)}
    if task == "reconstruction":
        return {
            "benchmark": "direct-nextaccel speed",
            **environment,
            "mask": f"{FAMILY} R=32",
            "configs": {
                "aqvae": setup.aqvae_config,
                "nextaccel": setup.nextaccel_config,
                "varnet": setup.varnet_config,
                "recurrentvarnet": setup.recurrentvarnet_config,
            },
            "weights": weights,
            "bf16": "NextAccel transformer under bf16 autocast" if bf16 else False,
            **options,
            "rows": rows,
            "ratios": compute_ratios(rows, task),
        }
    return {
        "benchmark": "direct-nextaccel speed",
        "task": task,
        **environment,
        "coil_source": setup.coil_source,
        "mask": SR_MASK,
        "configs": {name: getattr(setup, f"{name}_config") for name in ("msvqvae", "miar", *SR_MODELS[1:])},
        "weights": weights,
        "bf16": "MIAR transformer under bf16 autocast" if bf16 else False,
        **options,
        "paper_reference": {
            "source": "MIAR paper, decoding strategies table (RTX 4090); 'w/o Beam Search' is argmax",
            "ms_per_slice": dict(spec.paper_ms),
        },
        "rows": rows,
        "ratios": compute_ratios(rows, task),
    }


def _reconstruction_methods(
    setup: Setup,
    root: Path,
    modes: Sequence[str],
    models: Sequence[str],
    bf16: bool,
    checkpoints: Mapping[str, str | os.PathLike],
) -> list[Method]:
    methods = []
    if "nextaccel" in models:
        aqvae_engine = build_engine(resolve_config(setup.aqvae_config, root), checkpoints.get("aqvae"))
        nextaccel_config = resolve_config(setup.nextaccel_config, root)
        nextaccel = build_nextaccel(aqvae_engine, nextaccel_config, checkpoints.get("nextaccel"))
        runners = {mode: nextaccel_runner(aqvae_engine, nextaccel, mode, bf16) for mode in MODES if mode in modes}
        modules = [aqvae_engine.model, *aqvae_engine.models.values(), nextaccel]
        methods.append(Method(modules, runners))
    for model in ("varnet", "recurrentvarnet"):
        if model in models:
            engine = build_engine(resolve_config(getattr(setup, f"{model}_config"), root), checkpoints.get(model))
            methods.append(Method([engine.model, *engine.models.values()], {model: baseline_runner(engine)}))
    return methods


def _superresolution_methods(
    setup: SuperResolutionSetup,
    root: Path,
    modes: Sequence[str],
    models: Sequence[str],
    bf16: bool,
    checkpoints: Mapping[str, str | os.PathLike],
) -> list[Method]:
    methods = []
    if "miar" in models:
        engine = build_miar(
            resolve_config(setup.miar_config, root),
            resolve_config(setup.msvqvae_config, root),
            checkpoints.get("msvqvae"),
            checkpoints.get("miar"),
        )
        runners = {mode: miar_runner(engine, mode, bf16) for mode in MODES if mode in modes}
        # The MSVQ-VAE is MIAR's frozen tokenizer submodule: its weights and parameters are counted in MIAR's.
        methods.append(Method([engine.model, *engine.models.values()], runners))
    for model in SR_MODELS[1:]:
        if model in models:
            engine = build_engine(resolve_config(getattr(setup, f"{model}_config"), root), checkpoints.get(model))
            methods.append(Method([engine.model, *engine.models.values()], {model: baseline_runner(engine)}))
    return methods


def _time_methods(
    methods: Sequence[Method],
    make_batch: Callable[[int], dict[str, torch.Tensor]],
    labels: Mapping[str, str],
    batch_sizes: Sequence[int],
    repeats: int,
    warmup: int,
    device: torch.device,
    progress: bool,
) -> list[dict[str, Any]]:
    """Rows of every method's runners at every batch size, each method on the device only while it runs."""
    import torch
    from tqdm import tqdm

    rows = []
    calls = sum(len(m.runners) for m in methods) * len(batch_sizes) * (warmup + repeats)
    benchmark_cudnn = torch.backends.cudnn.benchmark
    bar = tqdm(total=calls, desc="speed", unit="call", disable=not progress)
    try:
        # `direct predict` lets cuDNN pick its fastest kernels; the warm-up calls absorb that search.
        torch.backends.cudnn.benchmark = device.type == "cuda"
        with torch.inference_mode():
            for method in methods:
                method.to(device)
                for batch_size in batch_sizes:
                    batch = make_batch(batch_size)
                    resident = method.weights_bytes() + _tensor_bytes(list(batch.values()))
                    for name, runner in method.runners.items():
                        bar.set_description(f"{labels[name]}, batch {batch_size}")
                        logger.info(
                            "Timing %s at batch %d: %d warm-up and %d timed calls.",
                            labels[name],
                            batch_size,
                            warmup,
                            repeats,
                        )
                        for _ in range(warmup):
                            runner(batch, StageClock(device))
                            bar.update()
                        samples = []
                        with PeakMemory(device, resident) as memory:
                            for _ in range(repeats):
                                clock = StageClock(device)
                                runner(batch, clock)
                                samples.append(clock.stages)
                                bar.update()
                        row = summarize(name, batch_size, samples, memory.mib, method.parameters(), labels)
                        rows.append(row)
                        logger.info(
                            "%s, batch %d: %.4g s per slice (median of %d).",
                            labels[name],
                            batch_size,
                            row["seconds_per_slice"]["median"],
                            repeats,
                        )
                    del batch
                method.to(torch.device("cpu"))
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    finally:
        bar.close()
        torch.backends.cudnn.benchmark = benchmark_cudnn
    return rows


def _checkpoint_names(task: str, models: Sequence[str]) -> list[str]:
    """Names of the weights each requested method uses, in the task's order."""
    spec = TASKS[task]
    shared = {"nextaccel": ("aqvae", "nextaccel"), "miar": ("msvqvae", "miar")}
    used = {name for model in models for name in shared.get(model, (model,))}
    return [name for name in spec.checkpoints if name in used]


# Report -------------------------------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def markdown(result: Mapping[str, Any]) -> str:
    """Markdown report of a :func:`benchmark` result: context, timings table, ratios table."""
    weights = sorted(set(result["weights"].values()))
    run = (
        f"{result['mask']}; {result['warmup']} warm-up and {result['repeats']} timed calls per row; bf16: "
        f"{result['bf16'] or 'no'}."
    )
    matrix = f"{result['matrix'][0]} x {result['matrix'][1]}"
    if "task" in result:
        coils = f"{result['coils']} coil{'s' if result['coils'] != 1 else ''}"
        paper = result["paper_reference"]
        labels = TASKS[result["task"]].labels
        reference = ", ".join(f"{labels[name]} {ms:g}" for name, ms in paper["ms_per_slice"].items())
        configuration = [
            f"Task {result['task']}, configuration {result['config']}: {matrix}, {coils} ({result['coil_source']}), "
            + run,
            f"Paper reference, ms / slice: {reference} ({paper['source']}).",
        ]
    else:
        configuration = [f"Configuration {result['config']}: {matrix}, {result['coils']} coils, " + run]
    lines = [
        f"Device: {result['device']} ({result['device_type']}), torch {result['torch']}, "
        f"{result['torch_threads']} threads, load average {result['load_average_before'][0]:.2f} before / "
        f"{result['load_average_after'][0]:.2f} after.",
        *configuration,
        f"Weights: {'; '.join(weights)}.",
        f"Peak memory: {result['memory_measure']}.",
        "",
        "| Method | Batch | ms / slice (median) | IQR (ms) | Stages (ms / slice) | Peak memory (MiB) | Params (M) |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for row in result["rows"]:
        time_ = row["seconds_per_slice"]
        stages = ", ".join(f"{stage} {_ms(value)}" for stage, value in row["stage_seconds_per_slice"].items())
        memory = "n/a" if row["peak_memory_mib"] is None else f"{row['peak_memory_mib']:.0f}"
        lines.append(
            f"| {row['label']} | {row['batch_size']} | {_ms(time_['median'])} | {_ms(time_['iqr'])} | {stages} "
            f"| {memory} | {row['parameters'] / 1e6:.1f} |"
        )
    if result["ratios"] and "task" in result:
        paper_ms = result["paper_reference"]["ms_per_slice"]
        lines += ["", "| Ratio of s / slice | Batch | Ratio | Paper (RTX 4090) |", "|---|---:|---:|---|"]
        for ratio in result["ratios"]:
            reference = ratio["paper_reference"]
            cited = (
                ""
                if reference is None
                else f"{reference:.2f} ({paper_ms[ratio['numerator']]:g} / {paper_ms[ratio['denominator']]:g} ms)"
            )
            lines.append(f"| {ratio['label']} | {ratio['batch_size']} | {ratio['ratio']:.3f} | {cited} |")
    elif result["ratios"]:
        lines += ["", "| Ratio of s / slice | Batch | Ratio | Target |", "|---|---:|---:|---|"]
        for ratio in result["ratios"]:
            target = ratio["target_at_most"]
            verdict = "" if target is None else f"<= {target:g} ({'met' if ratio['meets_target'] else 'missed'})"
            lines.append(f"| {ratio['label']} | {ratio['batch_size']} | {ratio['ratio']:.3f} | {verdict} |")
    return "\n".join(lines)


# Command line -------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``direct-nextaccel speed``."""
    parser.add_argument(
        "--task",
        choices=tuple(TASKS),
        default="reconstruction",
        help="reconstruction (default): NextAccel against E2EVarNet and RecurrentVarNet under an R = 32 mask; "
        "superresolution: MIAR's 4 x 4 super-resolution against E2EVarNet, RecurrentVarNet and U-Net",
    )
    parser.add_argument(
        "--config",
        choices=tuple(SETUPS),
        default="paper",
        help="paper (default) or tiny sizes: reconstruction 256 x 256 with 16 coils or 64 x 64 with 4; "
        "superresolution 256 x 256 with 1 coil (MIAR's single-image data) or 64 x 64 with 4",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default cuda when available, else cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], metavar="B", help="default 1 8")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per row (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before them (default 3)")
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=list(MODES), help="NextAccel or MIAR decoding modes (default all)"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=ALL_MODELS,
        help=f"methods (default all of the task): reconstruction {' '.join(MODELS)}; superresolution "
        f"{' '.join(SR_MODELS)}",
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the NextAccel or MIAR transformer")
    for name in ALL_CHECKPOINTS:
        tasks = " and ".join(task for task, spec in TASKS.items() if name in spec.checkpoints)
        parser.add_argument(
            f"--checkpoint-{name}",
            type=Path,
            metavar="PT",
            help=f"{name} weights (DIRECT checkpoint) for {tasks}; default random",
        )
    parser.add_argument("--output", type=Path, metavar="FILE.json", help="also write the results as JSON")
    parser.add_argument(
        "--repo-root", type=Path, default=REPOSITORY, help="checkout holding projects/ (paper-size configs)"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the Markdown report and write the JSON; a user error prints one line, returns 2."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        result = benchmark(
            config=args.config,
            device=device,
            batch_sizes=args.batch_sizes,
            repeats=args.repeats,
            warmup=args.warmup,
            modes=args.modes,
            models=args.models,
            bf16=args.bf16,
            # Another task's checkpoint is passed only when given, for benchmark to refuse it.
            checkpoints={
                name: getattr(args, f"checkpoint_{name}")
                for name in ALL_CHECKPOINTS
                if name in TASKS[args.task].checkpoints or getattr(args, f"checkpoint_{name}") is not None
            },
            repo_root=args.repo_root,
            progress=args.progress,
            task=args.task,
        )
        print(markdown(result))
        if args.output is not None:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            print(f"\nWrote {args.output}")
    except (ValueError, TypeError, OSError) as err:
        print(f"direct-nextaccel speed: error: {err}", file=sys.stderr)
        return 2
    return 0

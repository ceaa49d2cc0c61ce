"""Inference speed of NextAccel next to DIRECT's E2EVarNet and RecurrentVarNet, one run on one device (issue 4).

Every method reconstructs the same synthetic batch of the form DIRECT's fastMRI transforms hand to an engine:
masked k-space (B, C, H, W, 2) under a ``NestedCartesianY`` R = 32 mask, the mask (B, 1, H, W, 1) and the RSS
sensitivity estimate (B, C, H, W, 2). The timed region runs from that batch to the magnitude image (B, H, W); data
loading, the transforms and writing are outside it, as they are the same for every method.

- E2EVarNet and RecurrentVarNet: DIRECT's own engines built from the baseline configs, so the time is that of
  ``direct predict``: the sensitivity U-Net refines the estimate coil by coil (``compute_sensitivity_map``), then the
  engine's ``forward_function`` (network, inverse FFT, RSS).
- NextAccel: the same sensitivity step with the AQ-VAE config's U-Net; SENSE-combined R32 image
  (``acquisition.sense_adjoint``); AQ-VAE encoding of level 0 (tokens Q32); ``NextAccel.generate`` with argmax or
  beam search (k = 1, 2, 3) and the KV cache; ``AQVAE.decode_indices`` of all six levels.

Stages are timed separately (with a device synchronisation between them on GPU) and reported per slice next to the
total. Speed does not depend on the weights' values: no method has data-dependent control flow (beam search always
scores 2^k candidates per level), so randomly initialised weights are used unless checkpoints are given.

Configurations: ``paper`` (256 x 256, 16 coils, the paper-size configs of ``projects/fastmri_brain/configs`` and the
paper's transformer, NextAccel's constructor defaults) and ``tiny`` (64 x 64, 4 coils, the CPU configs of
``configs/`` and a three-block transformer (one per context stride)) so that a test runs in seconds.
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
"""Checkout holding ``configs/`` and ``projects/`` (the default of ``--repo-root``)."""

WEIGHTS_NOTE = "randomly initialised: inference time does not depend on the weights' values"


@dataclass(frozen=True)
class Setup:
    """Sizes and model configs of one benchmark configuration.

    Attributes
    ----------
    matrix : tuple[int, int]
        k-space (H, W).
    coils : int
        Receive coils.
    aqvae_config, varnet_config, recurrentvarnet_config : str
        DIRECT YAML files relative to the repository root; their ``model`` and ``additional_models`` sections build
        the networks (the NextAccel path uses the AQ-VAE config's sensitivity model).
    transformer : Mapping[str, Any]
        NextAccel arguments beyond those fixed by the AQ-VAE config (empty: the constructor defaults, the paper's).
    """

    matrix: tuple[int, int]
    coils: int
    aqvae_config: str
    varnet_config: str
    recurrentvarnet_config: str
    transformer: Mapping[str, Any] = field(default_factory=dict)


SETUPS = {
    "paper": Setup(
        matrix=(256, 256),
        coils=16,
        aqvae_config="projects/fastmri_brain/configs/aqvae.yaml",
        varnet_config="projects/fastmri_brain/configs/baselines/varnet_cartesian_y.yaml",
        recurrentvarnet_config="projects/fastmri_brain/configs/baselines/recurrentvarnet_cartesian_y.yaml",
    ),
    "tiny": Setup(
        matrix=(64, 64),
        coils=4,
        aqvae_config="configs/tiny_aqvae.yaml",
        varnet_config="configs/tiny_varnet_cartesian_y.yaml",
        recurrentvarnet_config="configs/tiny_recurrentvarnet_cartesian_y.yaml",
        transformer={"depth": 3, "embed_dim": 32, "num_heads": 2},
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
) -> None:
    """Raise ``ValueError``/``FileNotFoundError`` naming the first bad option of :func:`benchmark`."""
    if config not in SETUPS:
        raise ValueError(f"config {config!r} is not one of {tuple(SETUPS)}")
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
        raise ValueError(f"models is empty: name some of {MODELS}")
    for model in models:
        if model not in MODELS:
            raise ValueError(f"model {model!r} is not one of {MODELS}")
    if "nextaccel" in models and not modes:
        raise ValueError(f"modes is empty: name some of {MODES}")
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
    for name, path in checkpoints.items():
        if name not in ("aqvae", "nextaccel", "varnet", "recurrentvarnet"):
            raise ValueError(f"checkpoint of {name!r}: only aqvae, nextaccel, varnet and recurrentvarnet load one")
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{name} checkpoint {path} does not exist")


def resolve_device(device: str) -> torch.device:
    """``torch.device`` for ``"cpu"`` or ``"cuda"``; refuses CUDA without a GPU."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch.cuda.is_available() is False")
    return torch.device(device)


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
    model = built.pop("model")
    engine = setup_engine(cfg, "cpu", model, built, **operators)
    engine.ndim = 2  # set by DIRECT from the dataset; compute_sensitivity_map reads it
    return engine


def build_nextaccel(
    aqvae_engine: Engine, transformer: Mapping[str, Any], checkpoint: str | os.PathLike | None = None
) -> nn.Module:
    """NextAccel matching the AQ-VAE of ``aqvae_engine``: its codebook, a copy of its encoder as context encoder.

    A checkpoint replaces those (and its ``sensitivity_model`` the AQ-VAE engine's, when it has one).
    """
    from direct_nextaccel.nextaccel.nextaccel import NextAccel

    config = aqvae_engine.cfg.model
    kwargs = {key: config[key] for key in _SHARED_WITH_AQVAE}
    kwargs["context_strides"] = sorted(config["context_strides"], reverse=True)  # NextAccel: coarse to fine
    model = NextAccel(**kwargs, **transformer).eval()
    aqvae = aqvae_engine.model
    model.set_codebook(aqvae.quantizer.codebook)
    model.init_context_encoder_from(aqvae.encoder.state_dict())
    if checkpoint is not None:
        modules = {"model": model, **aqvae_engine.models}
        loaded = load_checkpoint(checkpoint, modules)
        logger.info("Loaded %s from %s.", ", ".join(loaded), checkpoint)
    return model


def synthetic_batch(setup: Setup, batch_size: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random k-space and sensitivity estimate under the R = 32 mask of :data:`FAMILY`, as DIRECT's transforms give.

    Returns ``masked_kspace`` (B, C, H, W, 2), ``sampling_mask`` bool (B, 1, H, W, 1), ``sensitivity_map``
    (B, C, H, W, 2) and ``family`` long (B,).
    """
    import torch

    from direct_nextaccel.masks.nested import family_index, nested_masks

    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, setup.coils, *setup.matrix, 2)
    mask = torch.from_numpy(nested_masks(FAMILY, setup.matrix, seed=seed)[0])  # H, W
    sampling_mask = mask[None, None, :, :, None].expand(batch_size, 1, *setup.matrix, 1).contiguous()
    batch = {
        "masked_kspace": torch.randn(shape, generator=generator) * sampling_mask,
        "sampling_mask": sampling_mask,
        "sensitivity_map": torch.randn(shape, generator=generator),
        "family": torch.full((batch_size,), family_index(FAMILY), dtype=torch.long),
    }
    return {key: value.to(device) for key, value in batch.items()}


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


def nextaccel_runner(aqvae_engine: Engine, nextaccel: nn.Module, mode: str, bf16: bool) -> Runner:
    """NextAccel's inference from the R32 batch: sensitivities, SENSE image, Q32, generation, decoding.

    ``bf16`` runs the transformer (``generate``, context encoder included) under bf16 autocast, the paper's
    inference precision; the tokenizer and the sensitivity U-Net stay in float32.
    """
    import torch

    from direct_nextaccel.nextaccel.acquisition import center_crop_or_pad, sense_adjoint

    aqvae = aqvae_engine.model
    options = {"mode": "argmax"} if mode == "argmax" else {"mode": "beam", "beam_k": int(mode.removeprefix("beam"))}

    def reconstruct(batch: dict[str, Any], clock: StageClock) -> torch.Tensor:
        kspace = batch["masked_kspace"]
        sensitivity_map = aqvae_engine.compute_sensitivity_map(batch["sensitivity_map"])
        clock("sensitivities")
        mask = batch["sampling_mask"][:, 0, :, :, 0]  # B, H, W
        image = sense_adjoint(kspace, sensitivity_map, mask, aqvae_engine.backward_operator)  # B, H, W, 2
        image32 = center_crop_or_pad(image.permute(0, 3, 1, 2), aqvae.image_size)  # B, 2, h, w
        q32 = aqvae.encode(image32[:, None], batch["family"], levels=[0]).indices[0]  # B, g0, g0
        clock("tokenize")
        with torch.autocast(kspace.device.type, dtype=torch.bfloat16, enabled=bf16):
            tokens = nextaccel.generate(q32, image32, batch["family"], use_cache=True, **options)
        clock("generate")
        decoded = center_crop_or_pad(aqvae.decode_indices(tokens), tuple(kspace.shape[2:4]))  # B, 2, H, W
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
    name: str, batch_size: int, samples: Sequence[Mapping[str, float]], peak_mib: float | None, parameters: int
) -> dict[str, Any]:
    """One table row from the stage times (seconds per call) of the timed repeats."""
    import numpy as np

    totals = np.array([sum(stages.values()) for stages in samples]) / batch_size  # seconds per slice
    q25, median, q75 = (float(q) for q in np.percentile(totals, [25, 50, 75]))
    stages = {stage: float(np.median([s[stage] for s in samples])) / batch_size for stage in samples[0]}
    return {
        "name": name,
        "label": LABELS[name],
        "batch_size": batch_size,
        "repeats": len(samples),
        "seconds_per_slice": {"median": median, "q25": q25, "q75": q75, "iqr": q75 - q25},
        "seconds_per_slice_samples": totals.tolist(),
        "stage_seconds_per_slice": stages,
        "peak_memory_mib": peak_mib,
        "parameters": parameters,
    }


def compute_ratios(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The :data:`RATIOS` of median seconds per slice, per batch size, for the rows present in ``rows``."""
    by_key = {(row["name"], row["batch_size"]): row for row in rows}
    ratios = []
    for batch_size in sorted({row["batch_size"] for row in rows}):
        for numerator, denominator, target in RATIOS:
            if (numerator, batch_size) not in by_key or (denominator, batch_size) not in by_key:
                continue
            value = (
                by_key[numerator, batch_size]["seconds_per_slice"]["median"]
                / by_key[denominator, batch_size]["seconds_per_slice"]["median"]
            )
            ratios.append(
                {
                    "label": f"{LABELS[numerator]} / {LABELS[denominator]}",
                    "numerator": numerator,
                    "denominator": denominator,
                    "batch_size": batch_size,
                    "ratio": value,
                    "target_at_most": target,
                    "meets_target": None if target is None else value <= target,
                }
            )
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
    models: Sequence[str] = MODELS,
    bf16: bool = False,
    checkpoints: Mapping[str, str | os.PathLike | None] | None = None,
    repo_root: str | os.PathLike = REPOSITORY,
    progress: bool = False,
) -> dict[str, Any]:
    """Time every requested method and decoding mode at every batch size, in one process on one device.

    Parameters
    ----------
    config : str
        Key of :data:`SETUPS`: ``"paper"`` or ``"tiny"``.
    device : str
        ``"cpu"`` or ``"cuda"``.
    batch_sizes : Sequence[int]
        Slices per call.
    repeats, warmup : int
        Timed calls per row (median and IQR over them) and untimed calls before them.
    modes : Sequence[str]
        NextAccel decoding modes, of :data:`MODES`.
    models : Sequence[str]
        Methods, of :data:`MODELS`.
    bf16 : bool
        bf16 autocast for the NextAccel transformer (see :func:`nextaccel_runner`).
    checkpoints : Mapping[str, path or None], optional
        Weights for ``"aqvae"``, ``"nextaccel"``, ``"varnet"``, ``"recurrentvarnet"``; random weights otherwise.
    repo_root : path
        Checkout holding the configs of :data:`SETUPS`.
    progress : bool
        Show a tqdm bar over all calls.

    Returns
    -------
    dict[str, Any]
        JSON-ready: the environment (device, versions, threads, load), the options, ``rows`` (see
        :func:`summarize`) and ``ratios`` (see :func:`compute_ratios`), all from this run.
    """
    check_options(config, device, batch_sizes, repeats, warmup, modes, models, checkpoints or {})
    checkpoints = {name: path for name, path in (checkpoints or {}).items() if path is not None}
    import torch
    from tqdm import tqdm

    torch_device = resolve_device(device)
    setup, root = SETUPS[config], Path(repo_root)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()

    methods = []
    if "nextaccel" in models:
        aqvae_engine = build_engine(root / setup.aqvae_config, checkpoints.get("aqvae"))
        nextaccel = build_nextaccel(aqvae_engine, setup.transformer, checkpoints.get("nextaccel"))
        runners = {mode: nextaccel_runner(aqvae_engine, nextaccel, mode, bf16) for mode in MODES if mode in modes}
        modules = [aqvae_engine.model, *aqvae_engine.models.values(), nextaccel]
        methods.append(Method(modules, runners))
    for model in ("varnet", "recurrentvarnet"):
        if model in models:
            engine = build_engine(root / getattr(setup, f"{model}_config"), checkpoints.get(model))
            methods.append(Method([engine.model, *engine.models.values()], {model: baseline_runner(engine)}))

    rows = []
    calls = sum(len(m.runners) for m in methods) * len(batch_sizes) * (warmup + repeats)
    benchmark_cudnn = torch.backends.cudnn.benchmark
    bar = tqdm(total=calls, desc="speed", unit="call", disable=not progress)
    try:
        # `direct predict` lets cuDNN pick its fastest kernels; the warm-up calls absorb that search.
        torch.backends.cudnn.benchmark = torch_device.type == "cuda"
        with torch.inference_mode():
            for method in methods:
                method.to(torch_device)
                for batch_size in batch_sizes:
                    batch = synthetic_batch(setup, batch_size, torch_device)
                    resident = method.weights_bytes() + _tensor_bytes(list(batch.values()))
                    for name, runner in method.runners.items():
                        bar.set_description(f"{LABELS[name]}, batch {batch_size}")
                        logger.info(
                            "Timing %s at batch %d: %d warm-up and %d timed calls.",
                            LABELS[name],
                            batch_size,
                            warmup,
                            repeats,
                        )
                        for _ in range(warmup):
                            runner(batch, StageClock(torch_device))
                            bar.update()
                        samples = []
                        with PeakMemory(torch_device, resident) as memory:
                            for _ in range(repeats):
                                clock = StageClock(torch_device)
                                runner(batch, clock)
                                samples.append(clock.stages)
                                bar.update()
                        row = summarize(name, batch_size, samples, memory.mib, method.parameters())
                        rows.append(row)
                        logger.info(
                            "%s, batch %d: %.4g s per slice (median of %d).",
                            LABELS[name],
                            batch_size,
                            row["seconds_per_slice"]["median"],
                            repeats,
                        )
                    del batch
                method.to(torch.device("cpu"))
                if torch_device.type == "cuda":
                    torch.cuda.empty_cache()
    finally:
        bar.close()
        torch.backends.cudnn.benchmark = benchmark_cudnn

    from importlib.metadata import version

    return {
        "benchmark": "direct-nextaccel speed",
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
        "mask": f"{FAMILY} R=32",
        "configs": {
            "aqvae": setup.aqvae_config,
            "varnet": setup.varnet_config,
            "recurrentvarnet": setup.recurrentvarnet_config,
            "nextaccel_transformer": dict(setup.transformer) or "NextAccel constructor defaults (paper)",
        },
        "weights": {name: str(checkpoints.get(name, WEIGHTS_NOTE)) for name in _checkpoint_names(models)},
        "bf16": "NextAccel transformer under bf16 autocast" if bf16 else False,
        "batch_sizes": list(batch_sizes),
        "repeats": repeats,
        "warmup": warmup,
        "timed": "masked k-space, mask and sensitivity estimate on the device -> magnitude image (B, H, W)",
        "memory_measure": MEMORY_MEASURES[torch_device.type],
        "rows": rows,
        "ratios": compute_ratios(rows),
    }


def _checkpoint_names(models: Sequence[str]) -> list[str]:
    names = ["aqvae", "nextaccel"] if "nextaccel" in models else []
    return names + [model for model in ("varnet", "recurrentvarnet") if model in models]


# Report -------------------------------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def markdown(result: Mapping[str, Any]) -> str:
    """Markdown report of a :func:`benchmark` result: context, timings table, ratios table."""
    weights = sorted(set(result["weights"].values()))
    lines = [
        f"Device: {result['device']} ({result['device_type']}), torch {result['torch']}, "
        f"{result['torch_threads']} threads, load average {result['load_average_before'][0]:.2f} before / "
        f"{result['load_average_after'][0]:.2f} after.",
        f"Configuration {result['config']}: {result['matrix'][0]} x {result['matrix'][1]}, {result['coils']} coils, "
        f"{result['mask']}; {result['warmup']} warm-up and {result['repeats']} timed calls per row; bf16: "
        f"{result['bf16'] or 'no'}.",
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
    if result["ratios"]:
        lines += ["", "| Ratio of s / slice | Batch | Ratio | Target |", "|---|---:|---:|---|"]
        for ratio in result["ratios"]:
            target = ratio["target_at_most"]
            verdict = "" if target is None else f"<= {target:g} ({'met' if ratio['meets_target'] else 'missed'})"
            lines.append(f"| {ratio['label']} | {ratio['batch_size']} | {ratio['ratio']:.3f} | {verdict} |")
    return "\n".join(lines)


# Command line -------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``direct-nextaccel speed``."""
    parser.add_argument("--config", choices=tuple(SETUPS), default="paper", help="paper (default) or tiny sizes")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default cuda when available, else cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], metavar="B", help="default 1 8")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per row (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before them (default 3)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="NextAccel decoding modes")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="methods (default all)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the NextAccel transformer")
    for name in ("aqvae", "nextaccel", "varnet", "recurrentvarnet"):
        parser.add_argument(
            f"--checkpoint-{name}", type=Path, metavar="PT", help=f"{name} weights (DIRECT checkpoint); default random"
        )
    parser.add_argument("--output", type=Path, metavar="FILE.json", help="also write the results as JSON")
    parser.add_argument("--repo-root", type=Path, default=REPOSITORY, help="checkout holding configs/ and projects/")
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
            checkpoints={
                name: getattr(args, f"checkpoint_{name}")
                for name in ("aqvae", "nextaccel", "varnet", "recurrentvarnet")
            },
            repo_root=args.repo_root,
            progress=args.progress,
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

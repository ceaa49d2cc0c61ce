"""``--task superresolution`` (issue 7): MIAR's 4 x 4 super-resolution next to DIRECT's E2EVarNet, RecurrentVarNet
and U-Net on the same task.

Every method reconstructs the same synthetic batch under DIRECT's ``SuperResolution`` mask of acceleration 16 (the
central (H/4) x (W/4) k-space block, :func:`superresolution_batch`).

- E2EVarNet, RecurrentVarNet and U-Net: the baseline configs of ``projects/miar_brain``, timed as DIRECT predicts
  (with one coil DIRECT's ``compute_sensitivity_map`` only normalises the estimate: the sensitivity U-Net needs
  several coils).
- MIAR (:func:`miar_runner`): the path of ``MIAREngine``'s prediction: sensitivity normalisation; the zero-filled LR
  image of the block at the model size (``MIAREngine.lr_image``); ``MIAR.generate`` with argmax or MIAR's beam search
  (k = 1, 2, 3) and the KV cache, whose LR encoder (the cross-attention context) is reported as its own stage; the
  tokenizer's ``decode_indices`` of all scales. The MSVQ-VAE of ``msvqvae.yaml`` is MIAR's tokenizer, loaded by the
  engine from its checkpoint as for training, which checks that the two configs agree (:func:`build_miar`). Ratios are
  printed next to the MIAR paper's own (RTX 4090, ms per slice: argmax 257, beam k = 1, 2, 3: 432, 705, 1372).

Configurations: ``paper``: 256 x 256, 1 coil (MIAR's single-image setting, the data of ``projects/miar_brain``),
``projects/miar_brain/configs/{msvqvae,miar}.yaml`` and ``baselines/*_sr4.yaml``; ``tiny``: 64 x 64, 4 coils (the
data the tiny configs are written for), ``direct_nextaccel/configs/tiny_{msvqvae,miar}.yaml`` and
``direct_nextaccel/configs/tiny_sr_*.yaml``.
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

MODELS = ("miar", "varnet", "recurrentvarnet", "unet")
LABELS = {
    "argmax": "MIAR argmax",
    "beam1": "MIAR beam k=1",
    "beam2": "MIAR beam k=2",
    "beam3": "MIAR beam k=3",
    "varnet": "E2EVarNet",
    "recurrentvarnet": "RecurrentVarNet",
    "unet": "U-Net",
}
"""Row name (a MIAR decoding mode or a baseline) -> label in the table."""

RATIOS: tuple[tuple[str, str, float | None], ...] = (
    ("argmax", "varnet", None),
    ("argmax", "recurrentvarnet", None),
    ("argmax", "unet", None),
    ("beam1", "argmax", None),
    ("beam2", "argmax", None),
    ("beam3", "argmax", None),
)
"""Printed ratios; the MIAR paper's timings are a reference, not an upper target."""

PAPER_MS = {"argmax": 257.0, "beam1": 432.0, "beam2": 705.0, "beam3": 1372.0}
"""MIAR paper, table of decoding strategies: ms per slice on an RTX 4090 ("w/o Beam Search" is argmax)."""
PAPER_SOURCE = "MIAR paper, decoding strategies table (RTX 4090); 'w/o Beam Search' is argmax"

FACTOR = 4
"""Super-resolution factor per axis: the configs' ``SuperResolution`` acceleration 16 is 4 x 4."""
MASK = "SuperResolution acceleration 16 (4 x 4: the central (H/4) x (W/4) k-space block)"

SETUPS = {
    "paper": Setup(
        matrix=(256, 256),
        coils=1,
        coil_source="MIAR's single-image setting: projects/miar_brain simulates its data with --coils 1",
        configs={
            "msvqvae": "projects/miar_brain/configs/msvqvae.yaml",
            "miar": "projects/miar_brain/configs/miar.yaml",
            "varnet": "projects/miar_brain/configs/baselines/varnet_sr4.yaml",
            "recurrentvarnet": "projects/miar_brain/configs/baselines/recurrentvarnet_sr4.yaml",
            "unet": "projects/miar_brain/configs/baselines/unet_sr4.yaml",
        },
    ),
    "tiny": Setup(
        matrix=(64, 64),
        coils=4,
        coil_source="the data of the tiny configs tiny_msvqvae.yaml and tiny_miar.yaml, simulated with --coils 4",
        configs={
            "msvqvae": "direct_nextaccel/configs/tiny_msvqvae.yaml",
            "miar": "direct_nextaccel/configs/tiny_miar.yaml",
            "varnet": "direct_nextaccel/configs/tiny_sr_varnet.yaml",
            "recurrentvarnet": "direct_nextaccel/configs/tiny_sr_recurrentvarnet.yaml",
            "unet": "direct_nextaccel/configs/tiny_sr_unet.yaml",
        },
    ),
}
"""``--config`` -> sizes and configs."""


def superresolution_batch(
    setup: Setup, batch_size: int, device: torch.device, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random k-space and sensitivity estimate under the ``SuperResolution`` mask of :data:`FACTOR`.

    Returns ``masked_kspace`` (B, C, H, W, 2), ``sampling_mask`` bool (B, 1, H, W, 1) and ``sensitivity_map``
    (B, C, H, W, 2).
    """
    import torch

    from direct_nextaccel.benchmark.speed.models import random_batch
    from direct_nextaccel.masks.superresolution import superresolution_mask

    mask = torch.from_numpy(superresolution_mask(setup.matrix, FACTOR))  # H, W
    return {key: value.to(device) for key, value in random_batch(mask, setup.coils, batch_size, seed).items()}


def build_miar(
    miar_config: Path,
    msvqvae_config: Path,
    msvqvae_checkpoint: str | os.PathLike | None = None,
    miar_checkpoint: str | os.PathLike | None = None,
) -> Engine:
    """MIAR's engine with the MSVQ-VAE of ``msvqvae_config`` as its tokenizer and LR encoder start, as training has.

    The tokenizer is the engine's (:mod:`direct_nextaccel.miar`): ``MIAREngine`` loads it from
    ``model.tokenizer_checkpoint`` when it is built, here ``msvqvae_checkpoint`` (checked against its run's
    ``config.yaml`` when there is one), or without one the MSVQ-VAE built from ``msvqvae_config`` (random weights)
    saved to a temporary checkpoint with that config as its ``config.yaml``; the engine refuses a MIAR config that
    does not repeat the tokenizer's shape. The LR encoder starts from the
    tokenizer's encoder; a MIAR checkpoint then replaces the transformer's weights (it holds no tokenizer).
    """
    import tempfile

    import torch
    from omegaconf import OmegaConf

    with tempfile.TemporaryDirectory(prefix="speed_miar_") as temporary:
        folder = Path(temporary)
        if msvqvae_checkpoint is None:
            msvqvae_checkpoint = folder / "model_0.pt"
            torch.save({"model": build_engine(msvqvae_config).model.state_dict()}, msvqvae_checkpoint)
            (folder / "config.yaml").write_text(Path(msvqvae_config).read_text())
        config = OmegaConf.load(config_file(miar_config))
        config.model.tokenizer_checkpoint = str(Path(msvqvae_checkpoint).resolve())
        OmegaConf.save(config, folder / "miar.yaml")
        engine = build_engine(folder / "miar.yaml")
    engine.initialise_from_tokenizer()
    load_weights(miar_checkpoint, {"model": engine.model, **engine.models})
    return engine


def miar_runner(engine: Engine, mode: str, bf16: bool) -> Runner:
    """MIAR's inference as ``MIAREngine`` predicts: sensitivities, LR image, LR encoder, generation, decoding.

    The decoding settings other than ``mode`` and ``beam_k`` (``beam_alpha``) are the config's. The LR encoder runs
    inside ``MIAR.generate``; a forward hook on it ends its stage, so ``generate`` holds the context projection, the
    blocks' cross-attention keys/values and the scale-by-scale decoding. ``bf16`` runs ``generate`` (LR encoder
    included) under bf16 autocast; the tokenizer's decoder stays in float32.
    """
    import torch

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
        return decoded_magnitude(miar.tokenizer, tokens, factor, engine.working_grid(data), clock)

    return reconstruct


def miar_method(sources: Mapping[str, Source], modes: Sequence[str], bf16: bool) -> TimedMethod:
    """MIAR on its MSVQ-VAE, one row per decoding mode in ``modes``."""
    miar, msvqvae = sources["miar"], sources["msvqvae"]
    engine = build_miar(miar.config, msvqvae.config, msvqvae.checkpoint, miar.checkpoint)
    runners = {mode: miar_runner(engine, mode, bf16) for mode in modes}
    # The MSVQ-VAE is MIAR's frozen tokenizer submodule: its weights and parameters are counted in MIAR's.
    return TimedMethod([engine.model, *engine.models.values()], runners)


SUPERRESOLUTION = Task(
    name="superresolution",
    models=MODELS,
    labels=LABELS,
    ratios=RATIOS,
    networks={"miar": ("msvqvae", "miar")},
    setups=SETUPS,
    mask=MASK,
    transformer="MIAR",
    make_batch=superresolution_batch,
    build_generator=miar_method,
    paper_ms=PAPER_MS,
    paper_source=PAPER_SOURCE,
)

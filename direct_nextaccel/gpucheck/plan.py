"""What ``gpu-check`` trains: the tiers (sizes, run length, speed options), the engines and their derived configs.

Each engine's config is a shipped one with only the run changed: ``--tier paper`` reads the paper configs of the
checkout (``projects/fastmri_brain/configs``, ``projects/miar_brain/configs``: architectures and batch sizes as they
are), ``--tier tiny`` the tiny CPU configs that are package data. :func:`derive_config` sets the number of
iterations, one checkpoint and one validation at the last iteration, a log line per iteration (the iteration clock
of :mod:`~direct_nextaccel.gpucheck.children`), a short warm-up, and the checkpoints of the engines it builds on.
Optional pretrained weights that are not on the machine are replaced by the stand-ins the configs document (AQ-VAE:
``vit_random`` discriminator, no LPIPS term, ``var_init: none``), and each replacement is reported.

Imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ENGINES", "TIERS", "Engine", "Tier", "derive_config", "final_checkpoint"]

FASTMRI = "projects/fastmri_brain/configs"
MIAR = "projects/miar_brain/configs"


@dataclass(frozen=True)
class Tier:
    """Sizes and lengths of one ``--tier``.

    Attributes
    ----------
    name : str
        ``--tier`` value, also ``speed --config``.
    matrix : tuple[int, int]
        k-space (H, W) of both data sets.
    coils : int
        Coils of the reconstruction data (NextAccel's and the baselines').
    sr_coils : int
        Coils of the super-resolution data (MSVQ-VAE's and MIAR's).
    train_slices, val_slices : int
        Central slices per simulated volume: training (two contrasts) and validation/prediction (one).
    iterations : int
        Training iterations of every engine (DIRECT logs from iteration 5 on and checkpoints the last one).
    speed_batch_sizes : tuple[int, ...]
        ``speed --batch-sizes``.
    speed_repeats, speed_warmup : int
        ``speed --repeats`` and ``--warmup``.
    min_seconds : Mapping[str, float]
        Step kind (``train``, ``predict``, ``speed``) -> seconds of budget a step needs to start at all.
    """

    name: str
    matrix: tuple[int, int]
    coils: int
    sr_coils: int
    train_slices: int
    val_slices: int
    iterations: int
    speed_batch_sizes: tuple[int, ...]
    speed_repeats: int
    speed_warmup: int
    min_seconds: Mapping[str, float] = field(default_factory=dict)


TIERS: dict[str, Tier] = {
    # The paper configs' sizes: NextAccel and its baselines at 256 x 256 with 16 coils (aqvae.yaml's image_size, the
    # `speed --config paper` batch), MIAR at 256 x 256 with one coil (projects/miar_brain simulates --coils 1).
    "paper": Tier(
        "paper",
        matrix=(256, 256),
        coils=16,
        sr_coils=1,
        train_slices=8,
        val_slices=2,
        iterations=10,
        speed_batch_sizes=(1, 8),
        speed_repeats=5,
        speed_warmup=2,
        min_seconds={"train": 30.0, "predict": 15.0, "speed": 40.0},
    ),
    # The tiny configs' data: 64 x 64, 4 coils for both tasks.
    "tiny": Tier(
        "tiny",
        matrix=(64, 64),
        coils=4,
        sr_coils=4,
        train_slices=4,
        val_slices=2,
        iterations=8,
        speed_batch_sizes=(2,),
        speed_repeats=2,
        speed_warmup=1,
    ),
}


@dataclass(frozen=True)
class Engine:
    """One engine the check trains.

    Attributes
    ----------
    name : str
        Step and run folder name.
    label : str
        Name in the summary.
    task : str
        ``reconstruction`` or ``superresolution``: which data it trains on.
    paper : str
        Paper config, relative to the checkout.
    tiny : str
        Shipped tiny config name.
    checkpoints : Mapping[str, str]
        ``model.<key>`` -> engine whose final checkpoint it reads.
    start_from : str, optional
        Engine whose final checkpoint initialises it (``training.model_checkpoint``).
    predict_with : str, optional
        Engine whose config ``direct predict`` uses with this engine's checkpoint (a distilled student is used as its
        base model); None: its own.
    predicts : bool
        Whether the check runs ``direct predict`` with it (the privileged teacher needs the fully sampled image, so it
        does not reconstruct from R = 32 alone; the distilled student stands for it).
    """

    name: str
    label: str
    task: str
    paper: str
    tiny: str
    checkpoints: Mapping[str, str] = field(default_factory=dict)
    start_from: str | None = None
    predict_with: str | None = None
    predicts: bool = True

    @property
    def upstream(self) -> tuple[str, ...]:
        """Engines whose checkpoints this one needs."""
        return tuple(dict.fromkeys([*self.checkpoints.values(), *([self.start_from] if self.start_from else [])]))


ENGINES: tuple[Engine, ...] = (
    Engine("aqvae", "AQ-VAE", "reconstruction", f"{FASTMRI}/aqvae.yaml", "tiny_aqvae.yaml"),
    Engine(
        "nextaccel",
        "NextAccel",
        "reconstruction",
        f"{FASTMRI}/nextaccel_cartesian_y.yaml",
        "tiny_nextaccel.yaml",
        {"tokenizer_checkpoint": "aqvae"},
    ),
    Engine(
        "teacher",
        "NextAccel teacher",
        "reconstruction",
        f"{FASTMRI}/teacher_cartesian_y.yaml",
        "tiny_teacher.yaml",
        {"tokenizer_checkpoint": "aqvae"},
        predicts=False,
    ),
    Engine(
        "distill",
        "NextAccel distilled",
        "reconstruction",
        f"{FASTMRI}/distill_cartesian_y.yaml",
        "tiny_distill.yaml",
        {"tokenizer_checkpoint": "aqvae", "teacher_checkpoint": "teacher"},
        start_from="nextaccel",
        predict_with="nextaccel",
    ),
    Engine(
        "varnet",
        "E2EVarNet",
        "reconstruction",
        f"{FASTMRI}/baselines/varnet_cartesian_y.yaml",
        "tiny_varnet_cartesian_y.yaml",
    ),
    Engine(
        "recurrentvarnet",
        "RecurrentVarNet",
        "reconstruction",
        f"{FASTMRI}/baselines/recurrentvarnet_cartesian_y.yaml",
        "tiny_recurrentvarnet_cartesian_y.yaml",
    ),
    Engine("msvqvae", "MSVQ-VAE", "superresolution", f"{MIAR}/msvqvae.yaml", "tiny_msvqvae.yaml"),
    Engine(
        "miar", "MIAR", "superresolution", f"{MIAR}/miar.yaml", "tiny_miar.yaml", {"tokenizer_checkpoint": "msvqvae"}
    ),
)

ENGINE_BY_NAME = {engine.name: engine for engine in ENGINES}


def final_checkpoint(runs: Path, engine: str, iterations: int) -> Path:
    """DIRECT's last checkpoint of engine ``engine``'s run: ``model_<last iteration index>.pt``."""
    return runs / engine / f"model_{iterations - 1}.pt"


def config_source(engine: Engine, tier: Tier, repo_root: Path) -> Path:
    """The file the engine's config is derived from (paper: the checkout's; tiny: the package's)."""
    if tier.name == "paper":
        return repo_root / engine.paper
    from direct_nextaccel import resources

    return resources.config_path(engine.tiny)


def _stand_ins(config) -> list[str]:
    """Replace the AQ-VAE's missing optional weights by the stand-ins its config documents; say which were used."""
    from direct_nextaccel.weights import find_weight

    notes = []
    model = config.model
    if model.get("discriminator_backbone") == "biomedclip" and find_weight("biomedclip") is None:
        model.discriminator_backbone = "vit_random"  # the same ViT-B/16, random and frozen: the same compute
        notes.append("discriminator vit_random (no BiomedCLIP weights)")
    losses = config.training.loss.losses
    if any(loss.function == "lpips_loss" for loss in losses) and find_weight("alexnet") is None:
        config.training.loss.losses = [loss for loss in losses if loss.function != "lpips_loss"]
        notes.append("lpips_loss dropped (no AlexNet weights)")
    if model.get("var_init") == "var" and find_weight("var_vqvae") is None:
        model.var_init = "none"
        notes.append("var_init none (no VAR VQ-VAE weights)")
    return notes


def derive_config(
    engine: Engine, tier: Tier, runs: Path, repo_root: Path, iterations: int | None = None
) -> tuple[dict, list[str]]:
    """The config ``gpu-check`` trains ``engine`` with, and the stand-ins used (one phrase each).

    Raises
    ------
    FileNotFoundError
        The source config is missing (a paper config outside a checkout).
    """
    from omegaconf import OmegaConf

    source = config_source(engine, tier, repo_root)
    if not Path(source).is_file():
        raise FileNotFoundError(f"{engine.label}: config {source} not found (--tier paper needs a checkout)")
    config = OmegaConf.load(source)
    iterations = iterations or tier.iterations
    training = config.training
    training.num_iterations = iterations
    training.checkpointer.checkpoint_steps = iterations  # with DIRECT's `iter >= 5` rule: the last iteration only
    training.validation_steps = iterations  # likewise: one validation, at the last iteration
    training.lr_warmup_iter = min(int(training.get("lr_warmup_iter", 0) or 0), 2)
    config.logging.log_interval = 1  # one line per iteration: the iteration clock
    for key, dependency in engine.checkpoints.items():
        config.model[key] = str(final_checkpoint(runs, dependency, iterations))
    if engine.start_from:
        training.model_checkpoint = str(final_checkpoint(runs, engine.start_from, iterations))
    notes = _stand_ins(config)
    return OmegaConf.to_container(config), notes

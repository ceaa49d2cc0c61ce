"""Training stages at tiny size: which config each stage trains, how a stage's config is derived, training one stage.

A :class:`Stage` names a shipped config (package data, :mod:`direct_nextaccel.resources`), its iteration budget and
the earlier stages whose checkpoints it needs. :func:`stage_config` fills in the mask family, the budget and those
checkpoints; :func:`train_stage` runs DIRECT's own ``direct train`` on the result, or reuses a finished run when its
digest is unchanged. The digest (:func:`stage_digest`) covers the stage's config, the content of the training and
validation data (:func:`data_digest`) and the digests of the stages it builds on, so a run trained on other data, or
on an earlier stage that has since been retrained, is never reused. ``direct-nextaccel demo`` is the command line on
top of this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from direct_nextaccel import resources
from direct_nextaccel.core.direct_runs import device_options, direct_command, failure_cause, run_logged

logger = logging.getLogger(__name__)


class StageError(RuntimeError):
    """A stage cannot run or its ``direct train`` failed; the message is one line naming the stage and the cause."""


@dataclass(frozen=True)
class Stage:
    """One training stage.

    Attributes
    ----------
    name : str
        Folder and benchmark row name.
    config : str
        Shipped tiny config file name (``direct_nextaccel/configs/``; ``{family}`` is filled in).
    iterations : int or None
        Training iterations at budget 1; None for a baseline, which trains as many iterations as the whole chain of
        the other stages (:func:`stage_iterations`), so every benchmarked method sees the same training slices.
    checkpoints : dict[str, str]
        ``model.<key>`` -> earlier stage whose final checkpoint it needs.
    benchmarked : bool
        Whether the benchmark reconstructs with it (a tokenizer or teacher alone does not reconstruct from R = 32).
    model_overrides : Callable, optional
        Family -> extra ``model`` keys.
    start_from : str, optional
        Earlier stage whose final checkpoint initialises this one (``training.model_checkpoint``).
    predict_with : str, optional
        Earlier stage whose config reconstructs with this stage's checkpoint (a distilled student is used exactly
        like its base model).
    variants : dict[str, dict], optional
        Benchmark rows ``<name>-<variant>`` that predict with the same checkpoint and these ``model`` keys changed
        (decoding modes); None benchmarks the training config as it is.
    bound : bool
        A tokenizer whose ceiling rows (``direct-nextaccel benchmark --bound``) the benchmark adds: what the chain
        built on it could reach at best.
    """

    name: str
    config: str
    iterations: int | None
    checkpoints: dict[str, str] = field(default_factory=dict)
    benchmarked: bool = True
    model_overrides: Callable[[str], dict] | None = None
    start_from: str | None = None
    predict_with: str | None = None
    variants: dict[str, dict] | None = None
    bound: bool = False

    def config_name(self, family: str | None) -> str:
        """The shipped config file of this stage for ``family`` (None: the configs' own mask)."""
        return self.config.format(family=family or "cartesian_y")

    @property
    def upstream(self) -> tuple[str, ...]:
        """Earlier stages whose checkpoints this one reads."""
        return tuple(dict.fromkeys([*self.checkpoints.values(), *([self.start_from] if self.start_from else [])]))


#: Training batch size of every stage: with the baselines' iteration count equal to the chain's, the budget in
#: training slices (iterations x batch) is the same for every method in the table.
BATCH_SIZE = 2

#: Iterations at budget 1 (the demo's default). NextAccel cannot beat its tokenizer's bound, and on the demo set's
#: training subjects the AQ-VAE was still far from converged after 120 iterations (NextAccel then equalled the bound,
#: up to 1 dB short of 3 dB above zero-filled on a held-out training subject), so the tokenizer gets most of the budget;
#: teacher and distillation, which change little at this size, get the least. The baselines train 690 iterations each.
STAGES: tuple[Stage, ...] = (
    Stage("E2EVarNet", "tiny_varnet_{family}.yaml", None),
    Stage("RecurrentVarNet", "tiny_recurrentvarnet_cartesian_y.yaml", None),
    Stage("AQ-VAE", "tiny_aqvae.yaml", 360, benchmarked=False, bound=True),
    Stage(
        "NextAccel",
        "tiny_nextaccel.yaml",
        240,
        {"tokenizer_checkpoint": "AQ-VAE"},
        model_overrides=lambda family: {"mask_family": family},
    ),
    Stage(
        "Teacher",
        "tiny_teacher.yaml",
        60,
        {"tokenizer_checkpoint": "AQ-VAE"},
        benchmarked=False,
        model_overrides=lambda family: {"mask_family": family},
    ),
    Stage(
        "NextAccel-distilled",
        "tiny_distill.yaml",
        30,
        {"tokenizer_checkpoint": "AQ-VAE", "teacher_checkpoint": "Teacher"},
        model_overrides=lambda family: {"mask_family": family},
        start_from="NextAccel",
        predict_with="NextAccel",
    ),
)

#: MIAR's 4 x 4 super-resolution (the SuperResolution mask of every config) against DIRECT's baselines on the same
#: task; the MIAR chain is tokenizer + transformer, decoded with argmax and beam search k = 1, 2, 3.
SR_STAGES: tuple[Stage, ...] = (
    Stage("E2EVarNet", "tiny_sr_varnet.yaml", None),
    Stage("RecurrentVarNet", "tiny_sr_recurrentvarnet.yaml", None),
    Stage("U-Net", "tiny_sr_unet.yaml", None),
    Stage("MSVQ-VAE", "tiny_msvqvae.yaml", 120, benchmarked=False, bound=True),
    Stage(
        "MIAR",
        "tiny_miar.yaml",
        120,
        {"tokenizer_checkpoint": "MSVQ-VAE"},
        variants={
            "argmax": {"decoding": "argmax"},
            "beam1": {"decoding": "beam", "beam_k": 1},
            "beam2": {"decoding": "beam", "beam_k": 2},
            "beam3": {"decoding": "beam", "beam_k": 3},
        },
    ),
)

TASKS: dict[str, tuple[Stage, ...]] = {"reconstruction": STAGES, "superresolution": SR_STAGES}


def check_stages(stages: tuple[Stage, ...], family: str | None) -> None:
    """Raise :class:`StageError` unless every stage's config is shipped and every earlier stage it needs is listed
    before it: found before anything trains, never skipped."""
    seen: set[str] = set()
    for stage in stages:
        try:
            resources.config_file(stage.config_name(family))
        except FileNotFoundError as error:
            raise StageError(f"stage {stage.name}: {error}") from error
        missing = [name for name in stage.upstream if name not in seen]
        if missing:
            raise StageError(f"stage {stage.name} needs {', '.join(missing)}, which does not train before it")
        seen.add(stage.name)


def stage_config(
    stage: Stage, family: str | None, budget: float, runs: Path, stages: tuple[Stage, ...] = STAGES
) -> dict:
    """The tiny config of ``stage`` (one of ``stages``) with the family, budget and earlier stages' checkpoints.

    ``family`` sets the masking of the R = 32 reconstruction stages; with None (super-resolution) the configs keep
    their own mask.
    """
    from omegaconf import OmegaConf

    from direct_nextaccel.masks.nested import MASK_NAMES

    config = resources.load_config(stage.config_name(family))
    iterations = stage_iterations(stage.name, budget, stages)
    config.training.batch_size = BATCH_SIZE
    if "lr_schedule" not in config.model:  # DIRECT's step schedule keeps its shape (its halvings per run)
        step = config.training.lr_step_size * iterations / config.training.num_iterations
        config.training.lr_step_size = max(1, round(step))
    config.training.num_iterations = iterations
    config.training.checkpointer.checkpoint_steps = iterations
    config.training.validation_steps = iterations
    config.logging.log_interval = max(1, iterations // 20)
    datasets = [*config.training.datasets, *config.validation.datasets, config.inference.dataset]
    if family is not None:
        for dataset in datasets:
            dataset.transforms.masking.name = MASK_NAMES[family]
    if stage.model_overrides:
        for key, value in stage.model_overrides(family).items():
            config.model[key] = value
    for key, dependency in stage.checkpoints.items():
        config.model[key] = str(final_checkpoint(runs / dependency, stage_iterations(dependency, budget, stages)))
    if stage.start_from:
        start = final_checkpoint(runs / stage.start_from, stage_iterations(stage.start_from, budget, stages))
        config.training.model_checkpoint = str(start)
    return OmegaConf.to_container(config)


def stage_iterations(name: str, budget: float, stages: tuple[Stage, ...] = STAGES) -> int:
    """Training iterations of stage ``name`` at ``budget`` (a baseline's: the sum over the chain of ``stages``)."""
    stage = next(s for s in stages if s.name == name)
    if stage.iterations is None:
        return sum(stage_iterations(s.name, budget, stages) for s in stages if s.iterations is not None)
    return max(6, round(stage.iterations * budget))


def final_checkpoint(run_dir: Path, iterations: int) -> Path:
    """DIRECT names the last checkpoint after the last iteration index."""
    return run_dir / f"model_{iterations - 1}.pt"


def data_digest(data: Mapping[str, Path]) -> str:
    """SHA-256 of the data a stage trains and validates on: per split, every ``*.h5`` file DIRECT's fastMRI dataset
    reads there (its name and its bytes).

    Where the data sits does not enter (the same files in another folder give the same digest), so a data set shipped
    with the package or written into the demo folder is identified by its content alone.
    """
    digest = hashlib.sha256()
    for split in sorted(data):
        for path in sorted(Path(data[split]).glob("*.h5")):
            content = hashlib.sha256()
            with path.open("rb") as stream:
                while chunk := stream.read(1 << 20):
                    content.update(chunk)
            digest.update(f"{split}/{path.name}:{content.hexdigest()}\n".encode())
    return digest.hexdigest()


def stage_digest(config: Mapping, data: str, upstream: Mapping[str, str] | None = None) -> str:
    """SHA-256 identifying a stage's run: its config, the :func:`data_digest` of its data and the digests of the
    earlier stages whose checkpoints it reads (stage name -> digest)."""
    key = {"config": config, "data": data, "upstream": dict(sorted((upstream or {}).items()))}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


MARKER = "demo_stage.json"
"""File in a stage's run folder recording the digest of the finished run (written only after it finished)."""


def finished_run(run_dir: Path, checkpoint: Path, digest: str) -> bool:
    """Whether ``run_dir`` holds a finished run of exactly this ``digest`` with its final ``checkpoint``."""
    marker = run_dir / MARKER
    if not (checkpoint.is_file() and marker.is_file()):
        return False
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and recorded.get("digest") == digest


def train_stage(
    stage: Stage, config: dict, data: Mapping[str, Path], runs: Path, device: str, *, digest: str | None = None
) -> Path:
    """Run ``direct train`` for one stage unless a finished run of the same digest exists; return its final checkpoint.

    ``digest`` defaults to :func:`stage_digest` of ``config`` and ``data`` (without earlier stages: pass the full one
    when the stage reads their checkpoints). A run folder holding another digest (other data, config or earlier
    stages) is trained again.

    Raises
    ------
    StageError
        ``direct train`` failed; the message names the stage, the cause (the last exception line of its output) and
        the log.
    """
    from omegaconf import OmegaConf
    from tqdm import tqdm

    if digest is None:
        digest = stage_digest(config, data_digest(data))
    run_dir = runs / stage.name
    iterations = config["training"]["num_iterations"]
    checkpoint = final_checkpoint(run_dir, iterations)
    marker = run_dir / MARKER
    if finished_run(run_dir, checkpoint, digest):
        logger.info("%s: reusing %s", stage.name, checkpoint)
        return checkpoint
    if marker.is_file():
        logger.info(
            "%s: the run in %s is of another config, data or earlier stage; training again", stage.name, run_dir
        )
        marker.unlink()  # an interrupted retraining must not leave the old digest next to a new checkpoint
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "demo_config.yaml"
    OmegaConf.save(OmegaConf.create(config), config_path)
    command = direct_command("train", runs, "--cfg", config_path, "--name", stage.name)
    command += ["--training-root", str(data["train"]), "--validation-root", str(data["val"]), *device_options(device)]
    log_path = run_dir / "demo_train.log"
    iteration = re.compile(r"iter: (\d+)")
    with tqdm(total=iterations, desc=f"train {stage.name}", unit="it") as bar:

        def progress(line: str) -> None:
            match = iteration.search(line)
            if match and int(match.group(1)) + 1 > bar.n:
                bar.update(int(match.group(1)) + 1 - bar.n)

        status = run_logged(command, log_path, progress)
    if status != 0 or not checkpoint.exists():
        cause = failure_cause(log_path) or f"exit status {status}, no {checkpoint.name}"
        raise StageError(f"direct train of {stage.name} failed: {cause} (log: {log_path})")
    marker.write_text(json.dumps({"digest": digest, "checkpoint": str(checkpoint)}))
    return checkpoint


def write_variant(config_path: Path, variant: str, overrides: dict) -> Path:
    """Write ``config_path`` with ``model`` keys ``overrides`` next to it as ``demo_predict_<variant>.yaml``."""
    from omegaconf import OmegaConf

    config = OmegaConf.load(config_path)
    for key, value in overrides.items():
        config.model[key] = value
    path = config_path.with_name(f"demo_predict_{variant}.yaml")
    OmegaConf.save(config, path)
    return path

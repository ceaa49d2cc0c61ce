"""``direct-nextaccel demo``: every stage at tiny size on one CPU, then the benchmark table and figure.

Stages run DIRECT's own ``direct train`` on the tiny configs in ``direct_nextaccel/configs/`` (copied into the demo
folder with the mask family, iteration budget and earlier stages' checkpoints filled in), then
``direct-nextaccel benchmark`` reconstructs the held-out data with every trained model. A rerun reuses every stage
whose final checkpoint and configuration are unchanged, so an interrupted demo resumes where it stopped.
``--task superresolution`` runs MIAR's chain (MSVQ-VAE, MIAR decoded with argmax and beam k = 1, 2, 3) against
DIRECT's baselines on the 4 x 4 super-resolution task instead. In both tasks every baseline trains on as many slices
as the whole chain.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_CONFIGS = Path(__file__).resolve().parent / "configs"
FAMILY_CHOICES = ("cartesian_y", "cartesian_x", "radial", "gaussian2d")
PHANTOM_CONTRASTS = (("T1", "AXT1"), ("T2", "AXT2"))  # fastMRI brain has no proton-density acquisition name


@dataclass(frozen=True)
class Stage:
    """One training stage of the demo.

    Attributes
    ----------
    name : str
        Folder and benchmark row name.
    config : str
        Tiny config file name under ``direct_nextaccel/configs/`` (``{family}`` is filled in).
    iterations : int or None
        Training iterations at ``--budget 1``; None for a baseline, which trains as many iterations as the whole
        NextAccel chain (:func:`stage_iterations`), so every benchmarked method sees the same training slices.
    checkpoints : dict[str, str]
        ``model.<key>`` -> earlier stage whose final checkpoint it needs.
    benchmarked : bool
        Whether the benchmark reconstructs with it (a tokenizer or teacher alone does not reconstruct from R = 32).
    engine : str, optional
        ``module:Class`` that must be importable for the stage to run (stages of models still being built are
        skipped with a message, as the issue asks).
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
    """

    name: str
    config: str
    iterations: int | None
    checkpoints: dict[str, str] = field(default_factory=dict)
    benchmarked: bool = True
    engine: str | None = None
    model_overrides: Callable[[str], dict] | None = None
    start_from: str | None = None
    predict_with: str | None = None
    variants: dict[str, dict] | None = None


#: Training batch size of every stage: with the baselines' iteration count equal to the chain's, the budget in
#: training slices (iterations x batch) is the same for every method in the table.
BATCH_SIZE = 2

STAGES: tuple[Stage, ...] = (
    Stage("E2EVarNet", "tiny_varnet_{family}.yaml", None),
    Stage("RecurrentVarNet", "tiny_recurrentvarnet_cartesian_y.yaml", None),
    Stage("AQ-VAE", "tiny_aqvae.yaml", 120, benchmarked=False),
    Stage(
        "NextAccel",
        "tiny_nextaccel.yaml",
        120,
        {"tokenizer_checkpoint": "AQ-VAE"},
        engine="direct_nextaccel.nextaccel.nextaccel_engine:NextAccelEngine",
        model_overrides=lambda family: {"mask_family": family},
    ),
    Stage(
        "Teacher",
        "tiny_teacher.yaml",
        120,
        {"tokenizer_checkpoint": "AQ-VAE"},
        benchmarked=False,
        engine="direct_nextaccel.nextaccel.nextaccel_engine:TeacherEngine",
        model_overrides=lambda family: {"mask_family": family},
    ),
    Stage(
        "NextAccel-distilled",
        "tiny_distill.yaml",
        60,
        {"tokenizer_checkpoint": "AQ-VAE", "teacher_checkpoint": "Teacher"},
        engine="direct_nextaccel.nextaccel.nextaccel_engine:DistillationEngine",
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
    Stage("MSVQ-VAE", "tiny_msvqvae.yaml", 120, benchmarked=False),
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


def stage_available(stage: Stage) -> str | None:
    """None when the stage can run, else why not (its config or engine does not exist yet)."""
    if not (REPO_CONFIGS / stage.config.format(family="cartesian_y")).exists():
        return f"no config {stage.config}"
    if stage.engine:
        module, name = stage.engine.split(":")
        try:
            if not hasattr(__import__(module, fromlist=[name]), name):
                return f"no engine {name} yet"
        except ImportError as error:
            return f"engine module {module} does not import ({error})"
    return None


def write_phantoms(output: Path, *, slices: int, size: int, coils: int, seed: int) -> list[Path]:
    """DIRECT's Shepp-Logan phantoms (T1, T2) as fastMRI-layout files: the demo's default data, nothing downloaded.

    Returns
    -------
    list of Path
        The files written.
    """
    import numpy as np
    from direct.data.datasets import SheppLoganT1Dataset, SheppLoganT2Dataset

    from direct_nextaccel.data.fastmri_h5 import fastmri_filename, write_fastmri_h5

    written = []
    for (contrast, acquisition), dataset_class in zip(
        PHANTOM_CONTRASTS, (SheppLoganT1Dataset, SheppLoganT2Dataset), strict=True
    ):
        dataset = dataset_class(
            shape=(size, size, slices), num_coils=coils, seed=seed, transform=None, text_description=contrast
        )
        kspace = np.stack([dataset[index]["kspace"] for index in range(len(dataset))]).astype(np.complex64)
        path = output / fastmri_filename(acquisition, f"900_{seed:04d}")
        write_fastmri_h5(path, kspace, acquisition, patient_id=f"shepp_logan_{contrast}_{seed}", overwrite=True)
        written.append(path)
    return written


def stage_config(
    stage: Stage, family: str | None, budget: float, runs: Path, stages: tuple[Stage, ...] = STAGES
) -> dict:
    """The tiny config of ``stage`` (one of ``stages``) with the demo's family, budget and earlier checkpoints.

    ``family`` sets the masking of the R = 32 reconstruction stages; with None (super-resolution) the configs keep
    their own mask.
    """
    from omegaconf import OmegaConf

    from direct_nextaccel.masks.nested import MASK_NAMES

    config = OmegaConf.load(REPO_CONFIGS / stage.config.format(family=family))
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


def train_stage(stage: Stage, config: dict, data: dict[str, Path], runs: Path, device: str) -> Path:
    """Run ``direct train`` for one stage unless an identical finished run exists; return its final checkpoint."""
    from omegaconf import OmegaConf
    from tqdm import tqdm

    run_dir = runs / stage.name
    iterations = config["training"]["num_iterations"]
    checkpoint = final_checkpoint(run_dir, iterations)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    marker = run_dir / "demo_stage.json"
    if checkpoint.exists() and marker.exists() and json.loads(marker.read_text()).get("config") == digest:
        logger.info("%s: reusing %s", stage.name, checkpoint)
        return checkpoint
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "demo_config.yaml"
    OmegaConf.save(OmegaConf.create(config), config_path)
    command = [
        str(Path(sys.executable).parent / "direct"),
        "train",
        str(runs),
        "--cfg",
        str(config_path),
        "--name",
        stage.name,
        "--training-root",
        str(data["train"]),
        "--validation-root",
        str(data["val"]),
        "--device",
        device,
        "--num-gpus",
        "0" if device == "cpu" else "1",
        "--num-workers",
        "0",
    ]
    log_path = run_dir / "demo_train.log"
    iteration = re.compile(r"iter: (\d+)")
    with log_path.open("w") as log, tqdm(total=iterations, desc=f"train {stage.name}", unit="it") as bar:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            log.write(line)
            match = iteration.search(line)
            if match and int(match.group(1)) + 1 > bar.n:
                bar.update(int(match.group(1)) + 1 - bar.n)
        process.wait()
    if process.returncode != 0 or not checkpoint.exists():
        raise RuntimeError(f"direct train of {stage.name} failed (exit {process.returncode}); see {log_path}")
    marker.write_text(json.dumps({"config": digest, "checkpoint": str(checkpoint)}))
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``direct-nextaccel demo``."""
    parser.add_argument("--output", type=Path, default=Path("demo"), help="demo folder (reused when rerun)")
    parser.add_argument(
        "--data",
        type=Path,
        help="fastMRI-layout data with train/ and val/ subfolders (default: DIRECT's Shepp-Logan phantoms)",
    )
    parser.add_argument(
        "--task",
        choices=tuple(TASKS),
        default="reconstruction",
        help="reconstruction: NextAccel's stages at R = 32; superresolution: MIAR's 4 x 4 k-space-centre task",
    )
    parser.add_argument(
        "--family", choices=FAMILY_CHOICES, default="cartesian_y", help="mask family at R = 32 (reconstruction)"
    )
    parser.add_argument("--budget", type=float, default=1.0, help="scales every stage's training iterations")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")


def run(args: argparse.Namespace) -> int:
    """Run the stages that exist, then the benchmark; print the table and the figure's path."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.budget <= 0:
        print(f"direct-nextaccel demo: --budget {args.budget} must be positive", file=sys.stderr)
        return 2
    output = args.output.resolve()
    if args.data is None:
        data = {"train": output / "data" / "train", "val": output / "data" / "val"}
        for split, seed in (("train", 1), ("val", 2)):
            if not any(data[split].glob("*.h5")):
                data[split].mkdir(parents=True, exist_ok=True)
                write_phantoms(data[split], slices=8 if split == "train" else 4, size=64, coils=4, seed=seed)
    else:
        data = {"train": args.data / "train", "val": args.data / "val"}
        for split, folder in data.items():
            if not any(folder.glob("*.h5")):
                print(f"direct-nextaccel demo: no {split} .h5 files in {folder}", file=sys.stderr)
                return 2

    runs = output / "runs"
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    methods = []
    from direct_nextaccel.benchmark.quality import FigureRequest, Method, run_benchmark

    stages = TASKS[args.task]
    family = args.family if args.task == "reconstruction" else None  # super-resolution: the configs' own mask
    for stage in stages:
        missing = stage_available(stage)
        if missing:
            print(f"{stage.name}: skipped ({missing})")
            continue
        config = stage_config(stage, family, args.budget, runs, stages)
        checkpoint = train_stage(stage, config, data, runs, args.device)
        if not stage.benchmarked:
            continue
        config_path = runs / (stage.predict_with or stage.name) / "demo_config.yaml"
        if stage.variants is None:
            methods.append(Method(stage.name, family, run=f"{config_path}:{checkpoint}"))
        for variant, overrides in (stage.variants or {}).items():
            variant_path = write_variant(config_path, variant, overrides)
            methods.append(Method(f"{stage.name}-{variant}", family, run=f"{variant_path}:{checkpoint}"))

    result = run_benchmark(
        data["val"], methods, output / "benchmark", family=args.family, device=args.device, figure=FigureRequest()
    )
    print((output / "benchmark" / "benchmark.md").read_text())
    for family, figure in result.figures.items():
        print(f"figure ({family}): {figure}")
    return 1 if result.failed else 0

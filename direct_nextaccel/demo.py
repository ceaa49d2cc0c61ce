"""``direct-nextaccel demo``: every stage at tiny size on one CPU, then the benchmark table and figure.

The command line over :mod:`direct_nextaccel.pipeline`: the stages (DIRECT's own ``direct train`` on the tiny configs
shipped in ``direct_nextaccel/configs/``, with the mask family, iteration budget and earlier stages' checkpoints filled
in), then ``direct-nextaccel benchmark`` reconstructs the held-out data with every trained model and scores the
tokenizer's bound beside them. The default data is the demo set shipped in the package
(:mod:`direct_nextaccel.demo_set`: brain slices of the training and validation subjects, k-space simulated from
magnitude images); ``--phantoms`` uses DIRECT's Shepp-Logan phantoms, ``--data`` any fastMRI-layout folder. A rerun
reuses every stage whose config, data and earlier stages are unchanged, so an interrupted demo resumes where it stopped;
data other than what the folder's models were trained on is refused (``--retrain`` replaces them). ``--task
superresolution`` runs MIAR's chain (MSVQ-VAE, MIAR decoded with argmax and beam k = 1, 2, 3) against DIRECT's baselines
on the 4 x 4 super-resolution task instead. In both tasks every baseline trains on as many slices as the whole chain. A
user error (an option's value, a folder that cannot be used, a demo-set file missing or altered, a failed stage) is one
line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

from direct_nextaccel import demo_set, pipeline

logger = logging.getLogger(__name__)

FAMILY_CHOICES = ("cartesian_y", "cartesian_x", "radial", "gaussian2d")
PHANTOM_CONTRASTS = (("T1", "AXT1"), ("T2", "AXT2"))  # fastMRI brain has no proton-density acquisition name


class DemoError(ValueError):
    """A user's option or folder the demo cannot use; the message is one line naming it."""


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``direct-nextaccel demo``."""
    parser.add_argument("--output", type=Path, default=Path("demo"), help="demo folder (reused when rerun)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--data",
        type=Path,
        help="fastMRI-layout data with train/ and val/ subfolders (default: the brain slices shipped with the package, "
        "simulated to k-space)",
    )
    source.add_argument(
        "--phantoms",
        action="store_true",
        help="DIRECT's Shepp-Logan T1/T2 phantoms instead of the shipped brain slices",
    )
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="train again, replacing the models of an --output that were trained on other data (otherwise refused)",
    )
    parser.add_argument(
        "--task",
        choices=tuple(pipeline.TASKS),
        default="reconstruction",
        help="reconstruction: NextAccel's stages at R = 32; superresolution: MIAR's 4 x 4 k-space-centre task",
    )
    parser.add_argument(
        "--family", choices=FAMILY_CHOICES, default="cartesian_y", help="mask family at R = 32 (reconstruction)"
    )
    parser.add_argument(
        "--budget", type=float, default=1.0, help="scales every stage's training iterations (0 < BUDGET <= 1000)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu (default) or cuda")


MAX_BUDGET = 1000.0
"""The largest ``--budget``: 1000 times the default demo's training (about two days on a 2-core CPU)."""


def check_budget(budget: float) -> None:
    """Refuse a budget that is not a positive finite number (nan and inf parse as floats) or above
    :data:`MAX_BUDGET`."""
    if not (math.isfinite(budget) and budget > 0):
        raise DemoError(f"--budget {budget} must be a positive finite number")
    if budget > MAX_BUDGET:
        raise DemoError(f"--budget {budget:g} is more than {MAX_BUDGET:g} times the demo's training: too long to run")


def check_device(device: str) -> None:
    """Refuse CUDA on a machine without a usable GPU before anything trains (``direct train`` would fail later, with
    the cause only in its log)."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise DemoError("--device cuda: torch.cuda.is_available() is False (no usable GPU here); use --device cpu")


def prepare_output(output: Path) -> Path:
    """Create the demo folder (and its parents) and check that files can be written in it; return it resolved."""
    output = output.expanduser().resolve()
    if output.exists() and not output.is_dir():
        raise DemoError(f"--output {output} is a file, not a folder")
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise DemoError(f"--output {output} cannot be used as the demo folder: {reason}") from error
    return output


def data_folders(data: Path) -> dict[str, Path]:
    """The ``train`` and ``val`` folders of ``--data``; each must hold fastMRI-layout ``.h5`` files, and every
    ``*.h5`` entry there (DIRECT reads them all) must be a file. A file DIRECT cannot read fails the first stage, in
    one line naming the cause and the log."""
    folders = {"train": data / "train", "val": data / "val"}
    for split, folder in folders.items():
        entries = sorted(folder.glob("*.h5"))
        if not entries:
            raise DemoError(f"no {split} .h5 files in {folder}")
        if not_files := [str(path) for path in entries if not path.is_file()]:
            raise DemoError(f"--data: {not_files[0]} is not a file (DIRECT reads every *.h5 in {folder})")
    return folders


def phantom_data(output: Path) -> dict[str, Path]:
    """``--phantoms``: DIRECT's Shepp-Logan phantoms, written into ``output/phantoms`` once (a rerun reuses them)."""
    folders = {"train": output / "phantoms" / "train", "val": output / "phantoms" / "val"}
    for split, seed in (("train", 1), ("val", 2)):
        if not any(folders[split].glob("*.h5")):
            folders[split].mkdir(parents=True, exist_ok=True)
            write_phantoms(folders[split], slices=8 if split == "train" else 4, size=64, coils=4, seed=seed)
    return folders


def demo_set_data(output: Path) -> dict[str, Path]:
    """The default data: the shipped demo set (checked against its manifest) simulated into ``output/data``.

    A rerun finds the same simulation there (it is deterministic); a ``data`` folder holding anything else (an
    earlier version's phantoms, edited files) is refused, naming it, rather than trained on or replaced.
    """
    data = output / "data"
    staging = Path(tempfile.mkdtemp(prefix=".data-", dir=output))
    try:
        fresh = demo_set.simulate_demo_set(staging)
        existing = {split: data / split for split in fresh}
        if not any(any(folder.glob("*.h5")) for folder in existing.values()):
            data.mkdir(exist_ok=True)
            for split, folder in fresh.items():
                if existing[split].exists():
                    existing[split].rmdir()  # empty of .h5 files; anything else in it is refused by rmdir
                folder.rename(existing[split])
        elif pipeline.data_digest(existing) != pipeline.data_digest(fresh):
            raise DemoError(
                f"{data} holds files that are not the shipped demo set's simulation: use a new --output "
                "(or --data to train on them)"
            )
    except OSError as error:
        raise DemoError(f"{data}: cannot write the demo set there: {error.strerror or error}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return existing


DEMO_SET_DATA = "the shipped demo set (brain slices, k-space simulated from magnitude images)"

TRAINED_ON = "demo_data.json"
"""File in the demo folder recording which data its models were trained on (digest and a description)."""


def check_trained_on(output: Path, digest: str, description: str, *, retrain: bool) -> None:
    """Refuse data other than what the models in ``output`` were trained on, unless ``retrain``; record it.

    A folder with finished stages but no record (an earlier version's demo) counts as trained on other data.
    """
    record = output / TRAINED_ON
    trained = None
    if record.is_file():
        try:
            trained = json.loads(record.read_text())
        except (OSError, ValueError):
            trained = None
        trained = trained if isinstance(trained, dict) else {"digest": None, "data": f"unreadable {record}"}
    elif any((output / "runs").glob(f"*/{pipeline.MARKER}")):
        trained = {"digest": None, "data": "data this version did not record"}
    if trained is not None and trained.get("digest") != digest and not retrain:
        raise DemoError(
            f"--output {output} holds models trained on {trained.get('data')}, not on {description}: use a new "
            "--output, or --retrain to replace them"
        )
    record.write_text(json.dumps({"digest": digest, "data": description}))


def run(args: argparse.Namespace) -> int:
    """Train every stage of the task, then the benchmark; print the table and the figure's path.

    Returns 0, 1 when a benchmarked method failed, 2 (one line on stderr) for an unusable option, folder or stage.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return _run(args)
    except (DemoError, demo_set.DemoSetError, pipeline.StageError) as error:
        print(f"direct-nextaccel demo: error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    check_budget(args.budget)
    stages = pipeline.TASKS[args.task]
    family = args.family if args.task == "reconstruction" else None  # super-resolution: the configs' own mask
    pipeline.check_stages(stages, family)  # a missing config is an error before anything trains, never a skipped stage
    check_device(args.device)
    data = data_folders(args.data) if args.data is not None else None
    if data is None and not args.phantoms:
        demo_set.demo_files()  # a missing or altered file is refused before the demo folder is created
    output = prepare_output(args.output)
    if data is not None:
        description = str(args.data.expanduser().resolve())
    elif args.phantoms:
        data, description = phantom_data(output), "the Shepp-Logan phantoms (--phantoms)"
    else:
        data, description = demo_set_data(output), DEMO_SET_DATA
    data_id = pipeline.data_digest(data)
    check_trained_on(output, data_id, description, retrain=args.retrain)

    runs = output / "runs"
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    from direct_nextaccel.benchmark.quality import FigureRequest, Method, run_benchmark

    digests: dict[str, str] = {}
    methods = []
    for stage in stages:
        config = pipeline.stage_config(stage, family, args.budget, runs, stages)
        digests[stage.name] = pipeline.stage_digest(config, data_id, {name: digests[name] for name in stage.upstream})
        checkpoint = pipeline.train_stage(stage, config, data, runs, args.device, digest=digests[stage.name])
        if stage.bound:
            bound_config = runs / stage.name / "demo_config.yaml"
            methods.append(Method(stage.name, family, bound=f"{bound_config}:{checkpoint}", kind="bound"))
        if not stage.benchmarked:
            continue
        config_path = runs / (stage.predict_with or stage.name) / "demo_config.yaml"
        if stage.variants is None:
            methods.append(Method(stage.name, family, run=f"{config_path}:{checkpoint}"))
        for variant, overrides in (stage.variants or {}).items():
            variant_path = pipeline.write_variant(config_path, variant, overrides)
            methods.append(Method(f"{stage.name}-{variant}", family, run=f"{variant_path}:{checkpoint}"))

    try:
        result = run_benchmark(
            data["val"], methods, output / "benchmark", family=args.family, device=args.device, figure=FigureRequest()
        )
    except ValueError as error:  # input that concerns every method, such as the validation data
        raise DemoError(f"benchmark of {data['val']}: {error}") from error
    print(f"Validation slices of {description}, {data['val']}:")
    print((output / "benchmark" / "benchmark.md").read_text())
    for figure_family, figure in result.figures.items():
        print(f"figure ({figure_family}): {figure}")
    return 1 if result.failed else 0

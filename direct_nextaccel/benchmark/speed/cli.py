"""``direct-nextaccel speed``: its options, and the run that prints the Markdown report and writes the JSON."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from direct_nextaccel.benchmark.naming import Named, option_type, parse_named
from direct_nextaccel.benchmark.results import write_json
from direct_nextaccel.benchmark.speed.measure import ALL_CHECKPOINTS, ALL_MODELS, TASKS
from direct_nextaccel.benchmark.speed.reconstruction import MODELS, SETUPS
from direct_nextaccel.benchmark.speed.superresolution import MODELS as SR_MODELS
from direct_nextaccel.benchmark.speed.task import MODES, REPOSITORY


def parse_run(text: str) -> Named:
    """``NAME=CONFIG.yaml:CHECKPOINT|RUN_DIR`` of ``speed --run``: without ``@FAMILY``, since each task times one
    batch under its own mask."""
    named = parse_named(text)
    if named.family is not None:
        raise ValueError(f"{text!r}: speed times every method on its task's own mask, so NAME takes no @FAMILY")
    return named


def check_run(task: str, name: str, value: str) -> None:
    """Refuse, naming the option and file, a ``--run NAME=...`` whose config cannot build network NAME: a YAML that
    does not read as a mapping with ``model.model_name``, or whose model is not NAME's (that of the tiny setup's config
    for it)."""
    from omegaconf import OmegaConf

    from direct_nextaccel.benchmark.naming import resolve_run
    from direct_nextaccel.benchmark.speed.task import resolve_config

    config, _ = resolve_run(value)
    try:
        loaded = OmegaConf.load(config)
    except Exception as error:  # YAML scanner/parser errors and OmegaConf's own, of many kinds
        reason = " ".join(str(error).split())[:200]
        raise ValueError(f"--run {name}=...: config {config} does not read as YAML ({reason})") from None
    model_name = OmegaConf.select(loaded, "model.model_name") if OmegaConf.is_dict(loaded) else None
    if not isinstance(model_name, str):
        raise ValueError(f"--run {name}=...: config {config} has no model.model_name (not a DIRECT model config)")
    expected = OmegaConf.load(resolve_config(TASKS[task].setups["tiny"].configs[name])).model.model_name
    if model_name != expected:
        raise ValueError(f"--run {name}=...: config {config} builds {model_name}, but {name} is a {expected}")


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
    parser.add_argument(
        "--run",
        dest="runs",
        action="extend",
        nargs="+",
        default=[],
        type=option_type(parse_run, "run"),
        metavar="NAME=CONFIG.yaml:CHECKPOINT|RUN_DIR",
        help="a network built from a DIRECT run instead of the --config setup, named as in direct-nextaccel "
        "benchmark (a checkpoint file or a run directory); NAME: reconstruction "
        f"{' '.join(TASKS['reconstruction'].checkpoints)}; superresolution "
        f"{' '.join(TASKS['superresolution'].checkpoints)}",
    )
    for name in ALL_CHECKPOINTS:
        tasks = " and ".join(task for task, spec in TASKS.items() if name in spec.checkpoints)
        parser.add_argument(
            f"--checkpoint-{name}",
            type=Path,
            metavar="PT",
            help=f"{name} weights (DIRECT checkpoint) for {tasks} on the setup's config; default random",
        )
    parser.add_argument("--output", type=Path, metavar="FILE.json", help="also write the results as JSON")
    parser.add_argument(
        "--repo-root", type=Path, default=REPOSITORY, help="checkout holding projects/ (paper-size configs)"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the Markdown report and write the JSON; a user error prints one line, returns 2."""
    from direct_nextaccel.benchmark.speed.measure import benchmark, check_options
    from direct_nextaccel.benchmark.speed.report import markdown
    from direct_nextaccel.core.user_paths import check_output_file

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        runs = {}
        for named in args.runs:
            if named.name in runs:
                raise ValueError(f"--run {named.name} is given more than once")
            runs[named.name] = named.value
        options = {
            "config": args.config,
            "device": device,
            "batch_sizes": args.batch_sizes,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "modes": args.modes,
            "models": args.models if args.models is not None else TASKS[args.task].models,
            # Another task's checkpoint is passed only when given, for benchmark to refuse it.
            "checkpoints": {
                name: getattr(args, f"checkpoint_{name}")
                for name in ALL_CHECKPOINTS
                if name in TASKS[args.task].checkpoints or getattr(args, f"checkpoint_{name}") is not None
            },
            "task": args.task,
            "runs": runs,
        }
        check_options(**options)  # benchmark checks them again; here they come before the checks below
        for name, value in runs.items():
            check_run(args.task, name, value)
        if args.output is not None:
            check_output_file(args.output, "--output")
        result = benchmark(**options, bf16=args.bf16, repo_root=args.repo_root, progress=args.progress)
        print(markdown(result))
        if args.output is not None:
            write_json(result, args.output)
            print(f"\nWrote {args.output}")
    except (ValueError, TypeError, OSError) as err:
        print(f"direct-nextaccel speed: error: {err}", file=sys.stderr)
        return 2
    return 0

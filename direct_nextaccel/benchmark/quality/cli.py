"""``direct-nextaccel benchmark``: its options, and the run that prints the tables and the paths written."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from direct_nextaccel.benchmark.naming import NAME_RULE, option_type
from direct_nextaccel.benchmark.quality.benchmark import DEFAULT_ACCELERATION, FigureRequest, run_benchmark
from direct_nextaccel.benchmark.quality.methods import DEFAULT_FAMILY, Method, parse_method
from direct_nextaccel.benchmark.quality.scoring import CONTRASTS
from direct_nextaccel.benchmark.report import METRIC_LABELS, markdown_report
from direct_nextaccel.core.direct_runs import one_line

NAMING_OPTIONS = {
    "run": (
        "NAME[@FAMILY]=CONFIG.yaml:CHECKPOINT|RUN_DIR",
        "a DIRECT run to reconstruct the data with direct predict (checkpoint file or run directory)",
    ),
    "predictions": (
        "NAME[@FAMILY]=DIR",
        "a folder of existing direct predict outputs (one .h5 with 'reconstruction' per data file)",
    ),
    "bound": (
        "NAME[@FAMILY]=CONFIG.yaml:CHECKPOINT|RUN_DIR",
        "a tokenizer's ceiling rows, marked (bound) and never bold (they see the fully sampled data): an AQ-VAE "
        "(nextaccel.aqvae.AQVAE) gives NAME-all-levels (model.output_levels: all six) and NAME-R32-tokens ([0]), "
        "both with model.mask_families: [FAMILY] (@FAMILY, else --family) and that family's nested mask; an MSVQ-VAE "
        "(miar.msvqvae.MSVQVAE) gives NAME-all-scales. The configs run are saved in OUTPUT/configs/",
    ),
}
"""The options that name a row (``dest="methods"``, in the order given): metavar and help."""


def _method_type(kind: str) -> Callable[[str], Method]:
    return option_type(lambda text: parse_method(text, kind), kind)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``direct-nextaccel benchmark``."""
    parser.epilog = (
        f"NAME names predictions/NAME/ and configs/NAME.yaml under --output: {NAME_RULE}. Example, one family with "
        "its tokenizer's bounds and the memorisation columns: direct-nextaccel benchmark --data data/val --output "
        "bench_radial --family radial --run varnet=runs/varnet_radial nextaccel=runs/nextaccel_radial --bound "
        "aqvae=runs/aqvae --training-root data/train"
    )
    for kind, (metavar, help_text) in NAMING_OPTIONS.items():
        parser.add_argument(
            f"--{kind}",
            dest="methods",
            action="extend",
            nargs="+",
            default=[],
            type=_method_type(kind),
            metavar=metavar,
            help=help_text,
        )
    parser.add_argument(
        "--training-root",
        type=Path,
        metavar="DIR",
        help="fastMRI-layout training files: adds the memorisation columns (mean Pearson correlation of each "
        "slice with its own target and with the closest training target, resampled bilinearly if sizes differ; "
        "slices closer to a training slice than to their own target)",
    )
    parser.add_argument("--data", type=Path, required=True, metavar="DIR", help="fastMRI-layout .h5 volumes")
    parser.add_argument("--output", type=Path, required=True, metavar="DIR", help="reports, figures, predictions")
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=list(METRIC_LABELS),
        choices=list(METRIC_LABELS),
        metavar="METRIC",
        help=f"columns, default all: {', '.join(METRIC_LABELS)}",
    )
    parser.add_argument("--contrasts", nargs="+", choices=CONTRASTS, help="default: those in --data")
    parser.add_argument(
        "--family",
        default=DEFAULT_FAMILY,
        help=f"family of methods without @FAMILY or config masking (default {DEFAULT_FAMILY}); "
        "cartesian_x, cartesian_y, gaussian2d or radial",
    )
    parser.add_argument(
        "--acceleration",
        type=int,
        default=DEFAULT_ACCELERATION,
        metavar="R",
        help=f"R of the nested masks (default {DEFAULT_ACCELERATION}): the inference masking of every run with a "
        "nested family (NextAccel, baselines, bounds; other masks keep their config's) and of the zero-filled "
        "reference; one of 32, 16, 8, 4, 2",
    )
    parser.add_argument("--device", default="cpu", help="device of direct predict: cpu (default) or cuda")
    parser.add_argument("--weights-dir", type=Path, metavar="DIR", help="local LPIPS/DISTS weights (sets the env var)")
    parser.add_argument("--figure-volume", metavar="FILE", help="data file shown in the figures (default the first)")
    parser.add_argument("--figure-slice", type=int, metavar="INDEX", help="slice shown (default the middle one)")
    parser.add_argument(
        "--zoom-box", type=int, nargs=4, metavar=("TOP", "LEFT", "HEIGHT", "WIDTH"), help="default centre quarter"
    )
    parser.add_argument("--no-figures", dest="figures", action="store_false", help="write no figure")


def check_device(device: str) -> None:
    """Refuse a device ``direct predict`` cannot use: anything but ``cpu``, ``cuda`` and ``cuda:N``, and CUDA without
    that GPU (``direct predict`` would fail for every method, with the cause only in its logs)."""
    if device == "cpu":
        return
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise ValueError(f"--device {device!r} is not cpu, cuda or cuda:N")
    import torch

    index = int(device.partition(":")[2] or 0)
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        raise ValueError(
            f"--device {device}: no such GPU here (torch.cuda.is_available() is {torch.cuda.is_available()}, "
            f"{torch.cuda.device_count()} device(s)); use --device cpu"
        )


def check_options(args: argparse.Namespace) -> None:
    """Refuse, before anything runs, the options that would fail for every method (one-line ``ValueError``)."""
    from direct_nextaccel.core.user_paths import check_output_folder
    from direct_nextaccel.masks.nested import LEVELS

    if args.acceleration not in LEVELS:
        raise ValueError(
            f"--acceleration {args.acceleration} is not an acceleration of the nested masks: use one of {LEVELS}"
        )
    check_device(args.device)
    check_output_folder(args.output, "--output")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the tables; 2 for a bad input, 1 if a method failed, else 0."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from direct_nextaccel.weights import WEIGHTS_DIR_ENV

    try:
        if not args.methods:
            raise ValueError("give at least one --run, --predictions or --bound method")
        check_options(args)
        if args.weights_dir is not None:
            if not args.weights_dir.is_dir():
                raise ValueError(f"weights folder {args.weights_dir} does not exist")
            os.environ[WEIGHTS_DIR_ENV] = str(args.weights_dir)
        figure = FigureRequest(args.figure_volume, args.figure_slice, args.zoom_box) if args.figures else None
        result = run_benchmark(
            args.data,
            args.methods,
            args.output,
            metrics=args.metrics,
            contrasts=args.contrasts,
            family=args.family,
            acceleration=args.acceleration,
            device=args.device,
            figure=figure,
            training_root=args.training_root,
        )
    except (ValueError, OSError) as error:
        print(f"direct-nextaccel benchmark: error: {one_line(error)}", file=sys.stderr)
        return 2
    print(markdown_report(result.tables, result.notes))
    for path in [*result.reports.values(), *result.figures.values()]:
        print(path)
    if result.failed:
        print(f"failed: {', '.join(result.failed)} (reasons in their rows)", file=sys.stderr)
        return 1
    return 0

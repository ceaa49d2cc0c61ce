"""The ``direct-nextaccel`` command: environment report, data preparation and the project's workflows.

Each subcommand lives in the module that owns the feature and exposes ``add_arguments(parser)`` and
``run(args) -> int``; this file only maps names to modules. Subcommand modules import torch and DIRECT inside
``run``, so building the parser stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

# name -> (module, one-line help).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "direct_nextaccel.demo",
        "train every stage at tiny size on CPU (Shepp-Logan phantoms or --data), then benchmark them",
    ),
    "doctor": ("direct_nextaccel.doctor", "report versions, device, registered plugins and local pretrained weights"),
    "simulate": (
        "direct_nextaccel.data.simulate",
        "simulate multi-coil fastMRI-layout k-space from magnitude volumes (.npz, NIfTI)",
    ),
    "import-raw": (
        "direct_nextaccel.data.raw_kspace",
        "convert the real raw multi-coil k-space in shared/data/kspace to the fastMRI layout",
    ),
    "benchmark": (
        "direct_nextaccel.benchmark.quality.cli",
        "score DIRECT runs/predictions per contrast and mask family",
    ),
    "speed": (
        "direct_nextaccel.benchmark.speed.cli",
        "inference time per slice: NextAccel or MIAR (each decoding mode) next to DIRECT's baselines",
    ),
    "gpu-check": ("direct_nextaccel.gpucheck.cli", "train, predict and time every engine in bf16 within a time budget"),
}


def _path(text: str) -> Path:
    """``type=Path`` of the subcommands, refusing an empty string (``Path("")`` would silently be ``.``)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path names nothing")
    return Path(text)


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr, exit status 2 (argparse's own status), naming
    the option and value as argparse does, with a pointer to ``--help`` instead of the usage block.

    Its sub-parsers are of the same class, and an argument declared with ``type=Path`` refuses an empty value.
    """

    def add_argument(self, *args, **kwargs):
        if kwargs.get("type") is Path:
            kwargs["type"] = _path
        return super().add_argument(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Parser with one sub-parser per available subcommand (a subcommand whose module is absent is not listed)."""
    parser = OneLineErrorParser(prog="direct-nextaccel", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if importlib.util.find_spec(module_name) is None:
            continue
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        subparser.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(subparser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""DIRECT's own command line (``direct train``, ``direct predict``) run in a child process, and why a run failed.

Every place that runs DIRECT as a user would (the demo's stages, the benchmark's predictions) does it the same way:

- :func:`direct_command`: DIRECT's console script run by *this* interpreter (not looked up next to it: a ``--user``
  or system install puts scripts elsewhere), with ``-P`` so that the working directory stays off ``sys.path`` and a
  checkout there cannot shadow the installed package; :func:`python_command` for a child that wraps DIRECT's
  ``main`` in code of its own.
- :func:`device_options`: ``--device``, ``--num-gpus`` and ``--num-workers 0`` for ``cpu`` or a CUDA device.
- :func:`run_logged`: the child's standard output and error, merged, go line by line to a log file (and to an
  optional callback, e.g. a progress bar); the exit status is returned.
- :func:`failure_cause`: the one line that says why a failed run failed, from its log: the last exception line
  (``ValueError: ...``), else the last line (DIRECT logs some errors and exits), shortened by :func:`one_line`.

Imports nothing heavy.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "DIRECT_MAIN",
    "device_options",
    "direct_command",
    "failure_cause",
    "one_line",
    "python_command",
    "run_logged",
]

DIRECT_MAIN = "import sys; from direct.cli.cli import main; sys.argv[0] = 'direct'; sys.exit(main())"
"""Python code of DIRECT's console script ``direct``: its arguments follow the code on the command line."""

_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(: .*)?$")
ONE_LINE_LIMIT = 300
"""Characters of a one-line reason (longer ones end in ``...``)."""


def python_command(code: str, *arguments: str | os.PathLike) -> list[str]:
    """``code`` run by this interpreter with ``-P`` (the working directory off ``sys.path``), then ``arguments``."""
    return [sys.executable, "-P", "-c", code, *map(str, arguments)]


def direct_command(subcommand: str, *arguments: str | os.PathLike) -> list[str]:
    """``direct SUBCOMMAND ARGUMENTS...`` run by this interpreter (see the module docstring)."""
    return python_command(DIRECT_MAIN, subcommand, *arguments)


def device_options(device: str) -> list[str]:
    """DIRECT's device options for ``cpu`` or a CUDA device: one GPU, or none, and no data-loading workers."""
    return ["--device", device, "--num-gpus", "0" if device == "cpu" else "1", "--num-workers", "0"]


def run_logged(command: Sequence[str], log_path: Path, on_line: Callable[[str], None] | None = None) -> int:
    """Run ``command``, writing its merged standard output and error to ``log_path`` line by line (each line also
    to ``on_line``); return its exit status."""
    with log_path.open("w") as log:
        process = subprocess.Popen(
            list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
        for line in process.stdout:
            log.write(line)
            if on_line is not None:
                on_line(line)
        process.wait()
    return process.returncode


def one_line(error: BaseException | str) -> str:
    """``error``'s text on one line (white space folded), at most :data:`ONE_LINE_LIMIT` characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= ONE_LINE_LIMIT else text[: ONE_LINE_LIMIT - 3] + "..."


def failure_cause(log: Path) -> str | None:
    """The last exception line of a failed run's output, else its last line, as :func:`one_line`; None for an empty
    or missing log."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()] if log.is_file() else []
    lines = [line for line in lines if line]
    if not lines:
        return None
    return one_line(next((line for line in reversed(lines) if _EXCEPTION.match(line)), lines[-1]))

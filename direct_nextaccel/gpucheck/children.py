"""The child processes of ``gpu-check`` and what each one measures.

Every step runs in a child Python process of its own, started with ``-P`` as
:mod:`~direct_nextaccel.core.direct_runs` starts DIRECT (a crash, a CUDA error or an out-of-memory loses one step,
and each peak memory is that of one step), with its whole output in a log file and a deadline: at the time guard's
end the child's process group (the child and its data-loading workers) gets SIGTERM, then SIGKILL.

- ``direct train`` (:func:`train_child`): DIRECT's own command line in the child, run in-process by DIRECT with one
  GPU or none. An iteration clock (a logging handler) notes when DIRECT logs each iteration (the configs log every
  iteration; DIRECT logs from iteration 5 on), so the seconds per iteration are the median of the gaps between
  consecutive iterations, leaving out the last one, which also checkpoints and validates. At the end the child writes
  its peak CUDA memory (allocated and reserved) and its peak resident memory.
- ``direct predict``: the child of ``direct-nextaccel benchmark``
  (:func:`~direct_nextaccel.benchmark.quality.prediction.predict_child`): DIRECT's own reconstruction clock per slice
  and peak memory.
- ``speed``: ``direct-nextaccel speed ... --output FILE.json`` in the child.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from direct_nextaccel.core.direct_runs import python_command

__all__ = [
    "CLI_CHILD",
    "TRAIN_CHILD",
    "ChildResult",
    "device_arguments",
    "run_child",
    "seconds_per_iteration",
    "train_child",
]

TRAIN_CHILD = (
    "import sys; from direct_nextaccel.gpucheck.children import train_child; sys.exit(train_child(sys.argv[1:]))"
)
"""Python code of the ``direct train`` child: ``STATS_JSON train RUNS --cfg ...`` follow it."""

CLI_CHILD = "import sys; from direct_nextaccel.cli import main; sys.exit(main(sys.argv[1:]))"
"""Python code of a ``direct-nextaccel`` child: its subcommand and options follow it."""

STOP_GRACE_S = 5.0
"""Seconds between SIGTERM and SIGKILL when a child runs past its deadline."""

_ITERATION = re.compile(r"\biter: (\d+)\b")


@dataclass(frozen=True)
class ChildResult:
    """How a child ended: exit status (None if it had to be killed), whether it ran out of time, its wall time."""

    status: int | None
    timed_out: bool
    wall_s: float
    log: Path


def device_arguments(device: str, num_workers: int) -> list[str]:
    """DIRECT's ``--device``, ``--num-gpus`` (one GPU or none) and ``--num-workers``."""
    return ["--device", device, "--num-gpus", "0" if device == "cpu" else "1", "--num-workers", str(num_workers)]


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the child's process group (it leads one of its own), SIGKILL after :data:`STOP_GRACE_S`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=STOP_GRACE_S)
            break
        except subprocess.TimeoutExpired:
            continue
    process.wait()


def run_child(
    command: Sequence[str], log_path: Path, deadline: float, env: Mapping[str, str] | None = None
) -> ChildResult:
    """Run ``command`` with its merged output in ``log_path``; stop it at ``deadline`` (a :func:`time.monotonic`
    time)."""
    start = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            list(command), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=dict(env or os.environ)
        )
        try:
            status: int | None = process.wait(timeout=max(0.5, deadline - time.monotonic()))
            timed_out = False
        except subprocess.TimeoutExpired:
            _stop(process)
            status, timed_out = None, True
        except BaseException:  # Ctrl-C of the check itself: the child does not outlive it
            _stop(process)
            raise
    return ChildResult(status, timed_out, time.monotonic() - start, log_path)


def train_command(stats: Path, arguments: Sequence[str]) -> list[str]:
    """``direct train ARGUMENTS`` in a :func:`train_child` that writes its measurements to ``stats``."""
    return python_command(TRAIN_CHILD, stats, "train", *arguments)


def cli_command(*arguments: str | os.PathLike) -> list[str]:
    """``direct-nextaccel ARGUMENTS`` in a child."""
    return python_command(CLI_CHILD, *arguments)


def seconds_per_iteration(times: Mapping[int, float]) -> tuple[float | None, int]:
    """Median gap between consecutive logged iterations, leaving out the gap into the last one (it checkpoints and
    validates too), and how many gaps it is the median of; ``(None, 0)`` when there are none."""
    if not times:
        return None, 0
    last = max(times)
    gaps = [times[i] - times[i - 1] for i in sorted(times) if i - 1 in times and i != last]
    return (statistics.median(gaps), len(gaps)) if gaps else (None, 0)


class _IterationClock(logging.Handler):
    """When DIRECT's metric printer logs each iteration (:func:`time.perf_counter` seconds).

    Until DIRECT sets up its own logging this is the root logger's only handler, which would silence Python's
    last-resort printing of warnings and errors: such records are passed on to it.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.times: dict[int, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "CommonMetricPrinter" and (match := _ITERATION.search(record.getMessage())):
            self.times.setdefault(int(match[1]), time.perf_counter())
        if record.levelno >= logging.WARNING and logging.getLogger().handlers == [self] and logging.lastResort:
            logging.lastResort.handle(record)


def train_child(argv: Sequence[str]) -> int:
    """Body of the ``direct train`` child: ``STATS_JSON`` then DIRECT's arguments (``train RUNS --cfg ...``).

    Runs DIRECT's command line in this process and, however it ends, writes to STATS_JSON the iteration clock, the
    seconds per iteration (:func:`seconds_per_iteration`), the wall time and the peak memories.
    """
    stats_path, *arguments = argv
    clock = _IterationClock()
    logging.getLogger().addHandler(clock)
    sys.argv = ["direct", *arguments]
    start = time.perf_counter()
    import torch
    from direct.cli.cli import main

    try:
        main()
    finally:
        per_iteration, gaps = seconds_per_iteration(clock.times)
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        stats = {
            "seconds_per_iteration": per_iteration,
            "gaps_timed": gaps,
            "iterations_logged": sorted(clock.times),
            "wall_s": time.perf_counter() - start,
            "cuda_peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            "cuda_peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20 if cuda else None,
            "rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # kilobytes on Linux
        }
        Path(stats_path).write_text(json.dumps(stats))
    return 0

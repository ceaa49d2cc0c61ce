"""``direct-nextaccel gpu-check``: its options, the steps in order of value, and the time guard.

Steps: the data; ``speed`` for the reconstruction task (the issue's targets); then per engine ``direct train
--mixed-precision`` and, for those that reconstruct, ``direct predict --mixed-precision`` on the validation slices
(AQ-VAE, NextAccel, teacher, distillation, E2EVarNet, RecurrentVarNet, MSVQ-VAE, MIAR); ``speed`` for the
super-resolution task; last the tokenizers' own predictions. A step whose earlier step failed or was skipped is
skipped, naming it. The time guard: a step starts only while the budget (``--budget-minutes``) leaves it the tier's
minimum for its kind; a running child is stopped :data:`GRACE_S` seconds after the budget's end; every skipped step
says why. The summary is rewritten after every step, so a check stopped from outside still leaves one.

Output (``--output``, default ``$OUT`` when set, else ``gpu_check/``): ``gpu_check.json``, ``gpu_check.md``,
``gpu_check_logs.txt`` (the end of every step's log, longer for failed ones) and ``speed_<task>.json``; the data,
runs, checkpoints and full logs go to ``--work`` (default a temporary folder, removed at the end). Exit status 0 when
every step passed, 1 otherwise, 2 for an option or folder that cannot be used (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from direct_nextaccel.core.direct_runs import failure_cause, one_line, python_command
from direct_nextaccel.core.user_paths import PathError, check_output_folder
from direct_nextaccel.gpucheck.children import cli_command, device_arguments, run_child, train_command
from direct_nextaccel.gpucheck.plan import ENGINES, TIERS, Engine, derive_config, final_checkpoint

__all__ = ["Check", "CheckError", "add_arguments", "run"]

REPOSITORY = Path(__file__).resolve().parents[2]
"""The checkout holding ``projects/`` (paper configs) when the package runs from one."""

GRACE_S = 30.0
"""Seconds a running child may go past the budget's end before it is stopped."""

TAIL_LINES = {"passed": 15, "failed": 60, "skipped": 0}
"""Lines of each step's log copied into ``gpu_check_logs.txt``."""

SCHEMA = 1


class CheckError(ValueError):
    """An option or folder the check cannot use; the message is one line naming it."""


class StepFailure(RuntimeError):
    """A step failed; the message is its one-line cause."""


@dataclass
class Step:
    """One step: its record in the summary and the work it does (returns the measurements to record)."""

    name: str
    kind: str
    label: str
    work: Callable[[float], dict[str, Any]]
    needs: tuple[str, ...] = ()
    record: dict[str, Any] = field(default_factory=dict)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``direct-nextaccel gpu-check``."""
    parser.add_argument(
        "--output",
        type=Path,
        help="folder of the summary (gpu_check.json, gpu_check.md, gpu_check_logs.txt, speed_*.json); default $OUT "
        "when set, else gpu_check/",
    )
    parser.add_argument(
        "--tier",
        choices=tuple(TIERS),
        default="paper",
        help="paper (default): the paper configs at 256 x 256 (16 coils; MIAR 1 coil); tiny: the tiny configs at "
        "64 x 64 with 4 coils, the same steps on a CPU",
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda (default) or cpu")
    parser.add_argument(
        "--budget-minutes", type=float, default=8.0, help="time guard: later steps are skipped past it (default 8)"
    )
    parser.add_argument("--iterations", type=int, help="training iterations per engine (default: the tier's, 10 / 8)")
    parser.add_argument(
        "--num-workers", type=int, help="DIRECT data-loading workers (default 0 on cpu, up to 8 on cuda)"
    )
    parser.add_argument(
        "--brain",
        type=Path,
        help="brain volumes (.npz file or folder) to simulate the data from; default ../shared/data/brain next to "
        "the checkout when present, else synthetic phantoms",
    )
    parser.add_argument(
        "--work",
        type=Path,
        help="folder for data, runs and logs (kept); default a temporary folder, removed at the end",
    )
    parser.add_argument("--repo-root", type=Path, default=REPOSITORY, help="checkout holding projects/ (paper configs)")


def run(args: argparse.Namespace) -> int:
    """Run the check; 0 when every step passed, 1 otherwise, 2 (one line on stderr) for an unusable option."""
    try:
        options = _check_options(args)
    except CheckError as error:
        print(f"direct-nextaccel gpu-check: error: {error}", file=sys.stderr)
        return 2
    return Check(**options).run()


def _check_options(args: argparse.Namespace) -> dict[str, Any]:
    budget = args.budget_minutes
    if not (math.isfinite(budget) and budget > 0):
        raise CheckError(f"--budget-minutes {budget} must be a positive finite number")
    tier = TIERS[args.tier]
    iterations = args.iterations if args.iterations is not None else tier.iterations
    if iterations < 8:
        raise CheckError(
            f"--iterations {iterations} must be at least 8 (DIRECT logs from iteration 5 on, and the last iteration "
            "also checkpoints and validates, so fewer time no iteration)"
        )
    if args.num_workers is not None and args.num_workers < 0:
        raise CheckError(f"--num-workers {args.num_workers} must be >= 0")
    if args.num_workers is not None and args.num_workers > (os.cpu_count() or 1):
        raise CheckError(f"--num-workers {args.num_workers} is more than this machine's {os.cpu_count()} CPUs")
    repo_root = args.repo_root.expanduser().resolve()
    if tier.name == "paper" and not (repo_root / "projects").is_dir():
        raise CheckError(f"--tier paper reads the paper configs from a checkout: {repo_root} has no projects/ folder")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CheckError("--device cuda: torch.cuda.is_available() is False (no usable GPU here); use --device cpu")
    output = args.output if args.output is not None else Path(os.environ.get("OUT") or "gpu_check")
    try:
        output = check_output_folder(output, "--output").resolve()
        if args.work is not None:
            check_output_folder(args.work, "--work")
    except PathError as error:
        raise CheckError(str(error)) from None
    brain = args.brain if args.brain is not None else repo_root.parent / "shared" / "data" / "brain"
    if args.brain is not None:
        _check_brain(args.brain)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckError(f"--output {output} cannot be created: {error.strerror or type(error).__name__}") from None
    num_workers = args.num_workers
    if num_workers is None:
        num_workers = 0 if args.device == "cpu" else min(8, os.cpu_count() or 1)
    return {
        "tier": tier.name,
        "device": args.device,
        "budget_s": budget * 60.0,
        "iterations": iterations,
        "num_workers": num_workers,
        "brain": brain.expanduser().resolve(),
        "output": output,
        "work": None if args.work is None else args.work.expanduser().resolve(),
        "repo_root": repo_root,
    }


def _check_brain(brain: Path) -> None:
    """Refuse a ``--brain`` that does not exist, a file that is not a ``.npz`` volume, and chosen volumes that are not
    readable ``.npz`` archives (the data step, and every step after it, would fail). A folder without volumes is
    allowed: the data are synthetic phantoms then, as the summary says."""
    from direct_nextaccel.data.simulate import npz_contrasts
    from direct_nextaccel.gpucheck.data import pick_sources

    if not brain.exists():
        raise CheckError(f"--brain {brain} does not exist")
    if brain.is_file() and brain.suffix.lower() != ".npz":
        raise CheckError(f"--brain {brain} is not a .npz volume (nor a folder of them)")
    for source in dict.fromkeys(pick_sources(brain) or ()):
        try:
            if not npz_contrasts(source):
                raise ValueError(f"{source} holds none of the contrasts t1, t1c, t2, flair")
        except ValueError as error:
            raise CheckError(f"--brain: {error}") from None


class Check:
    """One run of the check (see the module docstring)."""

    def __init__(
        self,
        *,
        tier: str,
        device: str,
        budget_s: float,
        iterations: int,
        num_workers: int,
        brain: Path,
        output: Path,
        work: Path | None,
        repo_root: Path,
    ) -> None:
        self.start = time.monotonic()
        self.tier = TIERS[tier]
        self.device, self.budget_s, self.iterations, self.num_workers = device, budget_s, iterations, num_workers
        self.brain, self.output, self.repo_root = brain, output, repo_root
        self.keep_work = work is not None
        self.work = work if work is not None else Path(tempfile.mkdtemp(prefix="gpucheck_"))
        self.runs, self.logs, self.configs = self.work / "runs", self.work / "logs", self.work / "configs"
        self.data: dict[str, Any] = {}
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.summary: dict[str, Any] = {}

    # -- time guard -------------------------------------------------------------------------------------------------
    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def deadline(self) -> float:
        return self.start + self.budget_s + GRACE_S

    # -- steps ------------------------------------------------------------------------------------------------------
    def steps(self) -> list[Step]:
        steps = [
            Step("data", "data", "data", self.write_data),
            Step(
                "speed_reconstruction",
                "speed",
                "speed reconstruction",
                lambda deadline: self.speed("reconstruction", deadline),
            ),
        ]
        late: list[Step] = []
        for engine in ENGINES:
            train = f"train_{engine.name}"
            needs = ("data", *(f"train_{name}" for name in engine.upstream))
            steps.append(Step(train, "train", f"train {engine.label}", self.trainer(engine), needs))
            if engine.predicts:
                predict_config = f"train_{engine.predict_with}" if engine.predict_with else train
                predict = Step(
                    f"predict_{engine.name}",
                    "predict",
                    f"predict {engine.label}",
                    self.predictor(engine),
                    tuple(dict.fromkeys((train, predict_config))),
                )
                # A tokenizer's own reconstruction matters least: at the end.
                (late if engine.name in ("aqvae", "msvqvae") else steps).append(predict)
        steps.append(
            Step(
                "speed_superresolution",
                "speed",
                "speed superresolution",
                lambda deadline: self.speed("superresolution", deadline),
            )
        )
        return steps + late

    def write_data(self, _: float) -> dict[str, Any]:
        from direct_nextaccel.gpucheck.data import write_data

        sets = {"reconstruction": self.tier.coils, "superresolution": self.tier.sr_coils}
        written = {}
        for task, coils in sets.items():
            if coils not in written:
                written[coils] = write_data(
                    self.work, self.tier.matrix, coils, self.tier.train_slices, self.tier.val_slices, self.brain
                )
            self.data[task] = written[coils]
        self.summary["data"] = {task: data.describe() for task, data in self.data.items()}
        return {}

    def trainer(self, engine: Engine) -> Callable[[float], dict[str, Any]]:
        def train(deadline: float) -> dict[str, Any]:
            from omegaconf import OmegaConf

            try:
                config, stand_ins = derive_config(engine, self.tier, self.runs, self.repo_root, self.iterations)
            except (FileNotFoundError, ValueError) as error:
                raise StepFailure(one_line(error)) from error
            run_dir = self.runs / engine.name
            if run_dir.exists():
                shutil.rmtree(run_dir)  # a fresh run, never DIRECT resuming an earlier one
            self.configs.mkdir(parents=True, exist_ok=True)
            config_path = self.configs / f"{engine.name}.yaml"
            OmegaConf.save(OmegaConf.create(config), config_path)
            data = self.data[engine.task]
            stats_path = self.logs / f"train_{engine.name}.json"
            arguments = [
                str(self.runs),
                "--cfg",
                str(config_path),
                "--name",
                engine.name,
                "--training-root",
                str(data.train),
                "--validation-root",
                str(data.val),
                *device_arguments(self.device, self.num_workers),
                "--mixed-precision",
            ]
            result = run_child(
                train_command(stats_path, arguments), self.logs / f"train_{engine.name}.log", deadline, self.env
            )
            stats = _read_json(stats_path)
            measured = {
                "wall_s": result.wall_s,
                "seconds_per_iteration": stats.get("seconds_per_iteration"),
                "gaps_timed": stats.get("gaps_timed"),
                "peak_gpu_mib": stats.get("cuda_peak_allocated_mib"),
                "peak_gpu_reserved_mib": stats.get("cuda_peak_reserved_mib"),
                "peak_rss_mib": stats.get("rss_peak_mib"),
                "stand_ins": stand_ins,
                "config": str(config_path),
            }
            checkpoint = final_checkpoint(self.runs, engine.name, self.iterations)
            _raise_for(result, measured, lambda: None if checkpoint.is_file() else f"no {checkpoint.name} written")
            measured["checkpoint_mib"] = checkpoint.stat().st_size / 2**20
            return measured

        return train

    def predictor(self, engine: Engine) -> Callable[[float], dict[str, Any]]:
        def predict(deadline: float) -> dict[str, Any]:
            import h5py
            import numpy as np

            from direct_nextaccel.benchmark.quality.prediction import PREDICT_CHILD

            config = self.configs / f"{engine.predict_with or engine.name}.yaml"
            checkpoint = final_checkpoint(self.runs, engine.name, self.iterations)
            data = self.data[engine.task].val
            output = self.work / "predictions" / engine.name
            if output.exists():
                shutil.rmtree(output)
            output.mkdir(parents=True)
            stats_path = output / "predict_stats.json"
            command = python_command(PREDICT_CHILD, stats_path, output, "--cfg", config, "--checkpoint", checkpoint)
            command += ["--data-root", str(data), *device_arguments(self.device, self.num_workers), "--mixed-precision"]
            result = run_child(command, self.logs / f"predict_{engine.name}.log", deadline, self.env)
            stats = _read_json(stats_path)
            slices, seconds = stats.get("slices"), stats.get("seconds")
            measured = {
                "wall_s": result.wall_s,
                "prediction_seconds_per_slice": seconds / slices if slices else None,
                "slices_predicted": slices,
                "peak_gpu_mib": stats.get("cuda_peak_mib"),
                "peak_rss_mib": stats.get("rss_peak_mib"),
            }

            def missing() -> str | None:
                for volume in sorted(data.glob("*.h5")):
                    written = output / volume.name
                    if not written.is_file():
                        return f"no prediction {written.name}"
                    with h5py.File(volume, "r") as source, h5py.File(written, "r") as predicted:
                        image = predicted["reconstruction"][()]
                        if image.shape[0] != source["kspace"].shape[0] or not np.isfinite(image).all():
                            return f"{written.name}: {image.shape[0]} slices or non-finite values"
                return None if stats else "no prediction statistics written"

            _raise_for(result, measured, missing)
            return measured

        return predict

    def speed(self, task: str, deadline: float) -> dict[str, Any]:
        path = self.output / f"speed_{task}.json"
        path.unlink(missing_ok=True)
        tier = self.tier
        command = cli_command(
            "speed",
            "--task",
            task,
            "--config",
            tier.name,
            "--device",
            self.device,
            "--bf16",
            "--batch-sizes",
            *map(str, tier.speed_batch_sizes),
            "--repeats",
            str(tier.speed_repeats),
            "--warmup",
            str(tier.speed_warmup),
            "--output",
            str(path),
            "--no-progress",
            "--repo-root",
            str(self.repo_root),
        )
        result = run_child(command, self.logs / f"speed_{task}.log", deadline, self.env)
        speed = _read_json(path)
        measured: dict[str, Any] = {"wall_s": result.wall_s}
        _raise_for(result, measured, lambda: None if speed.get("rows") else f"no rows in {path.name}")
        failed = [row for row in speed["rows"] if row.get("status") != "ok"]
        if failed:
            raise StepFailure(f"{failed[0]['label']}: {failed[0].get('error')}")
        self.summary.setdefault("speed", {})[task] = speed
        if self.device != "cpu":  # on a GPU speed's peak memory is torch's CUDA peak; on a CPU, resident-set growth
            measured["peak_gpu_mib"] = max((row.get("peak_memory_mib") or 0.0 for row in speed["rows"]), default=None)
        measured["speed_rows"] = len(speed["rows"])
        return measured

    # -- the run ----------------------------------------------------------------------------------------------------
    def run(self) -> int:
        from direct_nextaccel.benchmark.results import started_now
        from direct_nextaccel.gpucheck.report import collect_environment

        self.summary = {
            "command": "direct-nextaccel gpu-check",
            "schema": SCHEMA,
            "started": started_now(),
            "tier": self.tier.name,
            "device": self.device,
            "budget_s": self.budget_s,
            "iterations": self.iterations,
            "num_workers": self.num_workers,
            "environment": collect_environment(self.device, self.repo_root),
            "finished": False,
            "steps": [],
        }
        steps = self.steps()
        for step in steps:
            step.record = {"name": step.name, "kind": step.kind, "label": step.label, "status": "pending"}
            self.summary["steps"].append(step.record)
        status_of = {}
        try:
            for step in steps:
                self.run_step(step, status_of)
                status_of[step.name] = step.record["status"]
                print(
                    f"gpu-check: {step.label}: {step.record['status']}"
                    + (f" ({step.record['cause']})" if step.record.get("cause") else ""),
                    flush=True,
                )
                self.write_summary()
            self.summary["finished"] = True
            self.write_summary()
        finally:
            self.write_logs(steps)
            if not self.keep_work:
                shutil.rmtree(self.work, ignore_errors=True)
        print((self.output / "gpu_check.md").read_text())
        print(f"Wrote {self.output / 'gpu_check.json'} and {self.output / 'gpu_check.md'}")
        return 0 if all(step.record["status"] == "passed" for step in steps) else 1

    def run_step(self, step: Step, status_of: dict[str, str]) -> None:
        record = step.record
        blocked = [name for name in step.needs if status_of.get(name) != "passed"]
        need = self.tier.min_seconds.get(step.kind, 0.0)
        left = self.left()
        if blocked:
            record.update(
                status="skipped", cause=f"needs {blocked[0]}, which {status_of.get(blocked[0], 'did not run')}"
            )
            return
        if left <= 0:
            record.update(status="skipped", cause=f"time budget: the {self.budget_s:.0f} s are spent")
            return
        if left < need:
            record.update(
                status="skipped",
                cause=f"time budget: {left:.0f} s of {self.budget_s:.0f} s left, the step needs {need:.0f} s",
            )
            return
        started = time.monotonic()
        try:
            measured = step.work(self.deadline())
            record.update(measured, status="passed", cause=None)
        except StepFailure as failure:
            record.update(failure.args[1] if len(failure.args) > 1 else {}, status="failed", cause=str(failure.args[0]))
        except Exception as error:  # a step's own bug or bad input: that step fails, the check goes on
            record.update(status="failed", cause=one_line(f"{type(error).__name__}: {error}"))
        record.setdefault("wall_s", time.monotonic() - started)

    def write_summary(self) -> None:
        from direct_nextaccel.benchmark.results import write_json
        from direct_nextaccel.gpucheck.report import markdown, targets

        self.summary["elapsed_s"] = time.monotonic() - self.start
        self.summary["targets"] = targets(self.summary)
        write_json(self.summary, self.output / "gpu_check.json")
        (self.output / "gpu_check.md").write_text(markdown(self.summary))

    def write_logs(self, steps: list[Step]) -> None:
        parts = []
        for step in steps:
            lines = TAIL_LINES.get(step.record["status"], 0)
            log = self.logs / f"{step.name}.log"
            if lines and log.is_file():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"===== {step.name}: {step.record['status']} (last {len(tail)} lines of {log.name})\n")
                parts.append("\n".join(tail) + "\n")
        (self.output / "gpu_check_logs.txt").write_text("".join(parts))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _raise_for(result, measured: dict[str, Any], missing: Callable[[], str | None]) -> None:
    """Raise :class:`StepFailure` (with ``measured``) for a child that ran out of time, failed, or left out what it
    should have written (``missing()``: what is missing, or None)."""
    if result.timed_out:
        raise StepFailure(
            f"stopped at the time budget's end after {result.wall_s:.0f} s (log: {result.log.name})", measured
        )
    if result.status != 0:
        cause = failure_cause(result.log) or f"exit status {result.status}"
        raise StepFailure(f"{cause} (exit status {result.status}; log: {result.log.name})", measured)
    problem = missing()
    if problem:
        raise StepFailure(f"{problem} (log: {result.log.name})", measured)

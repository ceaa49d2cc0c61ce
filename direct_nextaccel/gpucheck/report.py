"""The ``gpu-check`` summary: the environment, one record per step, the speed tables and the issue's GPU targets, as
JSON (``gpu_check.json``) and Markdown (``gpu_check.md``).

A step record: ``name``, ``kind`` (``data``, ``train``, ``predict``, ``speed``), ``label``, ``status`` (``passed``,
``failed``, ``skipped``), ``cause`` (one line for a failed or skipped step, else None), ``wall_s`` and what the step
measured: ``seconds_per_iteration`` (with ``gaps_timed``), ``peak_gpu_mib`` (torch's peak CUDA allocation of the
step's process; None on CPU), ``peak_rss_mib``, ``prediction_seconds_per_slice``, ``stand_ins``.

Imports nothing heavy.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["TARGETS", "collect_environment", "markdown", "targets"]

TARGETS = {"argmax_ms_at_batch_8": 25.0, "argmax_over_varnet_at_batch_8": 1.0}
"""Issue 14's GPU targets: NextAccel argmax at most 25 ms per slice in bf16 at batch 8 on an H100/H200, and no slower
than E2EVarNet in the same run."""


def _command_output(command: list[str], cwd: Path | None = None) -> str | None:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def collect_environment(device: str, repo_root: Path) -> dict[str, Any]:
    """Device name and memory, torch, CUDA, cuDNN, DIRECT, this package, Python, the GPU driver, the checkout's
    commit."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from direct_nextaccel.benchmark.results import describe_device

    name, device_type = describe_device(device)
    environment: dict[str, Any] = {
        "device": name,
        "device_type": device_type,
        "gpu_memory_gib": None,
        "bf16_supported": None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "driver": None,
    }
    for package, key in (("direct-recon", "direct"), ("direct-nextaccel", "direct_nextaccel")):
        try:
            environment[key] = version(package)
        except PackageNotFoundError:
            environment[key] = None
    if device_type == "cuda" and torch.cuda.is_available():
        environment["gpu_memory_gib"] = round(
            torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30, 1
        )
        environment["bf16_supported"] = torch.cuda.is_bf16_supported()
        if shutil.which("nvidia-smi"):
            environment["driver"] = _command_output(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            )
    if (repo_root / ".git").exists() and shutil.which("git"):
        environment["commit"] = _command_output(["git", "rev-parse", "--short", "HEAD"], cwd=repo_root)
    return environment


def targets(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's two GPU targets read off the reconstruction speed rows at batch 8 (a verdict only at ``--tier
    paper`` on a GPU; elsewhere the value is shown for the code path alone)."""
    speed = (summary.get("speed") or {}).get("reconstruction")
    rows = {
        (row["method"], row["batch_size"]): row for row in (speed or {}).get("rows", []) if row.get("status") == "ok"
    }
    applicable = summary["tier"] == "paper" and summary["environment"]["device_type"] == "cuda"
    reason = (
        None if applicable else f"not applicable: tier {summary['tier']} on {summary['environment']['device_type']}"
    )
    argmax, varnet = rows.get(("argmax", 8)), rows.get(("varnet", 8))
    records = []
    for key, label, value, unit in (
        (
            "argmax_ms_at_batch_8",
            "NextAccel argmax, bf16, batch 8: ms per slice at most 25",
            None if argmax is None else argmax["seconds_per_slice"] * 1e3,
            "ms",
        ),
        (
            "argmax_over_varnet_at_batch_8",
            "NextAccel argmax / E2EVarNet, batch 8: at most 1 (no slower)",
            None if argmax is None or varnet is None else argmax["seconds_per_slice"] / varnet["seconds_per_slice"],
            "",
        ),
    ):
        if value is None:
            verdict = "not measured (no batch-8 rows)" if reason is None else f"not measured; {reason}"
        elif reason is not None:
            verdict = reason
        else:
            verdict = "met" if value <= TARGETS[key] else "missed"
        records.append(
            {"target": key, "label": label, "at_most": TARGETS[key], "value": value, "unit": unit, "verdict": verdict}
        )
    return records


def _number(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown(summary: Mapping[str, Any]) -> str:
    """Markdown report of a summary."""
    from direct_nextaccel.benchmark.speed.report import markdown as speed_markdown

    env = summary["environment"]
    device = env["device"] + (f", {env['gpu_memory_gib']} GiB" if env.get("gpu_memory_gib") else "")
    versions = (
        f"torch {env['torch']}, CUDA {env['cuda'] or 'none'}, cuDNN {env['cudnn'] or 'none'}, DIRECT {env['direct']}, "
        f"direct-nextaccel {env['direct_nextaccel']}"
        + (f" ({env['commit']})" if env.get("commit") else "")
        + f", Python {env['python']}"
        + (f", driver {env['driver']}" if env.get("driver") else "")
    )
    steps = summary["steps"]
    counts = {status: sum(step["status"] == status for step in steps) for status in ("passed", "failed", "skipped")}
    lines = [
        "# direct-nextaccel gpu-check",
        "",
        f"Device: {device} ({env['device_type']}); {versions}.",
        f"Tier {summary['tier']} (bf16: `direct train/predict --mixed-precision`, `speed --bf16`), "
        f"{summary['iterations']} training iterations per engine, {summary['num_workers']} data-loading workers; "
        f"budget {summary['budget_s']:.0f} s, {summary['elapsed_s']:.0f} s used; "
        f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
        + ("" if summary["finished"] else " (still running)")
        + ".",
    ]
    for task, description in (summary.get("data") or {}).items():
        lines.append(f"Data ({task}): {description}.")
    lines += [
        "",
        "| Step | Status | Wall (s) | s / iteration | Peak GPU (MiB) | Peak RSS (MiB) | Predict (s / slice) | Note |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for step in steps:
        note = step.get("cause") or "; ".join(step.get("stand_ins") or [])
        lines.append(
            f"| {step['label']} | {step['status']} | {_number(step.get('wall_s'), 1)} | "
            f"{_number(step.get('seconds_per_iteration'))} | {_number(step.get('peak_gpu_mib'), 0)} | "
            f"{_number(step.get('peak_rss_mib'), 0)} | {_number(step.get('prediction_seconds_per_slice'), 4)} | "
            f"{note.replace('|', '/')} |"
        )
    for task, result in (summary.get("speed") or {}).items():
        lines += ["", f"## speed --task {task} --config {summary['tier']} --bf16", "", speed_markdown(result)]
    lines += ["", "## Issue 14 GPU targets", "", "| Target | Value | Verdict |", "|---|---:|---|"]
    for target in summary.get("targets") or []:
        value = (
            ""
            if target["value"] is None
            else f"{target['value']:.3f}{(' ' + target['unit']) if target['unit'] else ''}"
        )
        lines.append(f"| {target['label']} | {value} | {target['verdict']} |")
    return "\n".join(lines) + "\n"

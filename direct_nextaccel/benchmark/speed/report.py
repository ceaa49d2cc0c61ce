"""The Markdown report of a speed result: the run's context, the timings table and the ratios table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from direct_nextaccel.benchmark.speed.models import WEIGHTS_NOTE


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def markdown(result: Mapping[str, Any]) -> str:
    """Markdown report of a :func:`~direct_nextaccel.benchmark.speed.measure.benchmark` result."""
    from direct_nextaccel.benchmark.speed.measure import TASKS

    environment, settings = result["environment"], result["settings"]
    weights = sorted({method["checkpoint"] or WEIGHTS_NOTE for method in settings["methods"].values()})
    run = (
        f"{settings['mask']}; {settings['warmup']} warm-up and {settings['repeats']} timed calls per row; bf16: "
        f"{settings['bf16'] or 'no'}."
    )
    matrix = f"{settings['matrix'][0]} x {settings['matrix'][1]}"
    paper = result["paper_reference"]
    if settings["coil_source"] is not None:
        coils = f"{settings['coils']} coil{'s' if settings['coils'] != 1 else ''}"
        configuration = [
            f"Task {result['task']}, configuration {settings['config']}: {matrix}, {coils} "
            f"({settings['coil_source']}), " + run
        ]
    else:
        configuration = [f"Configuration {settings['config']}: {matrix}, {settings['coils']} coils, " + run]
    if paper is not None:
        labels = TASKS[result["task"]].labels
        reference = ", ".join(f"{labels[name]} {ms:g}" for name, ms in paper["ms_per_slice"].items())
        configuration.append(f"Paper reference, ms / slice: {reference} ({paper['source']}).")
    lines = [
        f"Device: {environment['device']} ({environment['device_type']}), torch {environment['torch']}, "
        f"{environment['torch_threads']} threads, load average {environment['load_average_before'][0]:.2f} before / "
        f"{environment['load_average_after'][0]:.2f} after.",
        *configuration,
        f"Weights: {'; '.join(weights)}.",
        f"Peak memory: {settings['memory_measure']}.",
        "",
        "| Method | Batch | ms / slice (median) | IQR (ms) | Stages (ms / slice) | Peak memory (MiB) | Params (M) |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for row in result["rows"]:
        stages = ", ".join(f"{stage} {_ms(value)}" for stage, value in row["stage_seconds_per_slice"].items())
        memory = "n/a" if row["peak_memory_mib"] is None else f"{row['peak_memory_mib']:.0f}"
        lines.append(
            f"| {row['label']} | {row['batch_size']} | {_ms(row['seconds_per_slice'])} | "
            f"{_ms(row['seconds_per_slice_quartiles']['iqr'])} | {stages} | {memory} | {row['parameters'] / 1e6:.1f} |"
        )
    if result["ratios"] and paper is not None:
        paper_ms = paper["ms_per_slice"]
        lines += ["", "| Ratio of s / slice | Batch | Ratio | Paper (RTX 4090) |", "|---|---:|---:|---|"]
        for ratio in result["ratios"]:
            reference = ratio["paper_reference"]
            cited = (
                ""
                if reference is None
                else f"{reference:.2f} ({paper_ms[ratio['numerator']]:g} / {paper_ms[ratio['denominator']]:g} ms)"
            )
            lines.append(f"| {ratio['label']} | {ratio['batch_size']} | {ratio['ratio']:.3f} | {cited} |")
    elif result["ratios"]:
        lines += ["", "| Ratio of s / slice | Batch | Ratio | Target |", "|---|---:|---:|---|"]
        for ratio in result["ratios"]:
            target = ratio["target_at_most"]
            verdict = "" if target is None else f"<= {target:g} ({'met' if ratio['meets_target'] else 'missed'})"
            lines.append(f"| {ratio['label']} | {ratio['batch_size']} | {ratio['ratio']:.3f} | {verdict} |")
    return "\n".join(lines)

"""Layout of benchmark results as the paper's tables: Markdown (one table per mask family), CSV and JSON.

Nothing here computes a metric: :mod:`direct_nextaccel.benchmark.quality.scoring` fills :class:`FamilyTable` objects and
these functions only lay them out. A Markdown table has one row per method (the zero-filled reference first) and one
column per metric and contrast, ``PSNR ↑ T1 | PSNR ↑ T2 | ... | SSIM ↑ T1 | ...`` (the two header rows of the paper's
Tables 1-2 flattened into one), then, with a training folder, the memorisation diagnostic (mean correlation with the
own target, mean correlation with the closest training slice, slices closer to a training slice than to their own
target: :mod:`direct_nextaccel.benchmark.memorisation`), then seconds per slice and peak memory. The best value of
each metric column is bold, as in the paper, among the ranked rows: a tokenizer bound (``kind="bound"``, marked
``(bound)``: it sees the fully sampled data) and a row with flat slices (an all-zero output scores a deceptively
good SSIM) are never bold. A method that failed keeps its row, whose first cell after the name says why.

This module imports nothing heavy, so the command-line parser can use :data:`METRIC_LABELS`.
"""

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from direct_nextaccel.benchmark.results import SCHEMA_VERSION, json_value, write_json

METRIC_LABELS: dict[str, tuple[str, bool]] = {
    "psnr": ("PSNR", True),
    "ssim": ("SSIM", True),
    "nmse": ("NMSE", False),
    "hfen": ("HFEN", False),
    "lpips": ("LPIPS", False),
    "lpips_vgg": ("LPIPS-VGG", False),
    "dists": ("DISTS", False),
    "haarpsi": ("HaarPSI", True),
    "gmsd": ("GMSD", False),
}
"""Metric name (a key of :data:`direct_nextaccel.metrics.METRICS`) -> (column label, higher is better)."""

_FORMATS = {"psnr": ".2f", "nmse": ".4f", "gmsd": ".4f"}  # every other metric ".3f"
NOT_MEASURED = "—"
"""Cell of a time or memory column for methods the benchmark did not run (existing predictions, zero-filled)."""
KINDS = ("reference", "method", "bound")
"""Row kinds: the zero-filled reference, a reconstruction method, a tokenizer's ceiling (it sees the fully sampled
data)."""
BOUND_MARK = " (bound)"
"""Suffix of a bound row's name in the Markdown table and the figures."""
MEMORISATION_LABELS = ("Corr own ↑", "Corr train max", "Train > own ↓")
"""Markdown headers of the memorisation diagnostic (tables with a training folder)."""


@dataclass
class MethodRow:
    """One method's results in one mask family.

    Attributes
    ----------
    name : str
        Row label.
    scores : dict
        Metric -> contrast -> mean over that contrast's volumes (a float, possibly ``inf``), or a string such as
        ``"n/a (weights unavailable)"``. Empty when the method failed.
    error : str, optional
        One line saying why the method has no results.
    seconds_per_slice : float, optional
        Reconstruction time per slice, when the benchmark ran the method.
    peak_memory_mib : float, optional
        Peak memory of the method's run in MiB, when the benchmark ran it.
    volumes : list of dict
        Per-volume records (file, contrast, slices and one value per metric), kept for the JSON output.
    warnings : list of str
        Things the reader of the table must know about this row (e.g. a sampling mask that differs from the
        zero-filled reference's).
    kind : str
        One of :data:`KINDS`.
    flat_slices : int
        Predicted slices that are flat where the target is not (all zero, constant); such a row is never bold.
    memorisation : dict, optional
        Summary of :class:`direct_nextaccel.benchmark.memorisation.Memorisation` (``own``, ``closest_training``,
        ``closer_to_training``, ``slices``, ``undefined``), when a training folder was given.
    """

    name: str
    scores: dict[str, dict[str, float | str]] = field(default_factory=dict)
    error: str | None = None
    seconds_per_slice: float | None = None
    peak_memory_mib: float | None = None
    volumes: list[dict[str, object]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    kind: str = "method"
    flat_slices: int = 0
    memorisation: dict[str, float | int] | None = None

    @property
    def ranked(self) -> bool:
        """Whether the row competes for the bold best value: complete, not a bound, no flat slice."""
        return self.error is None and self.kind != "bound" and self.flat_slices == 0

    @property
    def label(self) -> str:
        """Name as shown in the Markdown table and figures: bounds carry :data:`BOUND_MARK`."""
        return self.name + BOUND_MARK if self.kind == "bound" else self.name


@dataclass
class FamilyTable:
    """All methods of one mask family: the content of one Markdown table.

    Attributes
    ----------
    family : str
        Mask family (or DIRECT masking name).
    acceleration : str
        Acceleration label for the title, e.g. ``"32"``.
    metrics : list of str
        Metric names, in column order.
    contrasts : list of str
        Contrast names, in column order within each metric.
    volume_counts : dict
        Contrast -> number of volumes averaged.
    rows : list of MethodRow
        Zero-filled reference first, then the methods in the order given.
    memory : str
        What the peak memory column measures.
    training : str, optional
        The training folder of the memorisation diagnostic, described in one line; None: no diagnostic columns.
    target_memorisation : dict, optional
        The same diagnostic for the targets themselves (what a perfect reconstruction would show), plus
        ``in_training``: targets whose closest training slice is practically the same image.
    """

    family: str
    acceleration: str
    metrics: list[str]
    contrasts: list[str]
    volume_counts: dict[str, int]
    rows: list[MethodRow]
    memory: str = "peak memory"
    training: str | None = None
    target_memorisation: dict[str, float | int] | None = None


def format_value(metric: str, value: float | str) -> str:
    """A metric value as printed in the tables: fixed decimals per metric, ``inf`` for infinite, strings as given."""
    if isinstance(value, str):
        return value
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if math.isnan(value):
        return "nan"
    return format(value, _FORMATS.get(metric, ".3f"))


def column_labels(table: FamilyTable) -> list[str]:
    """Header cells after ``Method``: ``"PSNR ↑ T1"`` ... then the memorisation columns (with a training folder),
    ``"s/slice"`` and ``"Peak mem (MiB)"``."""
    labels = []
    for metric in table.metrics:
        label, higher = METRIC_LABELS[metric]
        labels += [f"{label} {'↑' if higher else '↓'} {contrast}" for contrast in table.contrasts]
    if table.training is not None:
        labels += list(MEMORISATION_LABELS)
    return [*labels, "s/slice", "Peak mem (MiB)"]


def memorisation_cells(summary: Mapping[str, float | int] | None) -> list[str]:
    """The three memorisation cells of a row: mean correlations (3 decimals) and ``closer/slices``."""
    if summary is None:
        return [NOT_MEASURED] * 3
    return [
        format_value("correlation", float(summary["own"])),
        format_value("correlation", float(summary["closest_training"])),
        f"{summary['closer_to_training']}/{summary['slices']}",
    ]


def _best(table: FamilyTable, metric: str, contrast: str) -> float | None:
    values = [
        row.scores[metric][contrast]
        for row in table.rows
        if row.ranked and isinstance(row.scores.get(metric, {}).get(contrast), float | int)
    ]
    values = [value for value in values if not math.isnan(value)]
    if len(values) < 2:
        return None
    return max(values) if METRIC_LABELS[metric][1] else min(values)


def markdown_table(table: FamilyTable) -> str:
    """The family's table in Markdown, without title; the best value of each metric column is bold.

    Parameters
    ----------
    table : FamilyTable
        Results of one family.

    Returns
    -------
    str
        Header, alignment row and one line per method, joined by newlines (no trailing newline).
    """
    labels = column_labels(table)
    lines = [
        "| " + " | ".join(["Method", *labels]) + " |",
        "|" + "|".join([":---", *["---:"] * len(labels)]) + "|",
    ]
    best = {(m, c): _best(table, m, c) for m in table.metrics for c in table.contrasts}
    for row in table.rows:
        if row.error is not None:
            cells = [f"failed: {row.error}", *[""] * (len(labels) - 1)]
        else:
            cells = []
            for metric in table.metrics:
                for contrast in table.contrasts:
                    value = row.scores[metric][contrast]
                    text = format_value(metric, value)
                    bold = row.ranked and best[metric, contrast] == value and text != "nan"
                    cells.append(f"**{text}**" if bold else text)
            if table.training is not None:
                cells += memorisation_cells(row.memorisation)
            cells.append(NOT_MEASURED if row.seconds_per_slice is None else f"{row.seconds_per_slice:.3f}")
            cells.append(NOT_MEASURED if row.peak_memory_mib is None else f"{row.peak_memory_mib:.0f}")
        lines.append("| " + " | ".join([_escape(row.label), *(_escape(cell) for cell in cells)]) + " |")
    return "\n".join(lines)


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|")


def markdown_report(tables: Sequence[FamilyTable], notes: Sequence[str] = ()) -> str:
    """All families' tables, each under a ``### <family>, R = <acceleration>`` title with its volume counts and the
    warnings of its rows, then ``notes`` as a list.

    Returns
    -------
    str
        Markdown document ending in a newline.
    """
    parts = []
    for table in tables:
        counts = ", ".join(f"{contrast} {table.volume_counts.get(contrast, 0)}" for contrast in table.contrasts)
        parts.append(f"### {table.family}, R = {table.acceleration}\n\n{markdown_table(table)}\n")
        details = [f"Volumes per contrast: {counts}. Peak memory: {table.memory}."]
        if table.training is not None:
            details.append(_memorisation_detail(table))
        details += [f"{row.name}: {warning}" for row in table.rows for warning in row.warnings]
        parts.append("\n".join(f"- {line}" for line in details) + "\n")
    if notes:
        parts.append("\n".join(f"- {note}" for note in notes) + "\n")
    return "\n".join(parts)


def _memorisation_detail(table: FamilyTable) -> str:
    text = (
        f"Memorisation: Pearson correlation of each magnitude slice with its own target (Corr own) and with the "
        f"closest training target (Corr train max: {table.training}); Train > own: slices closer to a training "
        "slice than to their own target."
    )
    targets = table.target_memorisation
    if targets is not None and targets.get("slices"):
        text += (
            f" The targets themselves correlate {format_value('correlation', float(targets['closest_training']))} "
            "on average with their closest training slice (what a perfect reconstruction shows)."
        )
        if targets.get("in_training"):
            text += f" {targets['in_training']} target slice(s) are practically a training slice (r >= 0.9999)."
    return text


CSV_MEMORISATION = ("corr_own", "corr_train_max", "train_closer_slices", "correlated_slices")
"""CSV columns of the memorisation diagnostic (empty without a training folder)."""


def csv_text(tables: Sequence[FamilyTable]) -> str:
    """One CSV line per family and method: ``family, method, kind, status, error``, then ``<metric>_<contrast>``
    columns (the union over families, in order of appearance), the memorisation columns :data:`CSV_MEMORISATION`,
    ``seconds_per_slice`` and ``peak_memory_mib``.

    Numbers are written with full precision (``inf`` for infinite); cells without a value are empty.
    """
    value_columns: list[str] = []
    for table in tables:
        for metric in table.metrics:
            for contrast in table.contrasts:
                if f"{metric}_{contrast}" not in value_columns:
                    value_columns.append(f"{metric}_{contrast}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["family", "method", "kind", "status", "error", *value_columns, *CSV_MEMORISATION]
    writer.writerow([*header, "seconds_per_slice", "peak_memory_mib"])
    for table in tables:
        for row in table.rows:
            values = {
                f"{metric}_{contrast}": _plain(value)
                for metric, by_contrast in row.scores.items()
                for contrast, value in by_contrast.items()
            }
            memorisation = row.memorisation or {}
            keys = ("own", "closest_training", "closer_to_training", "slices")
            writer.writerow(
                [
                    table.family,
                    row.name,
                    row.kind,
                    "failed" if row.error is not None else "ok",
                    row.error or "",
                    *(values.get(column, "") for column in value_columns),
                    *(_plain(memorisation.get(key)) for key in keys),
                    _plain(row.seconds_per_slice),
                    _plain(row.peak_memory_mib),
                ]
            )
    return buffer.getvalue()


def _plain(value: float | str | None) -> str | float:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def json_document(
    tables: Sequence[FamilyTable],
    settings: Mapping[str, object],
    notes: Sequence[str] = (),
    *,
    started: str | None = None,
    environment: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """Everything the benchmark measured, as a :class:`~direct_nextaccel.benchmark.results.Result` in strict JSON
    (non-finite numbers as strings).

    Parameters
    ----------
    tables : sequence of FamilyTable
        Results per family.
    settings : Mapping
        How the benchmark was run (data folder, device, metrics, methods, ...), stored under ``"settings"``.
    notes : sequence of str
        The notes under the tables.
    started, environment : optional
        When the benchmark started and the machine (:func:`~direct_nextaccel.benchmark.results.environment`).

    Returns
    -------
    dict
        ``{"benchmark", "schema", "started", "environment", "settings", "rows": [{"method", "label", "kind",
        "status", "error", "seconds_per_slice", "peak_memory_mib", "family"}], "notes", "families": {family:
        {"acceleration", "contrasts", "metrics", "volume_counts", "memory", "training", "target_memorisation",
        "rows": [{"method", "kind", "status", "error", "scores", "memorisation", "flat_slices", "seconds_per_slice",
        "peak_memory_mib", "warnings", "volumes"}]}}}``: the top-level ``rows`` are the rows of every family in the
        schema both commands share, the family's ``rows`` the same rows with everything scored.
    """
    families = {}
    for table in tables:
        families[table.family] = {
            "acceleration": table.acceleration,
            "contrasts": table.contrasts,
            "metrics": table.metrics,
            "volume_counts": table.volume_counts,
            "memory": table.memory,
            "training": table.training,
            "target_memorisation": table.target_memorisation,
            "rows": [
                {
                    "method": row.name,
                    "kind": row.kind,
                    "status": _status(row),
                    "error": row.error,
                    "scores": row.scores,
                    "memorisation": row.memorisation,
                    "flat_slices": row.flat_slices,
                    "seconds_per_slice": row.seconds_per_slice,
                    "peak_memory_mib": row.peak_memory_mib,
                    "warnings": row.warnings,
                    "volumes": row.volumes,
                }
                for row in table.rows
            ],
        }
    rows: list[dict[str, object]] = [  # results.Row keys, and the family
        {
            "method": row.name,
            "label": row.label,
            "kind": row.kind,
            "status": _status(row),
            "error": row.error,
            "seconds_per_slice": row.seconds_per_slice,
            "peak_memory_mib": row.peak_memory_mib,
            "family": table.family,
        }
        for table in tables
        for row in table.rows
    ]
    document = {
        "benchmark": "direct-nextaccel benchmark",
        "schema": SCHEMA_VERSION,
        "started": started,
        "environment": dict(environment) if environment is not None else None,
        "settings": dict(settings),
        "rows": rows,
        "notes": list(notes),
        "families": families,
    }
    return json_value(document)


def _status(row: MethodRow) -> str:
    return "failed" if row.error is not None else "ok"


def write_reports(
    tables: Sequence[FamilyTable],
    output: Path,
    settings: Mapping[str, object],
    notes: Sequence[str] = (),
    *,
    started: str | None = None,
    environment: Mapping[str, object] | None = None,
) -> dict[str, Path]:
    """Write ``benchmark.md``, ``benchmark.csv`` and ``benchmark.json`` (:func:`json_document`) into ``output``
    (created if needed).

    Returns
    -------
    dict
        ``{"markdown": path, "csv": path, "json": path}``.
    """
    output.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": output / "benchmark.md", "csv": output / "benchmark.csv", "json": output / "benchmark.json"}
    paths["markdown"].write_text(markdown_report(tables, notes), encoding="utf-8")
    paths["csv"].write_text(csv_text(tables), encoding="utf-8")
    write_json(json_document(tables, settings, notes, started=started, environment=environment), paths["json"])
    return paths

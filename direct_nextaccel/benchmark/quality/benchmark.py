"""``direct-nextaccel benchmark`` as a function (:func:`run_benchmark`): the rows of every method reconstructed
(:mod:`~direct_nextaccel.benchmark.quality.prediction`) and scored (:mod:`~direct_nextaccel.benchmark.quality.scoring`)
per mask family, the reports written and one figure drawn per family.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from direct_nextaccel.benchmark.memorisation import TrainingTargets
from direct_nextaccel.benchmark.naming import check_name
from direct_nextaccel.benchmark.quality.methods import DEFAULT_FAMILY, Method, expand_bound
from direct_nextaccel.benchmark.quality.prediction import prepare
from direct_nextaccel.benchmark.quality.scoring import (
    CONTRAST_OF_ACQUISITION,
    CONTRASTS,
    ZERO_FILLED,
    Panels,
    Volume,
    find_volumes,
    score_family,
)
from direct_nextaccel.benchmark.report import BOUND_MARK, METRIC_LABELS, FamilyTable, write_reports
from direct_nextaccel.benchmark.results import environment, started_now

DEFAULT_ACCELERATION = 32


@dataclass
class FigureRequest:
    """Which slice the figures show and where they zoom (None: first volume, middle slice, centre quarter)."""

    volume: str | None = None
    slice_index: int | None = None
    zoom_box: tuple[int, int, int, int] | None = None


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` produced: one table per family, the notes under them and the paths written."""

    tables: list[FamilyTable]
    notes: list[str]
    reports: dict[str, Path]
    figures: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        """Names of the methods whose row reports a failure."""
        return [row.name for table in self.tables for row in table.rows if row.error is not None]


def run_benchmark(
    data: Path,
    methods: Sequence[Method],
    output: Path,
    *,
    metrics: Sequence[str] = tuple(METRIC_LABELS),
    contrasts: Sequence[str] | None = None,
    family: str = DEFAULT_FAMILY,
    acceleration: int = DEFAULT_ACCELERATION,
    device: str = "cpu",
    figure: FigureRequest | None = None,
    training_root: Path | None = None,
) -> BenchmarkResult:
    """Reconstruct (``--run``, ``--bound``) and score every method, write the tables and one figure per family.

    Parameters
    ----------
    data : Path
        Folder of fastMRI-layout ``.h5`` volumes with ``reconstruction_rss``.
    methods : sequence of Method
        Rows, in order (names safe and unique; a ``bound`` method stands for its rows, :func:`expand_bound`).
    output : Path
        Folder of the reports, figures and ``predictions/<NAME>``.
    metrics : sequence of str
        Keys of :data:`direct_nextaccel.metrics.METRICS`, in column order.
    contrasts : sequence of str, optional
        Subset of :data:`CONTRASTS`; default those present in ``data``.
    family : str
        Family of methods with neither ``@FAMILY`` nor a config masking.
    acceleration : int
        Acceleration of every nested inference masking (each run's config, written to ``configs/<NAME>.yaml``) and
        of the zero-filled reference; runs with other masks keep their config's.
    device : str
        ``cpu`` or a CUDA device, for ``direct predict``.
    figure : FigureRequest, optional
        Figure settings; None draws no figure.
    training_root : Path, optional
        Training folder of the memorisation diagnostic (fastMRI layout, ``reconstruction_rss``); None: none.

    Returns
    -------
    BenchmarkResult
        Tables, report paths and figure paths.

    Raises
    ------
    ValueError
        Bad input that concerns every method (data folder or file, training folder or file, metric, contrast,
        family, unsafe or duplicate name, figure slice).
    """
    from direct_nextaccel.masks.nested import MASK_NAMES, family_of

    started = started_now()
    if unknown := [metric for metric in metrics if metric not in METRIC_LABELS]:
        raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(METRIC_LABELS)}")
    if unknown := [contrast for contrast in contrasts or () if contrast not in CONTRASTS]:
        raise ValueError(f"unknown contrast(s) {unknown}; known: {', '.join(CONTRASTS)}")
    for method in methods:
        check_name(method.name)  # before anything is written: the name becomes a folder under --output
    family = family_of(family)
    for method in methods:
        if method.family:
            family_of(method.family)
    rows = [row for method in methods for row in (expand_bound(method, family) if method.bound else [method])]
    names = [row.name for row in rows]
    if duplicates := sorted({name for name in names if names.count(name) > 1}):
        raise ValueError(f"method name(s) {duplicates} given more than once")
    volumes = find_volumes(data, contrasts)
    if figure is not None:
        _panels(figure, volumes)  # bad figure settings fail before any prediction is made
    training = None if training_root is None else TrainingTargets.read(training_root)

    entries = [prepare(row, data, output, family, device, acceleration) for row in rows]
    tables, figures = [], {}
    for name in list(dict.fromkeys(entry.family for entry in entries)) or [family]:
        members = [entry for entry in entries if entry.family == name]
        working = [e for e in members if e.masking is not None and e.row.error is None]
        working.sort(key=lambda e: e.method.kind == "bound")  # the methods' own mask first, a bound's if only bounds
        masking = working[0].masking if working else None
        if masking is None and name in MASK_NAMES:
            masking = {"name": MASK_NAMES[name], "accelerations": [acceleration]}
        panels = _panels(figure, volumes) if figure is not None else None
        table = score_family(name, members, volumes, data, masking, metrics, panels, training)
        table.memory = (
            "torch's peak CUDA allocation of the direct predict process"
            if device != "cpu"
            else "peak resident memory of the direct predict process (Python, torch and DIRECT included)"
        )
        tables.append(table)
        if panels is not None and panels.target is not None:
            figures[name] = _draw(output / f"figure_{name}.png", table, panels, figure.zoom_box)
    notes = _notes(tables, device)
    settings = _settings(data, rows, metrics, device, training_root)
    reports = write_reports(tables, output, settings, notes, started=started, environment=environment(device))
    return BenchmarkResult(tables, notes, reports, figures)


def _panels(figure: FigureRequest, volumes: Sequence[Volume]) -> Panels:
    """Empty panels for the requested volume (default the first) and slice (default the middle one).

    Raises
    ------
    ValueError
        If the volume is not benchmarked, or the slice or zoom box lies outside it.
    """
    from direct_nextaccel.benchmark.figures import check_zoom_box

    names = [volume.path.name for volume in volumes]
    if figure.volume is not None and figure.volume not in names:
        raise ValueError(f"figure volume {figure.volume} is not one of the benchmarked volumes {names}")
    shown = volumes[names.index(figure.volume)] if figure.volume else volumes[0]
    slice_index = shown.shape[0] // 2 if figure.slice_index is None else figure.slice_index
    if not 0 <= slice_index < shown.shape[0]:
        raise ValueError(f"figure slice {slice_index} is outside {shown.path.name}'s {shown.shape[0]} slices")
    if figure.zoom_box is not None:
        check_zoom_box(figure.zoom_box, shown.shape[-2:])
    return Panels(shown, slice_index)


def _draw(path: Path, table: FamilyTable, panels: Panels, zoom_box: Sequence[int] | None) -> Path:
    """The family's comparison figure (methods that failed left out), saved as PNG at ``path``."""
    from direct_nextaccel.benchmark.figures import comparison_figure

    panels = panels.without({row.name for row in table.rows if row.error is not None})
    bounds = {row.name for row in table.rows if row.kind == "bound"}
    panels.reconstructions = {(n + BOUND_MARK if n in bounds else n): v for n, v in panels.reconstructions.items()}
    panels.uncertainties = {(n + BOUND_MARK if n in bounds else n): v for n, v in panels.uncertainties.items()}
    title = f"{table.family}, R = {table.acceleration}: {panels.volume.path.name}, slice {panels.slice_index}"
    image = comparison_figure(
        panels.target,
        panels.reconstructions,
        data_range=panels.data_range,
        uncertainties=panels.uncertainties,
        zoom_box=zoom_box,
        title=title,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def _settings(
    data: Path, methods: Sequence[Method], metrics: Sequence[str], device: str, training_root: Path | None
) -> dict:
    return {
        "data": str(data),
        "device": device,
        "metrics": list(metrics),
        "training_root": training_root and str(training_root),
        "contrast_of_acquisition": CONTRAST_OF_ACQUISITION,
        "methods": {
            m.name: {
                "family": m.family,
                "kind": m.kind,
                "run": m.run,
                "overrides": dict(m.overrides),
                "predictions": m.predictions and str(m.predictions),
            }
            for m in methods
        },
    }


def _notes(tables: Sequence[FamilyTable], device: str) -> list[str]:
    from direct_nextaccel.metrics import WEIGHTS_UNAVAILABLE

    notes = [
        "Metrics per volume with fastMRI's conventions (data range = maximum of the target volume), mean over the "
        "volumes of each contrast; T1 = AXT1, AXT1PRE, AXT1POST; T2 = AXT2; FLAIR = AXFLAIR.",
        f"{ZERO_FILLED}: root-sum-of-squares of the k-space under the family's mask, seeded from the file name so "
        "that it does not depend on where the data sits (DIRECT's use_seed seeds the models' masks from the full "
        "path given to --data-root: with a mask function that uses its whole seed, that is another draw of the same "
        "family and acceleration).",
        f"s/slice ({device}): DIRECT's own clock of its reconstruction loop (data loading, transforms, sensitivity "
        "estimation, network, cropping) divided by the slices; start-up and checkpoint loading excluded. "
        "— = not run by the benchmark (existing predictions, zero-filled).",
    ]
    if any(row.kind == "bound" for table in tables for row in table.rows):
        notes.append(
            f"{BOUND_MARK.strip()}: a tokenizer's ceiling, not a method: direct predict of the tokenizer, which "
            "decodes the fully sampled slice from its own tokens (-all-levels: the tokens of all six levels; "
            "-R32-tokens: the R = 32 tokens alone; -all-scales: every scale of the MSVQ-VAE). It sees the fully "
            "sampled data, so it is never bold; it bounds the models that decode through that tokenizer (before any "
            "data-consistency step)."
        )
    if any(WEIGHTS_UNAVAILABLE in row.scores.get(m, {}).values() for t in tables for row in t.rows for m in t.metrics):
        notes.append(
            f"{WEIGHTS_UNAVAILABLE}: the metric's pretrained weights are not on this machine "
            "(see `direct-nextaccel doctor`; point --weights-dir or $DIRECT_NEXTACCEL_WEIGHTS_DIR at them)."
        )
    return notes

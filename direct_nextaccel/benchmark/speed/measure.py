"""Time a task's methods in one process on one device and assemble the result (:func:`benchmark`).

A result is a :class:`~direct_nextaccel.benchmark.results.Result` with the speed keys: ``task``, the ``rows`` of
:func:`~direct_nextaccel.benchmark.speed.timing.summarize`, the ``ratios`` of :func:`compute_ratios` and the paper's
timings (``paper_reference``, None where the task has none).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from direct_nextaccel.benchmark.naming import resolve_run
from direct_nextaccel.benchmark.results import SCHEMA_VERSION, environment, started_now
from direct_nextaccel.benchmark.speed.models import baseline_methods
from direct_nextaccel.benchmark.speed.reconstruction import RECONSTRUCTION
from direct_nextaccel.benchmark.speed.superresolution import SUPERRESOLUTION
from direct_nextaccel.benchmark.speed.task import MODES, REPOSITORY, Source, Task, resolve_config
from direct_nextaccel.benchmark.speed.timing import MEMORY_MEASURES, resolve_device, time_methods

TASKS: dict[str, Task] = {task.name: task for task in (RECONSTRUCTION, SUPERRESOLUTION)}
"""``--task`` -> what it times."""
ALL_MODELS = tuple(dict.fromkeys(model for task in TASKS.values() for model in task.models))
ALL_CHECKPOINTS = tuple(dict.fromkeys(name for task in TASKS.values() for name in task.checkpoints))
"""Every network name of every task: the names ``--run`` and ``--checkpoint-NAME`` take."""

TIMED = "masked k-space, mask and sensitivity estimate on the device -> magnitude image (B, H, W)"


def check_options(
    config: str,
    device: str,
    batch_sizes: Sequence[int],
    repeats: int,
    warmup: int,
    modes: Sequence[str],
    models: Sequence[str],
    checkpoints: Mapping[str, str | os.PathLike | None],
    task: str = "reconstruction",
    runs: Mapping[str, str] | None = None,
) -> None:
    """Raise ``ValueError``/``FileNotFoundError`` naming the first bad option of :func:`benchmark`."""
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {tuple(TASKS)}")
    spec = TASKS[task]
    if config not in spec.setups:
        raise ValueError(f"config {config!r} is not one of {tuple(spec.setups)}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not one of ('cpu', 'cuda')")
    if not batch_sizes:
        raise ValueError("batch_sizes is empty")
    for size in batch_sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"batch size {size!r} is not a positive integer")
    if len(set(batch_sizes)) != len(batch_sizes):
        raise ValueError(f"batch sizes {list(batch_sizes)} repeat a size")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats {repeats!r} is not a positive integer")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup {warmup!r} is not a non-negative integer")
    if not models:
        raise ValueError(f"models is empty: name some of {spec.models}")
    for model in models:
        if model not in spec.models:
            raise ValueError(f"model {model!r} is not one of {spec.models} of task {task!r}")
    if spec.generator in models and not modes:
        raise ValueError(f"modes is empty: name some of {spec.modes}")
    for mode in modes:
        if mode not in spec.modes:
            raise ValueError(f"mode {mode!r} is not one of {spec.modes} of task {task!r}")
    names = spec.checkpoints
    for name in runs or {}:
        if name not in names:
            raise ValueError(f"--run {name}=...: NAME is one of {', '.join(names)} in task {task!r}")
        if checkpoints.get(name) is not None:
            raise ValueError(f"{name} is given both with --run and --checkpoint-{name}: give one")
    for name, path in checkpoints.items():
        if name not in names:
            raise ValueError(
                f"checkpoint of {name!r}: only {', '.join(names[:-1])} and {names[-1]} load one in task {task!r}"
            )
        if path is not None:
            from direct_nextaccel.core.checkpoints import checkpoint_file

            checkpoint_file(path, f"{name} checkpoint")  # missing, or a folder: named as such


def network_names(task: Task, models: Sequence[str]) -> list[str]:
    """Names of the networks the requested methods are built from, in the task's order."""
    used = {name for model in models for name in task.networks_of(model)}
    return [name for name in task.checkpoints if name in used]


def compute_ratios(rows: Sequence[Mapping[str, Any]], task: str = "reconstruction") -> list[dict[str, Any]]:
    """The ratios of median seconds per slice of ``task``, per batch size, for the rows present in ``rows``.

    A ratio of two rows the paper timed (``--task superresolution``: MIAR's decoding modes) also carries the paper's
    ratio as ``paper_reference``.
    """
    spec = TASKS[task]
    by_key = {(row["method"], row["batch_size"]): row for row in rows}
    ratios = []
    for batch_size in sorted({row["batch_size"] for row in rows}):
        for numerator, denominator, target in spec.ratios:
            if (numerator, batch_size) not in by_key or (denominator, batch_size) not in by_key:
                continue
            value = (
                by_key[numerator, batch_size]["seconds_per_slice"]
                / by_key[denominator, batch_size]["seconds_per_slice"]
            )
            ratio = {
                "label": f"{spec.labels[numerator]} / {spec.labels[denominator]}",
                "numerator": numerator,
                "denominator": denominator,
                "batch_size": batch_size,
                "ratio": value,
                "target_at_most": target,
                "meets_target": None if target is None else value <= target,
            }
            if spec.paper_ms:
                paper = spec.paper_ms
                ratio["paper_reference"] = (
                    paper[numerator] / paper[denominator] if numerator in paper and denominator in paper else None
                )
            ratios.append(ratio)
    return ratios


def benchmark(
    config: str = "tiny",
    device: str = "cpu",
    batch_sizes: Sequence[int] = (1, 8),
    repeats: int = 20,
    warmup: int = 3,
    modes: Sequence[str] = MODES,
    models: Sequence[str] | None = None,
    bf16: bool = False,
    checkpoints: Mapping[str, str | os.PathLike | None] | None = None,
    repo_root: str | os.PathLike = REPOSITORY,
    progress: bool = False,
    task: str = "reconstruction",
    runs: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Time every requested method and decoding mode of a task at every batch size, in one process on one device.

    Parameters
    ----------
    config : str
        ``"paper"`` or ``"tiny"`` (a key of the task's setups).
    device : str
        ``"cpu"`` or ``"cuda"``.
    batch_sizes : Sequence[int]
        Slices per call.
    repeats, warmup : int
        Timed calls per row (median and quartiles over them) and untimed calls before them.
    modes : Sequence[str]
        Decoding modes of the task's autoregressive method (NextAccel or MIAR), of :data:`MODES`.
    models : Sequence[str], optional
        Methods, of the task's :attr:`~direct_nextaccel.benchmark.speed.task.Task.models`; all of them by default.
    bf16 : bool
        bf16 autocast for the autoregressive transformer (see the tasks' runners).
    checkpoints : Mapping[str, path or None], optional
        Weights for networks of the task (:attr:`~direct_nextaccel.benchmark.speed.task.Task.checkpoints`:
        ``"aqvae"``, ``"nextaccel"``, ``"varnet"``, ``"recurrentvarnet"``; superresolution: ``"msvqvae"``,
        ``"miar"``, ``"varnet"``, ``"recurrentvarnet"``, ``"unet"``), built from the setup's config; random weights
        otherwise.
    repo_root : path
        Checkout holding ``projects/`` (the paper-size configs; the tiny ones are package data).
    progress : bool
        Show a tqdm bar over all calls.
    task : str
        ``"reconstruction"`` (NextAccel, issue 4) or ``"superresolution"`` (MIAR, issue 7).
    runs : Mapping[str, str], optional
        Network name -> ``CONFIG.yaml:CHECKPOINT`` or ``RUN_DIR`` (as ``--run NAME=...`` of both benchmark commands,
        :func:`~direct_nextaccel.benchmark.naming.resolve_run`): that network is built from this config instead of
        the setup's, with these weights.

    Returns
    -------
    dict[str, Any]
        A :class:`~direct_nextaccel.benchmark.results.Result`, JSON-ready: the environment (device, versions,
        threads, load), the settings (sizes, mask, how each network was named, options), ``rows`` (see
        :func:`~direct_nextaccel.benchmark.speed.timing.summarize`), ``ratios`` (see :func:`compute_ratios`) and
        ``paper_reference`` (the MIAR paper's timings for the super-resolution task, else None), all from this run.
    """
    spec = TASKS.get(task)
    if models is None and spec is not None:
        models = spec.models
    check_options(config, device, batch_sizes, repeats, warmup, modes, models or (), checkpoints or {}, task, runs)
    checkpoints = {name: path for name, path in (checkpoints or {}).items() if path is not None}
    named_runs = {name: resolve_run(value) for name, value in (runs or {}).items()}
    torch_device = resolve_device(device)
    setup, root = spec.setups[config], Path(repo_root)
    started = started_now()
    load_before = os.getloadavg()

    sources, methods_settings = {}, {}
    for name in network_names(spec, models):
        if name in named_runs:
            config_path, checkpoint = named_runs[name]
            sources[name] = Source(config_path, checkpoint)
            methods_settings[name] = {"run": runs[name], "config": str(config_path), "checkpoint": str(checkpoint)}
        else:
            checkpoint = checkpoints.get(name)
            sources[name] = Source(resolve_config(setup.configs[name], root), checkpoint and Path(checkpoint))
            methods_settings[name] = {
                "run": None,
                "config": setup.configs[name],
                "checkpoint": checkpoint and str(checkpoint),
            }
    rows_of_generator = [mode for mode in spec.modes if mode in modes]
    methods = [spec.build_generator(sources, rows_of_generator, bf16)] if spec.generator in models else []
    methods += baseline_methods(spec.models[1:], models, sources)
    rows = time_methods(
        methods,
        lambda size: spec.make_batch(setup, size, torch_device),
        spec.labels,
        batch_sizes,
        repeats,
        warmup,
        torch_device,
        progress,
    )
    return {
        "benchmark": "direct-nextaccel speed",
        "schema": SCHEMA_VERSION,
        "started": started,
        "task": task,
        "environment": {
            **environment(device),
            "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg()),
        },
        "settings": {
            "config": config,
            "matrix": list(setup.matrix),
            "coils": setup.coils,
            "coil_source": setup.coil_source,
            "mask": spec.mask,
            "methods": methods_settings,
            "bf16": f"{spec.transformer} transformer under bf16 autocast" if bf16 else False,
            "batch_sizes": list(batch_sizes),
            "repeats": repeats,
            "warmup": warmup,
            "timed": TIMED,
            "memory_measure": MEMORY_MEASURES[torch_device.type],
        },
        "rows": rows,
        "ratios": compute_ratios(rows, task),
        "paper_reference": (
            {"source": spec.paper_source, "ms_per_slice": dict(spec.paper_ms)} if spec.paper_ms else None
        ),
    }

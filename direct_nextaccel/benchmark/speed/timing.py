"""Timing one method's reconstructions: stage clock, peak memory, the statistics of a row, and the timing loop.

Stages are timed separately (with a device synchronisation between them on GPU) and reported per slice next to the
total. A row's time is the median over the timed repeats (with the quartiles and every sample), after untimed warm-up
calls; each method is on the device only while its rows run, so peak memory is that of one method (see
:data:`MEMORY_MEASURES`).
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """``torch.device`` for ``"cpu"`` or ``"cuda"``; refuses CUDA without a GPU."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch.cuda.is_available() is False")
    return torch.device(device)


class StageClock:
    """Wall-clock seconds of consecutive stages of one call; waits for the GPU at every stage boundary."""

    def __init__(self, device: torch.device) -> None:
        import torch

        self._sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.stages: dict[str, float] = {}
        self._sync()
        self._last = time.perf_counter()

    def __call__(self, stage: str) -> None:
        """End ``stage``: it lasted from the previous call (or the clock's creation) until now."""
        self._sync()
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self._last
        self._last = now


Runner = Callable[[dict[str, Any], StageClock], Any]
"""One reconstruction of a batch, reporting its stages to the clock; returns the magnitude images (B, H, W)."""

Runner = Callable[[dict[str, Any], StageClock], Any]
"""One reconstruction of a batch, reporting its stages to the clock; returns the magnitude images (B, H, W)."""


_MIB = 2**20

MEMORY_MEASURES = {
    "cuda": "torch.cuda.max_memory_allocated over the timed repeats, with only the row's networks and batch on the GPU",
    "cpu": (
        "weights and batch plus the growth of the peak resident set over the timed repeats (Linux VmHWM, reset through "
        "/proc/self/clear_refs, after malloc_trim), i.e. what the row adds to the process; null where /proc is absent"
    ),
}


def _proc_status_kib(key: str) -> int | None:
    """A ``kB`` entry (``VmRSS``, ``VmHWM``) of ``/proc/self/status``, or None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> int | None:
    """Return freed heap memory to the OS, reset the peak resident set and return the current one (KiB), or None."""
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc keeps freed buffers of earlier rows resident, hiding new growth
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current VmRSS
    except OSError:
        return None
    return _proc_status_kib("VmRSS")


class PeakMemory:
    """Peak memory (MiB) of the work inside a ``with`` block, measured as :data:`MEMORY_MEASURES` says.

    Parameters
    ----------
    device : torch.device
        Where the work runs.
    resident_bytes : int
        Weights and inputs of the row, already resident on the CPU before the block (ignored on GPU, where
        ``max_memory_allocated`` sees them).
    """

    def __init__(self, device: torch.device, resident_bytes: int) -> None:
        self.device = device
        self.resident_bytes = resident_bytes
        self.mib: float | None = None
        self._rss_before: int | None = None

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._rss_before = _reset_peak_rss()
        return self

    def __exit__(self, *exc_info: object) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = torch.cuda.max_memory_allocated(self.device) / _MIB
            return
        peak = _proc_status_kib("VmHWM")
        if self._rss_before is not None and peak is not None:
            self.mib = (self.resident_bytes + 1024 * max(peak - self._rss_before, 0)) / _MIB


def _tensor_bytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class TimedMethod:
    """One timed method: its networks (moved to the device while it runs) and one runner per table row."""

    modules: list[nn.Module]
    runners: dict[str, Runner]

    def weights_bytes(self) -> int:
        return _tensor_bytes([t for m in self.modules for t in (*m.parameters(), *m.buffers())])

    def parameters(self) -> int:
        return sum(p.numel() for m in self.modules for p in m.parameters())

    def to(self, device: torch.device) -> None:
        for module in self.modules:
            module.to(device)


def summarize(
    name: str,
    label: str,
    batch_size: int,
    samples: Sequence[Mapping[str, float]],
    peak_mib: float | None,
    parameters: int,
) -> dict[str, Any]:
    """One table row (a :class:`~direct_nextaccel.benchmark.results.Row` with the speed keys) from the stage times
    (seconds per call) of the timed repeats: ``seconds_per_slice`` is their median per slice."""
    import numpy as np

    totals = np.array([sum(stages.values()) for stages in samples]) / batch_size  # seconds per slice
    q25, median, q75 = (float(q) for q in np.percentile(totals, [25, 50, 75]))
    stages = {stage: float(np.median([s[stage] for s in samples])) / batch_size for stage in samples[0]}
    return {
        "method": name,
        "label": label,
        "kind": "method",
        "status": "ok",
        "error": None,
        "seconds_per_slice": median,
        "peak_memory_mib": peak_mib,
        "batch_size": batch_size,
        "repeats": len(samples),
        "seconds_per_slice_quartiles": {"median": median, "q25": q25, "q75": q75, "iqr": q75 - q25},
        "seconds_per_slice_samples": totals.tolist(),
        "stage_seconds_per_slice": stages,
        "parameters": parameters,
    }


def time_methods(
    methods: Sequence[TimedMethod],
    make_batch: Callable[[int], dict[str, torch.Tensor]],
    labels: Mapping[str, str],
    batch_sizes: Sequence[int],
    repeats: int,
    warmup: int,
    device: torch.device,
    progress: bool,
) -> list[dict[str, Any]]:
    """Rows of every method's runners at every batch size, each method on the device only while it runs."""
    import torch
    from tqdm import tqdm

    rows = []
    calls = sum(len(m.runners) for m in methods) * len(batch_sizes) * (warmup + repeats)
    benchmark_cudnn = torch.backends.cudnn.benchmark
    bar = tqdm(total=calls, desc="speed", unit="call", disable=not progress)
    try:
        # `direct predict` lets cuDNN pick its fastest kernels; the warm-up calls absorb that search.
        torch.backends.cudnn.benchmark = device.type == "cuda"
        with torch.inference_mode():
            for method in methods:
                method.to(device)
                for batch_size in batch_sizes:
                    batch = make_batch(batch_size)
                    resident = method.weights_bytes() + _tensor_bytes(list(batch.values()))
                    for name, runner in method.runners.items():
                        bar.set_description(f"{labels[name]}, batch {batch_size}")
                        logger.info(
                            "Timing %s at batch %d: %d warm-up and %d timed calls.",
                            labels[name],
                            batch_size,
                            warmup,
                            repeats,
                        )
                        for _ in range(warmup):
                            runner(batch, StageClock(device))
                            bar.update()
                        samples = []
                        with PeakMemory(device, resident) as memory:
                            for _ in range(repeats):
                                clock = StageClock(device)
                                runner(batch, clock)
                                samples.append(clock.stages)
                                bar.update()
                        row = summarize(name, labels[name], batch_size, samples, memory.mib, method.parameters())
                        rows.append(row)
                        logger.info(
                            "%s, batch %d: %.4g s per slice (median of %d).",
                            labels[name],
                            batch_size,
                            row["seconds_per_slice"],
                            repeats,
                        )
                    del batch
                method.to(torch.device("cpu"))
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    finally:
        bar.close()
        torch.backends.cudnn.benchmark = benchmark_cudnn
    return rows

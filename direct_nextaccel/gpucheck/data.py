"""The check's own small data set: fastMRI-layout files at the tier's matrix and coil count, nothing downloaded.

Brain volumes (``.npz`` as in ``shared/data/brain``) when there are any (``--brain``; by default the checkout's
``../shared/data/brain``): one training-side and one validation-side file (``train.npz`` / ``val.npz`` when a folder
holds both, as the GPU kit's does, else the first file of each side of the project's subject split, else the first
and last file), through ``direct-nextaccel simulate``'s own :func:`~direct_nextaccel.data.simulate.simulate_npz`.
Without any, synthetic head phantoms (ellipses that change from slice to slice) go through the same
:func:`~direct_nextaccel.data.simulate.simulate_volume` and :func:`~direct_nextaccel.data.fastmri_h5.write_fastmri_h5`.

Training: two contrasts of ``train_slices`` central slices each; validation (also the prediction input): one contrast
of ``val_slices`` slices. One folder pair per (matrix, coils), so the reconstruction and super-resolution engines share
it when their coil counts agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DataSet", "phantom_volume", "pick_sources", "write_data"]


@dataclass(frozen=True)
class DataSet:
    """One written data set: its ``train`` and ``val`` folders and how it was made."""

    train: Path
    val: Path
    matrix: tuple[int, int]
    coils: int
    source: str
    train_slices: int
    val_slices: int

    def describe(self) -> str:
        return (
            f"{self.matrix[0]} x {self.matrix[1]}, {self.coils} coil{'s' if self.coils != 1 else ''}: "
            f"{self.train_slices} training and {self.val_slices} validation slices from {self.source}"
        )


def pick_sources(brain: Path | None) -> tuple[Path, Path] | None:
    """``(training file, validation file)`` among the ``.npz`` volumes of ``brain`` (a file or a folder), None when
    there are none."""
    if brain is None or not brain.exists():
        return None
    if brain.is_file():
        return (brain, brain) if brain.suffix.lower() == ".npz" else None
    files = sorted(brain.glob("*.npz"))
    if not files:
        return None
    by_stem = {path.stem: path for path in files}
    if "train" in by_stem and "val" in by_stem:
        return by_stem["train"], by_stem["val"]
    from direct_nextaccel.data.simulate import split_side

    sides: dict[str, list[Path]] = {"train": [], "val": []}
    for path in files:
        try:
            sides[split_side(path)[1]].append(path)
        except ValueError:
            continue
    if sides["train"] and sides["val"]:
        return sides["train"][0], sides["val"][0]
    return files[0], files[-1]


def phantom_volume(slices: int, size: int = 240, seed: int = 0) -> np.ndarray:
    """A synthetic head: an outer ellipse with a darker rim and bright inner ellipses that move from slice to slice,
    float32 ``(slices, size, size)``, non-negative."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    blobs = rng.uniform([-0.4, -0.4, 0.08, 0.08, 0.3], [0.4, 0.4, 0.25, 0.25, 1.0], size=(6, 5))
    volume = np.zeros((slices, size, size), dtype=np.float32)
    for index in range(slices):
        shrink = 1.0 - 0.15 * abs(index - (slices - 1) / 2) / max(slices, 1)
        head = (xx / (0.72 * shrink)) ** 2 + (yy / (0.9 * shrink)) ** 2 <= 1
        brain = (xx / (0.64 * shrink)) ** 2 + (yy / (0.82 * shrink)) ** 2 <= 1
        image = 0.6 * head + 0.4 * brain
        shift = 0.04 * (index - slices / 2)
        for cx, cy, ax, ay, value in blobs:
            image += value * (((xx - cx - shift) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1) * brain
        volume[index] = image
    return volume


def _phantom_files(folder: Path, contrasts: int, slices: int, coils: int, matrix: tuple[int, int], seed: int) -> None:
    from direct_nextaccel.data.fastmri_h5 import fastmri_filename, write_fastmri_h5
    from direct_nextaccel.data.simulate import simulate_volume

    for index, acquisition in enumerate(("AXT1", "AXT2")[:contrasts]):
        volume = phantom_volume(slices, seed=seed + index)
        if index:  # T2-like: the contrast inverted inside the head
            volume = np.where(volume > 0, volume.max() + 0.2 - volume, 0.0).astype(np.float32)
        kspace, _ = simulate_volume(volume, coils=coils, matrix=matrix, seed=seed + index)
        write_fastmri_h5(
            folder / fastmri_filename(acquisition, f"900_{seed:04d}"),
            kspace,
            acquisition,
            patient_id=f"gpucheck_phantom_{seed}",
            overwrite=True,
        )


def _npz_files(
    folder: Path, npz: Path, contrasts: int, slices: int, coils: int, matrix: tuple[int, int], seed: int
) -> None:
    from direct_nextaccel.data.simulate import npz_contrasts, simulate_npz

    chosen = npz_contrasts(npz)[:contrasts]
    simulate_npz(
        npz,
        folder,
        contrasts=chosen,
        coils=coils,
        matrix=matrix,
        seed=seed,
        overwrite=True,
        progress=False,
        max_slices=slices,
    )


def write_data(
    output: Path, matrix: tuple[int, int], coils: int, train_slices: int, val_slices: int, brain: Path | None
) -> DataSet:
    """Write the training and validation files of one (matrix, coils) under ``output`` (replacing earlier ones)."""
    import shutil

    root = output / f"data_{matrix[0]}x{matrix[1]}_{coils}c"
    folders = {"train": root / "train", "val": root / "val"}
    for folder in folders.values():
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    sources = pick_sources(brain)
    plan = {"train": (2, train_slices, 1), "val": (1, val_slices, 2)}  # contrasts, slices, seed
    if sources is None:
        for split, (contrasts, slices, seed) in plan.items():
            _phantom_files(folders[split], contrasts, slices, coils, matrix, seed)
        source = "synthetic phantoms"
    else:
        for split, npz in zip(("train", "val"), sources, strict=True):
            contrasts, slices, seed = plan[split]
            _npz_files(folders[split], npz, contrasts, slices, coils, matrix, seed)
        source = f"{sources[0].name} (training), {sources[1].name} (validation)"
    counts = {}
    import h5py

    for split, folder in folders.items():
        counts[split] = 0
        for path in sorted(folder.glob("*.h5")):
            with h5py.File(path, "r") as file:
                counts[split] += int(file["kspace"].shape[0])
    return DataSet(folders["train"], folders["val"], matrix, coils, source, counts["train"], counts["val"])

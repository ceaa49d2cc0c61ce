"""Regenerate the demo set of this folder from the shared brain volumes (deterministic: same inputs, same bytes).

    .venv/bin/python direct_nextaccel/demo_data/make_demo_set.py ../shared/data/brain

For each source of :data:`SOURCES` and each contrast of :data:`CONTRASTS` it follows the first steps of
``direct-nextaccel simulate`` (:mod:`direct_nextaccel.data.simulate`): negatives clipped, the volume divided by the 99th
percentile of its positive voxels, slices with less than 5 % foreground dropped; then it keeps
``SOURCES[stem][1]`` slices evenly spread over the central half of the remaining ones, brings them to square pixels in a
64 x 64 matrix (exact area averaging, centre zero-padding) and stores them as uint16 (each contrast scaled so its
largest stored value is 65535) in ``<stem>.npz`` with the shared layout: arrays ``t1``, ``t2``, ``flair`` of shape
(slices, 64, 64), ``voxel_size_mm`` (slice, row, col) and ``source_slice_indices``. ``SHA256SUMS`` lists every file;
:mod:`direct_nextaccel.demo_set` checks it before the demo reads the set.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

from direct_nextaccel.data.simulate import FOREGROUND_THRESHOLD, fit_to_matrix, reference_intensity, resampled_shape

MATRIX = (64, 64)
CONTRASTS = ("t1", "t2", "flair")
SOURCES: dict[str, tuple[str, int]] = {
    # stem -> (side of the subject split of shared/data/brain/README.md, slices kept per contrast). Only the
    # skull-stripped, co-registered volumes: the demo's training and validation images are alike.
    "tcga_du_7294_skullstripped": ("train", 16),
    "lesjak_cs_patient07": ("train", 16),
    "lesjak_cs_patient26": ("train", 16),
    "tcga_fg_6692_skullstripped": ("val", 4),
    "lesjak_cs_patient19": ("val", 4),
}
MANIFEST = "SHA256SUMS"


def spread_slices(volume: np.ndarray, count: int) -> np.ndarray:
    """``count`` slice indices evenly spread over the central half of the slices with at least 5 % foreground."""
    fractions = (volume > FOREGROUND_THRESHOLD).mean(axis=(1, 2))
    kept = np.flatnonzero(fractions >= 0.05)
    quarter = len(kept) // 4
    central = kept[quarter : len(kept) - quarter]
    return central[np.round(np.linspace(0, len(central) - 1, count)).astype(int)]


def demo_volume(path: Path, count: int) -> dict[str, np.ndarray]:
    """The arrays of one demo file (module docstring) from the shared volume ``path``."""
    with np.load(path, allow_pickle=False) as archive:
        volumes = {contrast: archive[contrast] for contrast in CONTRASTS}
        slice_mm, row_mm, col_mm = (float(v) for v in archive["voxel_size_mm"])
    arrays: dict[str, np.ndarray] = {}
    indices = None
    for contrast, raw in volumes.items():
        volume = np.clip(raw.astype(np.float32), 0.0, None)
        volume /= reference_intensity(volume)
        if indices is None:  # the first contrast chooses; co-registered contrasts share the slices
            indices = spread_slices(volume, count)
        slices = fit_to_matrix(volume[indices], MATRIX, (row_mm, col_mm))
        arrays[contrast] = np.round(slices / slices.max() * 65535).astype(np.uint16)
    _, (pixel_row, pixel_col) = resampled_shape(next(iter(volumes.values())).shape[1:], (row_mm, col_mm), MATRIX)
    step = float(np.median(np.diff(indices))) if len(indices) > 1 else 1.0
    arrays["voxel_size_mm"] = np.array([slice_mm * step, pixel_row, pixel_col], dtype=np.float32)
    arrays["source_slice_indices"] = indices.astype(np.int32)
    return arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A compressed ``.npz`` with fixed member timestamps, so the same arrays always give the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue(), compresslevel=9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("brain", type=Path, help="the shared brain folder (../shared/data/brain)")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent, help="default: this folder")
    args = parser.parse_args(argv)
    lines = []
    for stem, (_, count) in SOURCES.items():
        target = args.output / f"{stem}.npz"
        write_npz(target, demo_volume(args.brain / f"{stem}.npz", count))
        lines.append(f"{hashlib.sha256(target.read_bytes()).hexdigest()}  {target.name}\n")
    (args.output / MANIFEST).write_text("".join(lines))
    total = sum((args.output / f"{stem}.npz").stat().st_size for stem in SOURCES)
    print(f"wrote {len(SOURCES)} files, {total / 1e3:.0f} kB, to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

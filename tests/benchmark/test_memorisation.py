"""The memorisation diagnostic's numbers: correlations against a brute-force reference, the ordering that betrays a
memorised slice, resampling, flat images and unreadable training files."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from direct_nextaccel.benchmark.memorisation import (
    Memorisation,
    TrainingTargets,
    flat_slices,
    normalised_rows,
    pearson,
    resample,
)


def blobs(count: int, size: int, seed: int) -> np.ndarray:
    """``count`` smooth random non-negative images: a few Gaussian blobs each, all different."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = np.zeros((count, size, size), np.float32)
    for index in range(count):
        for _ in range(4):
            cy, cx, width = rng.random(), rng.random(), 0.05 + 0.2 * rng.random()
            images[index] += rng.random() * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / width**2)
    return images


def write_targets(folder: Path, volumes: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, volume in volumes.items():
        with h5py.File(folder / name, "w") as file:
            file.create_dataset("reconstruction_rss", data=volume)
    return folder


def brute_force(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_correlations_match_numpy_and_the_closest_slice_is_found(tmp_path):
    train = {"a.h5": blobs(3, 32, seed=1), "b.h5": blobs(4, 32, seed=2)}
    training = TrainingTargets.read(write_targets(tmp_path / "train", train))
    assert training.slices == 7 and training.describe() == f"7 slices of 2 files in {tmp_path / 'train'} (32x32)"
    queries = blobs(5, 32, seed=3)
    closest = training.closest(queries)
    all_train = [(f"{name}[{i}]", image) for name, volume in train.items() for i, image in enumerate(volume)]
    for index, query in enumerate(queries):
        reference = [(brute_force(query, image), label) for label, image in all_train]
        best, label = max(reference)
        assert closest.correlation[index] == pytest.approx(best, abs=1e-5)
        assert closest.labels[index] == label
    own = pearson(queries, queries[::-1])
    assert own[0] == pytest.approx(brute_force(queries[0], queries[-1]), abs=1e-6)
    assert pearson(queries, 3.0 * queries + 7.0) == pytest.approx(np.ones(5), abs=1e-6)  # scale and offset free


def test_a_memorised_training_slice_reverses_the_ordering(tmp_path):
    """A 'reconstruction' that IS a training slice correlates 1 with training and less with its own target; a
    faithful reconstruction is the other way round."""
    train = blobs(6, 32, seed=4)
    training = TrainingTargets.read(write_targets(tmp_path / "train", {"t.h5": train}))
    targets = blobs(3, 32, seed=5)
    memorised = train[[2, 0, 5]]
    own = pearson(memorised, targets)
    closest = training.closest(memorised)
    assert closest.correlation == pytest.approx(np.ones(3), abs=1e-5)
    assert closest.labels == ["t.h5[2]", "t.h5[0]", "t.h5[5]"]
    assert (closest.correlation > own).all() and (own < 0.99).all()

    faithful = targets + 0.01 * np.random.default_rng(0).standard_normal(targets.shape).astype(np.float32)
    own_faithful, closest_faithful = pearson(faithful, targets), training.closest(faithful).correlation
    assert (own_faithful > 0.99).all() and (own_faithful > closest_faithful).all()

    collected = Memorisation()
    collected.add(own, closest.correlation)
    collected.add(own_faithful, closest_faithful)
    summary = collected.summary()
    assert summary["closer_to_training"] == 3 and summary["slices"] == 6 and summary["undefined"] == 0
    assert summary["own"] == pytest.approx(np.mean([*own, *own_faithful]))
    assert summary["closest_training"] == pytest.approx(np.mean([*closest.correlation, *closest_faithful]))


def smooth(size: int, shift: float) -> np.ndarray:
    """One analytic smooth image sampled at pixel centres of a size x size grid (same field of view at any size)."""
    centres = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    return (np.exp(-((yy - 0.5) ** 2 + (xx - shift) ** 2) / 0.03) + 0.5 * np.exp(-((yy - 0.3) ** 2) / 0.01)).astype(
        np.float32
    )


def test_training_slices_of_another_size_are_resampled_bilinearly(tmp_path):
    """Training at 32 x 32, validation at 64 x 64 of the same field of view: the same anatomy is found."""
    train = np.stack([smooth(32, 0.3), smooth(32, 0.7)])
    training = TrainingTargets.read(write_targets(tmp_path / "train", {"small.h5": train}))
    queries = np.stack([smooth(64, 0.7), smooth(64, 0.3)])
    closest = training.closest(queries)
    assert closest.labels == ["small.h5[1]", "small.h5[0]"]
    assert (closest.correlation > 0.995).all()
    assert resample(train, (64, 64)).shape == (2, 64, 64) and resample(train, (32, 32)) is train
    assert training.matrix((64, 64))[0].shape == (2, 64 * 64)
    assert training.matrix((64, 64)) is training.matrix((64, 64))  # normalised once per size


def test_flat_images_have_no_correlation_and_flat_training_slices_are_left_out(tmp_path):
    train = blobs(3, 16, seed=7)
    train[1] = 0.0  # an empty training slice
    training = TrainingTargets.read(write_targets(tmp_path / "train", {"t.h5": train}))
    matrix, labels, skipped = training.matrix((16, 16))
    assert matrix.shape == (2, 256) and labels == ["t.h5[0]", "t.h5[2]"] and skipped == 1
    queries = np.stack([np.zeros((16, 16), np.float32), np.full((16, 16), 5.0, np.float32), train[2]])
    closest = training.closest(queries)
    assert np.isnan(closest.correlation[:2]).all() and closest.labels[:2] == [None, None]
    assert closest.correlation[2] == pytest.approx(1.0, abs=1e-5)
    _, flat = normalised_rows(queries)
    assert flat.tolist() == [True, True, False]
    collected = Memorisation()
    collected.add(pearson(queries, np.stack([train[0]] * 3)), closest.correlation)
    assert collected.summary()["undefined"] == 2 and collected.summary()["slices"] == 1


def test_flat_slices_counts_empty_outputs_but_not_empty_targets():
    target = blobs(3, 16, seed=8)
    target[2] = 0.0
    prediction = target.copy()
    prediction[0] = 0.0  # all zero where the target has structure: flat
    prediction[1] = 0.001 * target[1]  # scaled down to almost nothing: still correlated, but flat by 1% of spread
    assert flat_slices(prediction, target) == 2
    assert flat_slices(target, target) == 0  # the empty target slice predicted empty is right, not flat


def test_unreadable_or_unusable_training_folders_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match=r"^training folder .*missing does not exist$"):
        TrainingTargets.read(tmp_path / "missing")
    folder = tmp_path / "train"
    folder.mkdir()
    with h5py.File(folder / "kspace_only.h5", "w") as file:
        file.create_dataset("kspace", data=np.zeros((1, 1, 4, 4), np.complex64))
    with pytest.raises(ValueError, match=r"^training folder .*train has no \.h5 file with a reconstruction_rss$"):
        TrainingTargets.read(folder)
    (folder / "garbage.h5").write_bytes(b"not an HDF5 file at all")
    with pytest.raises(ValueError, match=r"^training file .*garbage\.h5 cannot be read as HDF5: ") as error:
        TrainingTargets.read(folder)
    assert "\n" not in str(error.value)
    (folder / "garbage.h5").unlink()
    write_targets(folder, {"flat2d.h5": np.zeros((4, 4), np.float32)})
    with pytest.raises(ValueError, match=r"flat2d\.h5: reconstruction_rss has shape \(4, 4\)"):
        TrainingTargets.read(folder)
    (folder / "flat2d.h5").unlink()
    write_targets(folder, {"nan.h5": np.full((1, 4, 4), np.nan, np.float32)})
    with pytest.raises(ValueError, match=r"nan\.h5: reconstruction_rss has non-finite values"):
        TrainingTargets.read(folder)
    (folder / "nan.h5").unlink()
    write_targets(folder, {"big.h5": blobs(2, 16, seed=9)})
    training = TrainingTargets.read(folder, max_bytes=1000)
    with pytest.raises(ValueError, match=r"holds 2 slices: their 16x16 correlation matrix needs 0\.0 GiB, over"):
        training.closest(blobs(1, 16, seed=10))

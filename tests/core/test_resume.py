"""Resume that reproduces (issue 15): a run interrupted with Ctrl-C and continued with ``--resume`` ends bit for bit
where the uninterrupted run ends, for the AQ-VAE (with its discriminator) and NextAccel, through real `direct train`.

Bit for bit, not to a tolerance: both runs execute the same float operations in the same order on one CPU thread
(DIRECT sets one), from a checkpoint that holds every state the next iteration reads."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from direct.data.samplers import ConcatDatasetBatchSampler
from helpers import CONFIGS, phantom
from omegaconf import OmegaConf

from direct_nextaccel.core.resume import ResumableBatchSampler, capture_random_state, restore_random_state
from direct_nextaccel.data.fastmri_h5 import fastmri_filename, write_fastmri_h5
from direct_nextaccel.data.simulate import simulate_volume

BIN = Path(sys.executable).parent
ITERATIONS = 12


# The data order and the random states ---------------------------------------------------------------------------


class Sized:
    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def take(sampler, count: int) -> list[list[int]]:
    iterator = iter(sampler)
    return [[int(index) for index in next(iterator)] for _ in range(count)]


def test_batch_order_continues_from_any_position():
    datasets = [Sized(3), Sized(5)]
    order = take(ResumableBatchSampler(datasets, 2, seeds=[11, 12]), 30)
    assert take(ResumableBatchSampler(datasets, 2, seeds=[11, 12], start=13), 17) == order[13:]
    assert {index for batch in order for index in batch} == set(range(8))  # both datasets, offsets applied
    assert order != take(ResumableBatchSampler(datasets, 2, seeds=[11, 13]), 30)


def test_one_dataset_keeps_directs_order_and_seed_draw():
    np.random.seed(5)  # noqa: NPY002 - DIRECT seeds its sampler from the global numpy RNG
    ours = ResumableBatchSampler([Sized(7)], 3)
    np.random.seed(5)  # noqa: NPY002
    directs = ConcatDatasetBatchSampler([Sized(7)], 3)  # seeds each dataset's sampler from the numpy RNG
    assert ours.seeds == [directs.samplers[0]._seed]
    expected = [[int(index) for index in next(directs)] for _ in range(10)]
    assert take(ours, 10) == expected


def test_random_state_survives_a_weights_only_checkpoint(tmp_path):
    legacy = np.random  # the global numpy RNG that DIRECT and dataset transforms draw from
    torch.manual_seed(1), legacy.seed(2), random.seed(3)
    legacy.standard_normal()  # a cached Gaussian is part of numpy's state
    state = capture_random_state("cpu")
    expected = (torch.rand(3), legacy.standard_normal(3), random.random())
    torch.save({"random": state}, tmp_path / "state.pt")
    torch.manual_seed(9), legacy.seed(9), random.seed(9)
    restore_random_state(torch.load(tmp_path / "state.pt", weights_only=True)["random"], "cpu")
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(legacy.standard_normal(3), expected[1])
    assert random.random() == expected[2]


# Split runs through `direct train` ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Two volumes of two slices: an epoch is two batches, so the runs cross several shuffled epochs."""
    root = tmp_path_factory.mktemp("resume_data")
    for acquisition, subject in (("AXT1", "900_0001"), ("AXT2", "900_0002")):
        kspace, _ = simulate_volume(phantom(), coils=4, matrix=(64, 64), seed=int(subject[-1]))
        write_fastmri_h5(root / fastmri_filename(acquisition, subject), kspace, acquisition)
    return root


def config(source: str, destination: Path, **overrides) -> Path:
    """A tiny config that trains 12 iterations, checkpoints at 6 and 11, validates at 6, 9 and 11, logs each."""
    cfg = OmegaConf.load(CONFIGS / source)
    cfg.training.num_iterations = ITERATIONS
    cfg.training.checkpointer.checkpoint_steps = 6
    cfg.training.validation_steps = 3
    cfg.logging.log_interval = 1
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    OmegaConf.save(cfg, destination)
    return destination


def command(cfg: Path, name: str, data_root: Path, workers: int, *extra: str) -> list[str]:
    roots = ["--training-root", str(data_root), "--validation-root", str(data_root)]
    devices = ["--device", "cpu", "--num-gpus", "0", "--num-workers", str(workers)]
    return [
        str(BIN / "direct"),
        "train",
        str(cfg.parent / "runs"),
        "--cfg",
        str(cfg),
        "--name",
        name,
        *roots,
        *devices,
        *extra,
    ]


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def run(arguments: list[str]) -> str:
    result = subprocess.run(arguments, env=environment(), capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{arguments[1:3]} failed:\n{output[-4000:]}"
    return output


def interrupted(arguments: list[str], when: str) -> str:
    """Run until a log line contains ``when``, then Ctrl-C the whole process group as a terminal does."""
    process = subprocess.Popen(
        arguments,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines, sent = [], False
    for line in process.stdout:
        lines.append(line)
        if not sent and when in line:
            os.killpg(process.pid, signal.SIGINT)
            sent = True
    process.wait(timeout=600)
    output = "".join(lines)
    assert sent, f"never saw {when!r}:\n{output[-4000:]}"
    assert process.returncode == 255, f"exit code {process.returncode}:\n{output[-4000:]}"  # DIRECT's sys.exit(-1)
    return output


def assert_identical(first, second, where: str) -> None:
    if isinstance(first, dict):
        assert set(first) == set(second), f"{where}: keys {set(first) ^ set(second)}"
        for key in first:
            assert_identical(first[key], second[key], f"{where}/{key}")
    elif isinstance(first, list | tuple):
        assert len(first) == len(second), where
        for index, (a, b) in enumerate(zip(first, second, strict=True)):
            assert_identical(a, b, f"{where}/{index}")
    elif isinstance(first, torch.Tensor):
        assert first.dtype == second.dtype and torch.equal(first, second), where
    else:
        assert first == second, f"{where}: {first!r} != {second!r}"


def assert_same_checkpoint(first: Path, second: Path) -> None:
    a, b = (torch.load(path, map_location="cpu", weights_only=True) for path in (first, second))
    # Metadata: the time and DIRECT's git hash of the working directory (other commits may land between the runs).
    a, b = ({k: v for k, v in c.items() if k not in ("__datetime__", "__author__")} for c in (a, b))
    assert_identical(a, b, first.name)


def training_scalars(run: Path) -> dict[int, dict[str, float]]:
    """The last metrics.json row of each iteration, without validation scalars (their 'latest' value lingers in
    DIRECT's event storage after a validation, which a resumed process does not have)."""
    rows = {}
    for line in (run / "metrics.json").read_text().splitlines():
        row = json.loads(line)
        rows[row.pop("iteration")] = {k: v for k, v in row.items() if not k.startswith("val/")}
    return rows


def check_split_run(one_go: Path, split: Path, resumed_log: str, stopped_log: str) -> None:
    stopped = int(re.search(r"Stopped after iteration (\d+): model_\1\.pt holds it", stopped_log)[1])
    assert 6 <= stopped < ITERATIONS - 1
    start = int(re.search(r"Starting from iteration: (\d+)\.", resumed_log)[1])
    assert start == stopped + 1, "a Ctrl-C'd run resumes at the iteration after the last complete one"
    assert_same_checkpoint(one_go / f"model_{ITERATIONS - 1}.pt", split / f"model_{ITERATIONS - 1}.pt")
    expected, got = training_scalars(one_go), training_scalars(split)
    # DIRECT's metrics.json smooths with a median over 2 iterations: the resumed run's first row has one value.
    for iteration in range(start + 1, ITERATIONS):
        assert got[iteration] == expected[iteration], iteration
    assert (split / "last_model.txt").read_text() == str(ITERATIONS - 1)


@pytest.fixture(scope="module")
def aqvae_runs(data_root, tmp_path_factory) -> tuple[Path, Path, str, str]:
    """The tiny AQ-VAE with its discriminator: once in one go, once interrupted inside iteration 8 and resumed."""
    work = tmp_path_factory.mktemp("resume_aqvae")
    cfg = config(
        "tiny_aqvae.yaml",
        work / "aqvae.yaml",
        **{"model.discriminator_backbone": "patch"},
    )
    cfg_data = OmegaConf.load(cfg)
    cfg_data.training.loss.losses.append({"function": "adversarial_loss", "multiplier": 0.1})
    OmegaConf.save(cfg_data, cfg)
    run(command(cfg, "one_go", data_root, 0))
    # The metric printer's line for iteration 7 comes after its update: the signal lands in iteration 8's fetch or
    # step, which finishes before the run stops.
    stopped_log = interrupted(command(cfg, "split", data_root, 0), " iter: 7 ")
    resumed_log = run(command(cfg, "split", data_root, 0, "--resume"))
    return work / "runs" / "one_go", work / "runs" / "split", resumed_log, stopped_log


@pytest.mark.slow
def test_resumed_aqvae_run_equals_the_uninterrupted_run(aqvae_runs):
    one_go, split, resumed_log, stopped_log = aqvae_runs
    assert "Received SIGINT: finishing iteration" in stopped_log
    check_split_run(one_go, split, resumed_log, stopped_log)
    checkpoint = torch.load(split / f"model_{ITERATIONS - 1}.pt", weights_only=True)
    assert checkpoint["discriminator_optimizer"]["state"], "the discriminator's optimizer state is checkpointed"
    # The best model is the same model and records the same score.
    assert_same_checkpoint(one_go / "model_best.pt", split / "model_best.pt")
    assert not list(split.glob(".*.tmp"))


@pytest.mark.slow
def test_resumed_nextaccel_run_equals_the_uninterrupted_run(aqvae_runs, data_root, tmp_path):
    """Fresh per-slice masks (the engine's own generator), drop-path (the global RNG) and two loader workers."""
    one_go_tokenizer = aqvae_runs[0] / f"model_{ITERATIONS - 1}.pt"
    cfg = config(
        "tiny_nextaccel.yaml",
        tmp_path / "nextaccel.yaml",
        **{"model.tokenizer_checkpoint": str(one_go_tokenizer), "model.training_masks": "fresh"},
    )
    run(command(cfg, "one_go", data_root, 2))
    stopped_log = interrupted(command(cfg, "split", data_root, 2), "Checkpointing at iteration 6")
    resumed_log = run(command(cfg, "split", data_root, 2, "--resume"))
    check_split_run(tmp_path / "runs" / "one_go", tmp_path / "runs" / "split", resumed_log, stopped_log)

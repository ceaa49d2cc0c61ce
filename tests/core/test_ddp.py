"""DistributedDataParallel (issue 14): DIRECT's real `direct train` with 2 gloo processes on the CPU.

After 6 iterations every parameter and buffer of every module an engine trains or holds (the model with its EMA
codebook buffers, DIRECT's additional sensitivity model, the AQ-VAE's discriminator, a frozen tokenizer) and every
optimizer state is bit-identical on both ranks, although each rank trained on other slices; a NaN batch on one rank
stops both, each naming the rank, file and slice. The launcher is DIRECT's own launch with gloo instead of NCCL
(:mod:`direct_nextaccel.core.ddp_launch`); each rank writes its state after training (``DIRECT_NEXTACCEL_DDP_DUMP``).

Engines covered: the AQ-VAE (trainable sensitivity model, discriminator with its own optimizer, EMA codebooks,
validation and ``model_best.pt`` on rank 0), NextAccel (frozen tokenizer and sensitivity model, fresh per-slice masks
from the engine's generator, drop-path) and MIAR (the frozen tokenizer inside the model). The others share their
mechanisms: the MSVQ-VAE is a TokenizerEngine like the AQ-VAE (same EMA step, no discriminator), the teacher is a
NextAccelEngine, and distillation adds a frozen teacher loaded from a file, which the same start-of-training
broadcast covers. Six DDP runs would not fit the suite's time (each costs about 30 s, mostly three interpreters
starting).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import CONFIGS, build_model, merged_config, phantom
from omegaconf import OmegaConf

from direct_nextaccel.core import distributed
from direct_nextaccel.core.ddp_launch import DUMP_VARIABLE
from direct_nextaccel.core.engine import PluginEngine
from direct_nextaccel.core.resume import capture_random_state, restore_random_state
from direct_nextaccel.data.fastmri_h5 import fastmri_filename, write_fastmri_h5
from direct_nextaccel.data.simulate import simulate_volume

ITERATIONS = 6
NAN_FILE = fastmri_filename("AXT2", "900_0002")


# Data, configs and the 2-process run ----------------------------------------------------------------------------


def write_volumes(root: Path) -> Path:
    """Two volumes of two slices: an epoch is one batch of 2 per rank, so each iteration the ranks see other slices."""
    root.mkdir(parents=True, exist_ok=True)
    for acquisition, subject in (("AXT1", "900_0001"), ("AXT2", "900_0002")):
        kspace, _ = simulate_volume(phantom(), coils=4, matrix=(64, 64), seed=int(subject[-1]))
        write_fastmri_h5(root / fastmri_filename(acquisition, subject), kspace, acquisition)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_volumes(tmp_path_factory.mktemp("ddp_data"))


def config(source: str, destination: Path, validate: bool = False, **overrides) -> Path:
    """A tiny config for 6 iterations: the checkpoint of the last one, validation there only if ``validate``."""
    cfg = OmegaConf.load(CONFIGS / source)
    cfg.training.num_iterations = ITERATIONS
    cfg.training.checkpointer.checkpoint_steps = 1000
    cfg.training.validation_steps = 1000
    cfg.logging.log_interval = 1
    if not validate:
        cfg.validation.datasets = []
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    OmegaConf.save(cfg, destination)
    return destination


def aqvae_config(destination: Path, validate: bool) -> Path:
    """The tiny AQ-VAE with its learned sensitivity model and the small patch discriminator (adversarial loss)."""
    config("tiny_aqvae.yaml", destination, validate, **{"model.discriminator_backbone": "patch"})
    cfg = OmegaConf.load(destination)
    cfg.training.loss.losses.append({"function": "adversarial_loss", "multiplier": 0.1})
    OmegaConf.save(cfg, destination)
    return destination


def ddp_train(cfg: Path, data_root: Path, timeout: float = 300) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """`direct train` on 2 gloo processes; returns the finished process, the run folder and the ranks' dump folder."""
    run, dump = cfg.parent / "runs" / cfg.stem, cfg.parent / f"dump_{cfg.stem}"
    arguments = [
        sys.executable,
        "-m",
        "direct_nextaccel.core.ddp_launch",
        "train",
        str(cfg.parent / "runs"),
        "--cfg",
        str(cfg),
        "--name",
        cfg.stem,
        "--training-root",
        str(data_root),
        "--validation-root",
        str(data_root),
        "--device",
        "cpu",
        "--num-gpus",
        "2",
        "--num-workers",
        "0",
    ]
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment[DUMP_VARIABLE] = str(dump)
    result = subprocess.run(arguments, env=environment, capture_output=True, text=True, timeout=timeout)
    return result, run, dump


def trained(cfg: Path, data_root: Path) -> tuple[Path, dict, dict]:
    result, run, dump = ddp_train(cfg, data_root)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{cfg.stem} failed:\n{output[-4000:]}"
    ranks = [torch.load(dump / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]
    return run, ranks[0], ranks[1]


# Comparing the ranks --------------------------------------------------------------------------------------------


def differences(first, second, where: str) -> list[str]:
    """Paths where two nested states are not bit-identical (tensors: same dtype and torch.equal)."""
    if isinstance(first, dict):
        if set(first) != set(second):
            return [f"{where}: keys {sorted(map(str, set(first) ^ set(second)))}"]
        return [d for key in first for d in differences(first[key], second[key], f"{where}/{key}")]
    if isinstance(first, list | tuple):
        if len(first) != len(second):
            return [f"{where}: lengths {len(first)} and {len(second)}"]
        return [
            d for i, (a, b) in enumerate(zip(first, second, strict=True)) for d in differences(a, b, f"{where}/{i}")
        ]
    if isinstance(first, torch.Tensor):
        same = first.dtype == second.dtype and first.shape == second.shape and torch.equal(first, second)
        return [] if same else [where]
    return [] if first == second else [f"{where}: {first!r} != {second!r}"]


def assert_ranks_identical(rank0: dict, rank1: dict, modules: set[str]) -> None:
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert set(rank0["modules"]) == modules, sorted(rank0["modules"])
    found = differences(rank0["modules"], rank1["modules"], "modules")
    found += differences(rank0["optimizers"], rank1["optimizers"], "optimizers")
    assert not found, f"{len(found)} tensors differ across ranks, e.g. {found[:5]}"
    # ...although the ranks trained on different slices at every iteration
    assert len(rank0["batches"]) == len(rank1["batches"]) == ITERATIONS
    for first, second in zip(rank0["batches"], rank1["batches"], strict=True):
        assert not set(first) & set(second), (first, second)


def rank_seeds(run: Path) -> list[int]:
    seeds = []
    for rank in (0, 1):
        log = (run / f"log_0_{rank}.txt").read_text()
        seeds.append(int(re.search(rf"Rank {rank} seeded its random numbers with (\d+) \(from --seed\)", log)[1]))
    return seeds


def group_state(optimizer_state: dict, group: int) -> list[dict]:
    """The per-parameter state (Adam moments) of one parameter group of an optimizer state dict."""
    return [optimizer_state["state"][index] for index in optimizer_state["param_groups"][group]["params"]]


# The runs -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aqvae_run(data_root, tmp_path_factory) -> tuple[Path, dict, dict]:
    return trained(aqvae_config(tmp_path_factory.mktemp("ddp_aqvae") / "aqvae.yaml", validate=True), data_root)


@pytest.mark.slow
def test_aqvae_ranks_stay_identical(aqvae_run):
    run, rank0, rank1 = aqvae_run
    assert_ranks_identical(rank0, rank1, {"model", "models.sensitivity_model", "models.discriminator"})
    buffers = {key.rsplit(".", 1)[-1] for key in rank0["modules"]["model"]}
    assert {"codebook", "ema_cluster_size", "ema_embed_sum"} <= buffers  # the EMA codebooks are compared too
    # The sensitivity model (DIRECT's second parameter group) and the discriminator were trained, not just copied.
    sensitivity = group_state(rank0["optimizers"]["optimizer"], 1)
    assert sensitivity and all(state["exp_avg"].abs().sum() > 0 for state in sensitivity)
    assert rank0["optimizers"]["discriminator_optimizer"]["state"]
    # What rank 0 saved is what every rank holds; it also holds every rank's random states for --resume.
    checkpoint = torch.load(run / f"model_{ITERATIONS - 1}.pt", weights_only=True)
    for name in ("sensitivity_model", "discriminator"):
        assert not differences(checkpoint[name], rank1["modules"][f"models.{name}"], name)
    assert not differences(checkpoint["model"], rank1["modules"]["model"], "model")
    ranks = checkpoint["training_state"]["ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["random"]["torch"], ranks[1]["random"]["torch"])
    first, second = rank_seeds(run)
    assert first != second
    assert (run / "model_best.pt").is_file()  # validation ran on both ranks (one volume each), rank 0 wrote it


@pytest.mark.slow
def test_nextaccel_ranks_stay_identical(aqvae_run, data_root, tmp_path):
    tokenizer = aqvae_run[0] / f"model_{ITERATIONS - 1}.pt"
    cfg = config(
        "tiny_nextaccel.yaml",
        tmp_path / "nextaccel.yaml",
        **{"model.tokenizer_checkpoint": str(tokenizer), "model.training_masks": "fresh"},
    )
    _, rank0, rank1 = trained(cfg, data_root)
    assert_ranks_identical(rank0, rank1, {"model", "models.sensitivity_model", "engine.tokenizer"})


@pytest.mark.slow
def test_miar_ranks_stay_identical(data_root, tmp_path):
    from direct_nextaccel.miar.config import MSVQVAEConfig
    from direct_nextaccel.miar.msvqvae import MSVQVAE

    torch.manual_seed(0)
    tokenizer = build_model(MSVQVAE, merged_config("tiny_msvqvae.yaml", MSVQVAEConfig).model)
    torch.save({"model": tokenizer.state_dict()}, tmp_path / "model_0.pt")
    cfg = config(
        "tiny_miar.yaml", tmp_path / "miar.yaml", **{"model.tokenizer_checkpoint": str(tmp_path / "model_0.pt")}
    )
    _, rank0, rank1 = trained(cfg, data_root)
    assert_ranks_identical(rank0, rank1, set(rank0["modules"]))
    assert "model" in rank0["modules"]


@pytest.mark.slow
def test_a_nan_batch_on_one_rank_stops_every_rank(tmp_path):
    """Slice 1 of one volume holds a NaN: the rank that draws it and the other one both stop with the same message,
    instead of the other waiting in an all-reduce; nothing is saved."""
    root = write_volumes(tmp_path / "data")
    with h5py.File(root / NAN_FILE, "r+") as file:
        kspace = file["kspace"][1]
        kspace[0, 10, 10] = np.nan
        file["kspace"][1] = kspace
    result, run, _ = ddp_train(aqvae_config(tmp_path / "nan.yaml", validate=False), root, timeout=240)
    assert result.returncode != 0
    pattern = rf"rank ([01]) of 2: non-finite kspace in \S*{re.escape(NAN_FILE)} slice 1: .*; every rank stopped"
    culprits = set()
    for rank in (0, 1):
        found = re.search(pattern, (run / f"log_0_{rank}.txt").read_text())
        assert found, f"rank {rank} did not stop on the agreed NaN check:\n{result.stderr[-3000:]}"
        culprits.add(found[1])
    assert len(culprits) == 1  # both name the same rank
    assert not list(run.glob("model_*.pt"))


# Without processes ----------------------------------------------------------------------------------------------


def test_rank_seeds_follow_the_seed_and_the_rank(monkeypatch):
    assert distributed.rank_seed(7, 0) == distributed.rank_seed(7, 0)
    assert len({distributed.rank_seed(base, rank) for base in (7, 8) for rank in (0, 1, 2)}) == 6
    monkeypatch.setenv(distributed.SEED_VARIABLE, "1234")
    assert distributed.direct_seed() == 1234
    state = capture_random_state()
    try:
        assert distributed.seed_rank() == distributed.rank_seed(1234, 0)
        assert torch.initial_seed() == distributed.rank_seed(1234, 0)
    finally:
        restore_random_state(state)


def test_single_process_helpers_change_nothing():
    parameter = torch.nn.Parameter(torch.ones(3))
    parameter.grad = torch.full((3,), 2.0)
    distributed.average_gradients([parameter])
    assert torch.equal(parameter.grad, torch.full((3,), 2.0))
    assert distributed.any_rank([True, False], "cpu") == [True, False]
    assert distributed.gather_objects("x") == ["x"]
    assert distributed.broadcast_modules([torch.nn.Linear(2, 2)]) == 0


def test_fewer_validation_volumes_than_ranks_is_refused_up_front(monkeypatch):
    class Validation:
        text_description = "val"

        def __init__(self):
            self.volume_indices = {"only.h5": range(2)}

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ValueError, match=r"^validation dataset 'val' has 1 volumes for 2 processes: DIRECT gives"):
        PluginEngine.train(object(), None, None, [], Path("run"), validation_datasets=[Validation()])


def test_dataparallel_is_refused():
    class Engine:
        model = torch.nn.DataParallel(torch.nn.Linear(2, 2))  # what DIRECT builds for one process with several GPUs

    with pytest.raises(ValueError, match=r"DataParallel, whose per-batch replicas drop .*CUDA_VISIBLE_DEVICES=0"):
        PluginEngine.training_loop(Engine(), [], 0)

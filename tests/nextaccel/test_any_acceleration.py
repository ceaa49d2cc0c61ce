"""One NextAccel checkpoint for every nested family and every acceleration of the ladder (issue 16).

The checkpoint records the families it was trained on; prediction reads each sample's family and acceleration from
DIRECT's sampling mask, encodes every level the acquisition contains and generates only the finer ones. The
checkpoint here is built in process and saved as DIRECT saves one (random transformer weights, the tokenizer's
codebook and encoder), from a random tiny AQ-VAE saved the same way: the tests check the code paths and values, not
quality.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from direct.data.transforms import fft2, ifft2
from helpers import CONFIGS, build_model, phantom
from omegaconf import OmegaConf

from direct_nextaccel.core.images import direct_batch
from direct_nextaccel.data.fastmri_h5 import fastmri_filename, write_fastmri_h5
from direct_nextaccel.data.simulate import simulate_volume
from direct_nextaccel.masks.nested import FAMILIES, LEVELS, MASK_NAMES
from direct_nextaccel.nextaccel import acquisition
from direct_nextaccel.nextaccel.aqvae import AQVAE
from direct_nextaccel.nextaccel.config import NextAccelConfig
from direct_nextaccel.nextaccel.nextaccel import NextAccel
from direct_nextaccel.nextaccel.tokenizer_loading import tokenizer_arguments
from direct_nextaccel.nextaccel.transformer_engine import NextAccelEngine

BIN = Path(sys.executable).parent
CPU = ["--device", "cpu", "--num-gpus", "0", "--num-workers", "0"]
FILENAME = "file_brain_AXT1_900_0001.h5"
#: one direct predict per family, together covering every acceleration of the ladder
DIAGONAL = (("cartesian_x", 32), ("cartesian_y", 16), ("gaussian2d", 8), ("radial", 4))


def nextaccel_config(tokenizer: Path, **model) -> OmegaConf:
    """The tiny NextAccel config on all four families, without a sensitivity model, merged as DIRECT merges it."""
    config = OmegaConf.load(CONFIGS / "tiny_nextaccel.yaml")
    del config["additional_models"]
    settings = {"mask_families": list(FAMILIES), "training_masks": "fresh", "tokenizer_checkpoint": str(tokenizer)}
    config.model = OmegaConf.merge(OmegaConf.structured(NextAccelConfig), config.model, settings, model)
    return config


def engine_of(config, state: dict | None = None) -> NextAccelEngine:
    engine = NextAccelEngine(config, build_model(NextAccel, config.model), "cpu", fft2, ifft2)
    engine.ndim = 2
    if state is not None:
        engine.model.load_state_dict(state)
    engine.model.eval()
    return engine


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Data (two files of two 64 x 64 slices), a random tiny AQ-VAE and a NextAccel checkpoint on all four families,
    both saved as DIRECT saves checkpoints."""
    root = tmp_path_factory.mktemp("any_acceleration")
    for name, subject in (("AXT1", "900_0001"), ("AXT2", "900_0002")):
        kspace, _ = simulate_volume(phantom(), coils=4, matrix=(64, 64), seed=int(subject[-1]))
        write_fastmri_h5(root / "data" / fastmri_filename(name, subject), kspace, name)
    torch.manual_seed(0)
    tokenizer_path = root / "tokenizer" / "model_0.pt"
    tokenizer_path.parent.mkdir()
    config = nextaccel_config(tokenizer_path)
    tokenizer = AQVAE(**tokenizer_arguments(config.model), context_strides=tuple(config.model.context_strides))
    torch.save({"model": tokenizer.state_dict()}, tokenizer_path)
    engine = engine_of(config)
    engine.initialise_from_tokenizer()
    checkpoint = root / "nextaccel" / "model_0.pt"
    checkpoint.parent.mkdir()
    torch.save({"model": engine.model.state_dict()}, checkpoint)
    return root


@pytest.fixture(scope="module")
def engine(work) -> NextAccelEngine:
    config = nextaccel_config(work / "tokenizer" / "model_0.pt")
    return engine_of(config, torch.load(work / "nextaccel" / "model_0.pt", weights_only=True)["model"])


def make_batch(family: str, level: int, filename: str = FILENAME) -> dict:
    """Two slices of one file as DIRECT batches them at ``LEVELS[level]`` of ``family`` (RSS-normalised maps)."""
    kspace_np, _ = simulate_volume(phantom(), coils=4, matrix=(64, 64), seed=1)
    kspace = torch.view_as_real(torch.from_numpy(kspace_np)).float()  # S, C, H, W, 2
    mask = acquisition.level_masks([filename] * 2, [family] * 2, (64, 64), 1 / 64)[:, level]
    return direct_batch(kspace, mask, [filename] * 2)


# The checkpoint records its families ------------------------------------------------------------------------------


def test_checkpoint_records_the_trained_families_and_older_ones_take_the_configured(work, engine, caplog):
    state = torch.load(work / "nextaccel" / "model_0.pt", weights_only=True)["model"]
    assert state["trained_families"].tolist() == [True] * 4
    # A prediction config naming one family does not narrow what the checkpoint knows.
    narrow = engine_of(nextaccel_config(work / "tokenizer" / "model_0.pt", mask_families=[]), state)
    assert narrow.transformer.trained_families.tolist() == [True] * 4
    # A checkpoint from before the families were recorded loads (DIRECT's checkpointer included) with a warning.
    old = {key: value for key, value in state.items() if key != "trained_families"}
    path = work / "old" / "model_0.pt"
    path.parent.mkdir(exist_ok=True)
    torch.save({"model": old}, path)
    radial_only = engine_of(nextaccel_config(work / "tokenizer" / "model_0.pt", mask_families=["radial"]))
    from direct.checkpointer import Checkpointer

    with caplog.at_level("WARNING"):  # as DIRECT's predict builds its checkpointer (the engine adopts it) and loads
        radial_only.checkpointer = Checkpointer(save_directory=path.parent, save_to_disk=False, model=radial_only.model)
        radial_only.checkpointer.load_models_from_file(path)
    assert radial_only.transformer.trained_families.tolist() == [False, False, False, True]
    assert "records no trained mask families" in caplog.text and "radial" in caplog.text
    torch.testing.assert_close(radial_only.transformer.head.weight, state["head.weight"])


# Every family and every acceleration ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_known_levels_are_the_encoders_tokens_and_the_rest_the_transformers_argmax(engine, family):
    for level in range(len(LEVELS)):
        batch = make_batch(family, level)
        with torch.no_grad():
            outputs = engine.reconstruct(batch)
            images, labels = engine.hierarchy(batch)  # every level, from the fully sampled k-space, file-seeded
            encoded = engine.tokenizer.encode(images[:, : level + 1], labels, levels=list(range(level + 1))).indices
            forced = engine.transformer(outputs["tokens"], images[:, 0], labels)
        assert outputs["levels"].tolist() == [level, level]
        assert torch.equal(labels, acquisition.family_labels([family] * 2, "cpu"))
        # Levels 0..k: the tokenizer's encoding of the acquired levels (the R = 32 and R = 16 tokens at R = 16).
        for known in range(level + 1):
            assert torch.equal(outputs["tokens"][known], encoded[known]), (family, level, known)
        # Levels k+1..FS: the transformer's argmax given everything before them.
        for generated in range(level + 1, len(LEVELS) + 1):
            expected = forced[generated - 1].argmax(dim=-1).view_as(outputs["tokens"][generated])
            assert torch.equal(outputs["tokens"][generated], expected), (family, level, generated)
        assert outputs["output_image"].shape == (2, 64, 64, 2) and torch.isfinite(outputs["output_image"]).all()


def test_a_batch_mixing_accelerations_and_families_is_reconstructed_per_sample(engine):
    radial16, cartesian8 = make_batch("radial", 1), make_batch("cartesian_x", 2)
    mixed = {
        key: torch.cat((radial16[key][:1], cartesian8[key][1:])) if isinstance(value, torch.Tensor) else value
        for key, value in radial16.items()
    }
    with torch.no_grad():
        together = engine.reconstruct(mixed, want_probs=True)
        alone = [engine.reconstruct(radial16, want_probs=True), engine.reconstruct(cartesian8, want_probs=True)]
    assert together["levels"].tolist() == [1, 2]
    for index, separate in enumerate(alone):
        for a, b in zip(together["tokens"], separate["tokens"], strict=True):
            assert torch.equal(a[index], b[index])
        torch.testing.assert_close(together["output_image"][index], separate["output_image"][index])
        torch.testing.assert_close(together["uncertainty"][index], separate["uncertainty"][index])


def test_uncertainty_counts_the_acquired_levels_as_certain(engine):
    with torch.no_grad():
        at32 = engine.reconstruct(make_batch("gaussian2d", 0), want_probs=True)["uncertainty"]
        at2 = engine.reconstruct(make_batch("gaussian2d", 4), want_probs=True)["uncertainty"]
    # At R = 2 only the fully sampled level is predicted: at most 1/6 of the map.
    assert float(at2.max()) <= 1 / 6 + 1e-5 < float(at32.max())


def test_data_consistency_reinserts_every_acquired_level(work, engine):
    config = nextaccel_config(work / "tokenizer" / "model_0.pt", data_consistency=True)
    consistent = engine_of(config, engine.model.state_dict())
    batch = make_batch("cartesian_y", 2)  # R = 8
    with torch.no_grad():
        plain = engine.reconstruct(batch)["output_image"]
        output = consistent.reconstruct(batch)["output_image"]
    maps, masked = batch["sensitivity_map"], batch["masked_kspace"]
    torch.testing.assert_close(output, engine.data_consistency(plain, masked, maps, batch["sampling_mask"]))
    r32 = acquisition.level_masks([FILENAME] * 2, ["cartesian_y"] * 2, (64, 64), 1 / 64)[:, 0][:, None, :, :, None]
    assert not torch.allclose(output, engine.data_consistency(plain, masked * r32, maps, r32))


# Refusals ---------------------------------------------------------------------------------------------------------


def one_line_error(engine: NextAccelEngine, batch: dict) -> str:
    with pytest.raises(ValueError) as error, torch.no_grad():
        engine.reconstruct(batch)
    message = str(error.value)
    assert "\n" not in message and FILENAME in message
    return message


def test_a_family_the_checkpoint_was_not_trained_on_is_refused(work, engine):
    state = {**engine.model.state_dict(), "trained_families": torch.tensor([False, True, False, True])}
    two = engine_of(nextaccel_config(work / "tokenizer" / "model_0.pt"), state)  # the checkpoint rules, not the config
    message = one_line_error(two, make_batch("gaussian2d", 1))
    assert "is the nested gaussian2d mask at R = 16" in message
    assert "['cartesian_y', 'radial'] at R = 32, 16, 8, 4, 2" in message


def test_an_acceleration_outside_the_ladder_is_refused(engine):
    batch = make_batch("cartesian_y", 0)
    full = torch.ones_like(batch["sampling_mask"])
    message = one_line_error(engine, {**batch, "sampling_mask": full, "masked_kspace": batch["kspace"]})
    assert "sampled at R = 1.0, outside the ladder" in message and "one of [32, 16, 8, 4, 2]" in message
    coarser = batch["sampling_mask"].clone()
    coarser[..., 1::2, :] = False  # about R = 64
    message = one_line_error(engine, {**batch, "sampling_mask": coarser, "masked_kspace": batch["kspace"] * coarser})
    assert re.search(r"sampled at R = (6\d|\d{3})\.\d, outside the ladder", message), message


def test_a_mask_that_is_not_nested_is_refused(engine):
    from direct.common.subsample import FastMRIRandomMaskFunc

    batch = make_batch("cartesian_y", 1)
    random_mask = FastMRIRandomMaskFunc([16], [1 / 64])((64, 64, 2), seed=(1, 2, 3)).bool()  # 1, H, W, 1
    random_mask = random_mask.expand(2, 64, 64, 1)[:, None]  # B, 1, H, W, 1
    message = one_line_error(engine, {**batch, "sampling_mask": random_mask})
    assert "is not a nested mask of ['cartesian_x', 'cartesian_y', 'gaussian2d', 'radial']" in message
    assert "seeded by its file name with centre fraction 0.015625" in message
    # The right family and acceleration, seeded by another file's name.
    other = make_batch("cartesian_y", 1, filename="file_brain_AXT2_900_0002.h5")
    message = one_line_error(engine, {**batch, "sampling_mask": other["sampling_mask"]})
    assert "(R = 16.0) is not a nested mask" in message


# Plain `direct predict` -------------------------------------------------------------------------------------------


def predict_config(work: Path, family: str, acceleration: int) -> Path:
    config = OmegaConf.load(CONFIGS / "tiny_nextaccel.yaml")
    del config["additional_models"]
    config.model.tokenizer_checkpoint = str(work / "tokenizer" / "model_0.pt")
    config.model.mask_families = list(FAMILIES)
    config.model.training_masks = "fresh"
    masking = config.inference.dataset.transforms.masking
    masking.name, masking.accelerations = MASK_NAMES[family], [acceleration]
    path = work / "configs" / f"{family}_{acceleration}.yaml"
    path.parent.mkdir(exist_ok=True)
    OmegaConf.save(config, path)
    return path


def test_direct_predict_reconstructs_each_family_and_acceleration_with_the_same_checkpoint(work, tmp_path, monkeypatch):
    """Four `direct predict` runs of one checkpoint (each family once, each R of 32 ... 4 once), each equal to the
    engine's reconstruction of the same DIRECT batches, and sampled as configured."""
    import direct.environment
    from direct.data.datasets import build_dataset_from_input
    from direct.train import build_transforms_from_environment
    from torch.utils.data import default_collate

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    processes = {}
    for family, acceleration in DIAGONAL:
        config = predict_config(work, family, acceleration)
        command = [str(BIN / "direct"), "predict", str(tmp_path / family), "--cfg", str(config), "--checkpoint"]
        command += [str(work / "nextaccel" / "model_0.pt"), "--data-root", str(work / "data"), *CPU]
        processes[family] = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    for family, process in processes.items():
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, f"{family}:\n{output[-4000:]}"

    monkeypatch.setattr(direct.environment, "setup_logging", lambda *args, **kwargs: None)
    state = torch.load(work / "nextaccel" / "model_0.pt", weights_only=True)["model"]
    for family, acceleration in DIAGONAL:
        config = predict_config(work, family, acceleration)
        environment = direct.environment.setup_common_environment(
            "run", tmp_path / "env" / family, str(config), "cpu", 0, False
        )
        engine = environment.engine
        engine.model.load_state_dict(state)
        engine.ndim = 2
        engine.models_validation_mode()
        dataset_config = environment.cfg.inference.dataset
        dataset = build_dataset_from_input(
            build_transforms_from_environment(environment, dataset_config), dataset_config, data_root=work / "data"
        )
        for source in sorted((work / "data").glob("*.h5")):
            batch = default_collate([sample for sample in dataset if Path(sample["filename"]).name == source.name])
            sampled = batch["sampling_mask"].float().mean().item()
            assert math.isclose(1 / sampled, acceleration, rel_tol=0.05), (family, 1 / sampled)
            with torch.no_grad():
                assert engine.reconstruct(batch)["levels"].tolist() == [LEVELS.index(acceleration)] * 2
                expected = (engine._do_iteration(batch).output_image * batch["scaling_factor"][:, None, None]).numpy()
            with h5py.File(tmp_path / family / source.name, "r") as written:
                reconstruction = written["reconstruction"][()]
            assert reconstruction.shape == expected.shape == (2, 64, 64)
            np.testing.assert_allclose(
                reconstruction, expected, rtol=1e-5, atol=1e-6 * float(np.abs(expected).max()), err_msg=family
            )


def test_direct_predict_refuses_a_family_the_checkpoint_was_not_trained_on_in_one_line(work, tmp_path):
    """A checkpoint trained on radial only, given the nested cartesian_y mask by a plain `direct predict`: a non-zero
    exit whose stderr ends in one line naming the family found and the families the checkpoint reconstructs."""
    state = torch.load(work / "nextaccel" / "model_0.pt", weights_only=True)["model"]
    state["trained_families"] = torch.tensor([family == "radial" for family in FAMILIES])
    checkpoint = tmp_path / "radial_only" / "model_0.pt"
    checkpoint.parent.mkdir()
    torch.save({"model": state}, checkpoint)
    command = [
        str(BIN / "direct"),
        "predict",
        str(tmp_path / "out"),
        "--cfg",
        str(predict_config(work, "cartesian_y", 16)),
    ]
    command += ["--checkpoint", str(checkpoint), "--data-root", str(work / "data"), *CPU]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0, result.stdout[-4000:] + result.stderr[-4000:]
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("ValueError: DIRECT's sampling mask of file_brain_AXT"), result.stderr[-4000:]
    assert "is the nested cartesian_y mask at R = 16, a family the checkpoint was not trained on" in last, last
    assert "this checkpoint reconstructs the nested families ['radial'] at R = 32, 16, 8, 4, 2" in last, last
    assert not list((tmp_path / "out").glob("*.h5"))  # nothing written for a refused input

"""The NextAccel transformer inside DIRECT: `direct train`/`direct predict` with every decoding mode, the frozen
tokenizer, the uncertainty output, the optional data consistency, and the errors a configuration can cause."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from direct.data.transforms import expand_operator, fft2, ifft2
from direct.nn.unet.unet_2d import UnetModel2d
from direct.utils.events import EventStorage
from helpers import phantom
from omegaconf import OmegaConf

from direct_nextaccel.core.images import direct_batch, sense_adjoint
from direct_nextaccel.data.fastmri_h5 import fastmri_filename, write_fastmri_h5
from direct_nextaccel.data.simulate import simulate_volume
from direct_nextaccel.nextaccel import acquisition
from direct_nextaccel.nextaccel.config import NextAccelConfig
from direct_nextaccel.nextaccel.nextaccel import NextAccel
from direct_nextaccel.nextaccel.transformer_engine import UNCERTAINTY_FOLDER, NextAccelEngine

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "direct_nextaccel" / "configs"
PAPER_CONFIGS = REPO / "projects" / "fastmri_brain" / "configs"
BIN = Path(sys.executable).parent
CPU = ["--device", "cpu", "--num-gpus", "0", "--num-workers", "0"]
FILENAME = "file_brain_AXT1_900_0001.h5"
LEVEL_NAMES = ("R16", "R8", "R4", "R2", "FS")


def six_iterations(source: Path, destination: Path, **model) -> Path:
    """A copy of a tiny config that trains 6 iterations and writes logs, validation and a checkpoint at the last."""
    config = OmegaConf.load(source)
    config.training.num_iterations = 6
    config.training.checkpointer.checkpoint_steps = 6
    config.training.validation_steps = 6
    config.logging.log_interval = 1
    for key, value in model.items():
        OmegaConf.update(config, key, value)
    OmegaConf.save(config, destination)
    return destination


def start(command: list[str], cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.Popen(
        [str(BIN / command[0]), *command[1:]],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, f"{process.args[1:3]} failed:\n{output[-4000:]}"


def train(config: Path, name: str, runs: Path, data_root: Path) -> subprocess.Popen:
    roots = ["--training-root", str(data_root), "--validation-root", str(data_root)]
    return start(["direct", "train", str(runs), "--cfg", str(config), "--name", name, *roots, *CPU], cwd=runs.parent)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nextaccel_data")
    for acquisition_name, subject in (("AXT1", "900_0001"), ("AXT2", "900_0002")):
        kspace, _ = simulate_volume(phantom(), coils=4, matrix=(64, 64), seed=int(subject[-1]))
        write_fastmri_h5(root / fastmri_filename(acquisition_name, subject), kspace, acquisition_name)
    return root


@pytest.fixture(scope="module")
def tokenizer_checkpoint(data_root, tmp_path_factory) -> Path:
    """The tiny AQ-VAE after 6 iterations of `direct train` (with its sensitivity model and config.yaml)."""
    work = tmp_path_factory.mktemp("tokenizer")
    config = six_iterations(CONFIGS / "tiny_aqvae.yaml", work / "tiny_aqvae.yaml")
    finish(train(config, "aq", work / "runs", data_root))
    return work / "runs" / "aq" / "model_5.pt"


@pytest.fixture(scope="module")
def transformer_run(data_root, tokenizer_checkpoint, tmp_path_factory) -> Path:
    """Run directory of the tiny NextAccel after 6 iterations of `direct train`."""
    work = tmp_path_factory.mktemp("transformer")
    config = six_iterations(
        CONFIGS / "tiny_nextaccel.yaml",
        work / "tiny_nextaccel.yaml",
        **{"model.tokenizer_checkpoint": str(tokenizer_checkpoint)},
    )
    finish(train(config, "na", work / "runs", data_root))
    return work / "runs" / "na"


def engine_config(tokenizer: Path, config_path: Path = CONFIGS / "tiny_nextaccel.yaml", **model):
    config = OmegaConf.load(config_path)
    config.model = OmegaConf.merge(OmegaConf.structured(NextAccelConfig), config.model, model)  # as DIRECT does
    config.model.tokenizer_checkpoint = str(tokenizer)
    return config


def build(config, engine_class=NextAccelEngine, **extra_models) -> NextAccelEngine:
    names = NextAccel.__init__.__code__.co_varnames[1 : NextAccel.__init__.__code__.co_argcount]
    keys = {k: config.model[k] for k in names if k in config.model}
    model = NextAccel(**{k: tuple(v) if OmegaConf.is_list(v) else v for k, v in keys.items()})
    models = dict(extra_models)
    if "sensitivity_model" in config.get("additional_models", {}):
        unet = {k: v for k, v in config.additional_models.sensitivity_model.items() if k != "model_name"}
        models["sensitivity_model"] = UnetModel2d(**unet)
    engine = engine_class(config, model, "cpu", fft2, ifft2, **models)
    engine.ndim = 2  # set by DIRECT's training loop and predict from the dataset
    return engine


def make_batch(family: str = "cartesian_y", level: int = 0, center_fraction: float = 1 / 64) -> dict:
    """Two slices of one file as DIRECT batches them: R32 input of `family` (level index `level`), full k-space."""
    kspace_np, _ = simulate_volume(phantom(), coils=4, matrix=(64, 64), seed=1)
    kspace = torch.view_as_real(torch.from_numpy(kspace_np)).float()  # S, C, H, W, 2
    mask = acquisition.level_masks([FILENAME] * 2, [family] * 2, (64, 64), center_fraction)[:, level]
    return direct_batch(kspace, mask, [FILENAME] * 2)


# direct train / direct predict -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_direct_train_logs_token_scores_and_validation_metrics(transformer_run, tokenizer_checkpoint):
    logged = set().union(*(json.loads(line) for line in (transformer_run / "metrics.json").read_text().splitlines()))
    assert "token_cross_entropy" in logged
    assert {f"token_accuracy_{name}" for name in LEVEL_NAMES} <= logged
    assert any("fastmri_psnr" in key for key in logged) and any("fastmri_ssim" in key for key in logged)
    checkpoint = torch.load(transformer_run / "model_5.pt", weights_only=False)
    # The frozen tokenizer is an engine attribute: neither saved nor optimized; DIRECT's optimizer got the betas.
    assert not any("tokenizer" in key or "quantizer" in key for key in checkpoint)
    assert all(group["betas"] == (0.9, 0.95) for group in checkpoint["optimizer"]["param_groups"])
    tokenizer = torch.load(tokenizer_checkpoint, weights_only=True)
    assert torch.equal(checkpoint["model"]["codebook"], tokenizer["model"]["quantizer.codebook"])
    for key, value in tokenizer["sensitivity_model"].items():  # the tokenizer's, frozen
        assert torch.equal(checkpoint["sensitivity_model"][key], value), key


@pytest.mark.slow
def test_direct_predict_with_every_decoding_mode(transformer_run, tokenizer_checkpoint, data_root, tmp_path):
    settings = {
        "argmax": {},
        "multinomial": {"model.temperature": 1.0},
        "top_k_top_p": {"model.top_k": 8, "model.top_p": 0.9},
        "beam": {"model.beam_k": 1, "model.write_uncertainty": True},
    }
    processes = {}
    for mode, overrides in settings.items():
        config = six_iterations(
            CONFIGS / "tiny_nextaccel.yaml",
            tmp_path / f"{mode}.yaml",
            **{"model.tokenizer_checkpoint": str(tokenizer_checkpoint), "model.decoding": mode, **overrides},
        )
        command = ["direct", "predict", str(tmp_path / mode), "--cfg", str(config), "--checkpoint"]
        command += [str(transformer_run / "model_5.pt"), "--data-root", str(data_root), *CPU]
        processes[mode] = start(command, cwd=tmp_path)
    for process in processes.values():  # two at a time would not be faster on two cores
        finish(process)
    for mode in settings:
        for source in data_root.glob("*.h5"):
            with h5py.File(tmp_path / mode / source.name, "r") as written:
                reconstruction = written["reconstruction"][()]
            assert reconstruction.shape == (2, 64, 64) and np.isfinite(reconstruction).all(), mode
            uncertainty_file = tmp_path / mode / UNCERTAINTY_FOLDER / source.name
            assert uncertainty_file.exists() == (mode == "beam")
            if mode == "beam":
                with h5py.File(uncertainty_file, "r") as written:
                    uncertainty = written["uncertainty"][()]
                assert uncertainty.shape == reconstruction.shape
                assert uncertainty.min() >= 0 and uncertainty.max() <= 1


def test_direct_predict_writes_exactly_the_engines_argmax_reconstruction(
    transformer_run, tokenizer_checkpoint, data_root, tmp_path, monkeypatch
):
    """`direct predict` writes what the engine reconstructs in process from the same batch (argmax is deterministic):
    the values, not only the shapes, of the plugin's prediction path through DIRECT."""
    import direct.environment
    from direct.data.datasets import build_dataset_from_input
    from direct.train import build_transforms_from_environment
    from torch.utils.data import default_collate

    config = six_iterations(
        CONFIGS / "tiny_nextaccel.yaml",
        tmp_path / "argmax.yaml",
        **{"model.tokenizer_checkpoint": str(tokenizer_checkpoint)},
    )
    command = ["direct", "predict", str(tmp_path / "out"), "--cfg", str(config), "--checkpoint"]
    finish(start([*command, str(transformer_run / "model_5.pt"), "--data-root", str(data_root), *CPU], cwd=tmp_path))

    monkeypatch.setattr(direct.environment, "setup_logging", lambda *args, **kwargs: None)
    env = direct.environment.setup_common_environment("run", tmp_path / "env", str(config), "cpu", 0, False)
    engine = env.engine
    engine.model.load_state_dict(torch.load(transformer_run / "model_5.pt", weights_only=True)["model"])
    engine.ndim = 2
    engine.models_validation_mode()
    dataset_config = env.cfg.inference.dataset
    dataset = build_dataset_from_input(
        build_transforms_from_environment(env, dataset_config), dataset_config, data_root=data_root
    )
    for source in sorted(data_root.glob("*.h5")):
        batch = default_collate([sample for sample in dataset if Path(sample["filename"]).name == source.name])
        with torch.no_grad():
            output = engine._do_iteration(batch).output_image  # B, H, W at DIRECT's normalised scale
        expected = (output * batch["scaling_factor"][:, None, None]).numpy()
        with h5py.File(tmp_path / "out" / source.name, "r") as written:
            reconstruction = written["reconstruction"][()]
        assert reconstruction.shape == expected.shape == (2, 64, 64)
        np.testing.assert_allclose(reconstruction, expected, rtol=1e-5, atol=1e-6 * float(np.abs(expected).max()))


# In-process engine ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_engine(tokenizer_checkpoint, transformer_run) -> NextAccelEngine:
    engine = build(engine_config(tokenizer_checkpoint))
    engine.model.load_state_dict(torch.load(transformer_run / "model_5.pt", weights_only=True)["model"])
    engine.model.eval()
    return engine


def test_argmax_tokens_are_bit_identical_across_runs_and_engines(trained_engine, tokenizer_checkpoint, transformer_run):
    batch = make_batch()
    with torch.no_grad():
        first = trained_engine.reconstruct(batch)
        second = trained_engine.reconstruct(batch)
        other = build(engine_config(tokenizer_checkpoint))
        other.model.load_state_dict(torch.load(transformer_run / "model_5.pt", weights_only=True)["model"])
        third = other.model.eval() and other.reconstruct(batch)
    assert [tuple(t.shape) for t in first["tokens"]] == [(2, g, g) for g in (3, 4, 5, 6, 7, 8)]
    for outputs in (second, third):
        assert all(torch.equal(a, b) for a, b in zip(first["tokens"], outputs["tokens"], strict=True))
        assert torch.equal(first["output_image"], outputs["output_image"])
    assert first["output_image"].shape == (2, 64, 64, 2)


def test_kspace_scale_leaves_every_token_and_scales_the_output(trained_engine):
    batch = make_batch()
    scaled = {**batch, **{key: 100 * batch[key] for key in ("kspace", "masked_kspace", "target")}}
    with torch.no_grad():
        first, second = trained_engine.reconstruct(batch), trained_engine.reconstruct(scaled)
        images, _ = trained_engine.hierarchy(batch)
        images_scaled, _ = trained_engine.hierarchy(scaled)
    for level, (a, b) in enumerate(zip(first["tokens"], second["tokens"], strict=True)):
        assert torch.equal(a, b), f"level {level}"
    peak = float(second["output_image"].abs().max())
    torch.testing.assert_close(second["output_image"], 100 * first["output_image"], rtol=1e-4, atol=1e-4 * peak)
    torch.testing.assert_close(images_scaled, images, rtol=1e-4, atol=1e-5)  # what the tokenizer sees (training)


def test_evaluation_iteration_returns_magnitude_and_uncertainty(trained_engine):
    with torch.no_grad():
        output = trained_engine._do_iteration(make_batch())
        probed = trained_engine.reconstruct(make_batch(), want_probs=True)
    assert output.output_image.shape == (2, 64, 64) and (output.output_image >= 0).all()
    assert probed["uncertainty"].shape == (2, 64, 64)
    assert 0 <= probed["uncertainty"].min() and probed["uncertainty"].max() <= 1


def test_training_iteration_updates_only_the_transformer(tokenizer_checkpoint):
    engine = build(engine_config(tokenizer_checkpoint))
    engine.initialise_from_tokenizer()
    tokenizer_encoder = engine.tokenizer.encoder.state_dict()
    for key, value in engine.transformer.context_encoder.state_dict().items():
        assert torch.equal(value, tokenizer_encoder[key]), key
    assert all(not p.requires_grad for p in engine.tokenizer.parameters())
    assert "tokenizer" not in engine.models and not engine.models["sensitivity_model"].training
    losses = engine.build_loss()
    assert list(losses) == ["token_cross_entropy"] and losses["token_cross_entropy"].source_key == "token_cross_entropy"
    engine.models_training_mode()  # as DIRECT's training loop does
    with EventStorage(0) as storage:
        output = engine._do_iteration(make_batch(), losses)
        logged = storage.latest()
    assert {f"token_accuracy_{name}" for name in LEVEL_NAMES} <= set(logged)
    assert set(output.data_dict) == {"token_cross_entropy"} and output.data_dict["token_cross_entropy"].item() > 0
    assert output.output_image is None
    assert engine.transformer.head.weight.grad is not None
    assert engine.transformer.context_encoder.conv_in.weight.grad is not None
    assert all(p.grad is None for p in engine.tokenizer.parameters())
    assert all(p.grad is None for p in engine.models["sensitivity_model"].parameters())
    assert not engine.tokenizer.training and not engine.models["sensitivity_model"].training


def test_data_consistency_keeps_consistent_images_and_restores_measurements(trained_engine):
    batch = make_batch()
    sensitivity = trained_engine.compute_sensitivity_map(batch["sensitivity_map"])  # sum_c |S_c|^2 = 1
    image = torch.randn(2, 64, 64, 2, generator=torch.Generator().manual_seed(0))
    measured = fft2(expand_operator(image, sensitivity, dim=1), dim=(2, 3)) * batch["sampling_mask"]
    consistent = trained_engine.data_consistency(image, measured, sensitivity, batch["sampling_mask"])
    torch.testing.assert_close(consistent, image, atol=1e-5, rtol=1e-5)
    from_zero = trained_engine.data_consistency(torch.zeros_like(image), measured, sensitivity, batch["sampling_mask"])
    zero_filled = sense_adjoint(measured, sensitivity, batch["sampling_mask"][:, 0, :, :, 0], ifft2)
    torch.testing.assert_close(from_zero, zero_filled, atol=1e-5, rtol=1e-5)


def test_data_consistency_option_changes_the_output(tokenizer_checkpoint, transformer_run, trained_engine):
    engine = build(engine_config(tokenizer_checkpoint, data_consistency=True))
    engine.model.load_state_dict(trained_engine.model.state_dict())
    engine.model.eval()
    batch = make_batch()
    batch["sensitivity_map"] = engine.compute_sensitivity_map(batch["sensitivity_map"])
    with torch.no_grad():
        plain, corrected = trained_engine.reconstruct(batch)["output_image"], engine.reconstruct(batch)["output_image"]
    assert not torch.equal(plain, corrected) and torch.isfinite(corrected).all()


# Errors a configuration or a batch can cause ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # choices: refused by the merge itself (engine_config merges as DIRECT does), naming the key and the values
        ({"decoding": "greedy"}, r"'greedy', expected one of \[argmax, multinomial, top_k_top_p, beam\]\n.*decoding"),
        ({"decoding": "beam", "beam_k": 4}, "model.beam_k 4 is not one of"),
        ({"beam_k": 0}, "model.beam_k 0 is not one of"),
        ({"top_p": 0.0}, r"model.top_p 0.0 is not in \(0, 1\]"),
        ({"top_p": 1.5}, r"model.top_p 1.5 is not in \(0, 1\]"),
        ({"temperature": 0.0}, "model.temperature 0.0 must be positive"),
        ({"mask_family": "spiral"}, r"'spiral', expected one of \[cartesian_x, cartesian_y, gaussian2d, radial\]"),
        ({"lr_schedule": "step"}, r"'step', expected one of \[linear, cosine, direct\]\n.*full_key: lr_schedule"),
        ({"training_masks": "random"}, r"'random', expected one of \[file, fresh\]\n.*full_key: training_masks"),
        ({"privileged_context": True}, "use engine_name: TeacherEngine"),
        ({"token_grids": [3, 4, 5, 6, 8]}, r"model\.token_grids \[3, 4, 5, 6, 8\] must name 6 grids"),
        ({"codebook_size": 32}, "codebook_size=64 .* the configuration has 32"),
        ({"token_grids": [3, 4, 5, 6, 7, 7]}, r"token_grids=\[3, 4, 5, 6, 7, 8\] .* the configuration has"),
        ({"tokenizer_quant_resi": 0.25}, "quant_resi=0.5 .* the configuration has 0.25"),
        ({"mask_family": "radial", "base_channels": 8}, "base_channels=16"),
    ],
)
def test_bad_configurations_fail_at_engine_construction(tokenizer_checkpoint, overrides, message):
    with pytest.raises(ValueError, match=message):
        build(engine_config(tokenizer_checkpoint, **overrides))


def test_tokenizer_checkpoint_problems_are_named(tokenizer_checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"model\.tokenizer_checkpoint is not set"):
        build(engine_config(""))
    with pytest.raises(FileNotFoundError, match=r"does-not-exist\.pt"):
        build(engine_config(tmp_path / "does-not-exist.pt"))
    bare = tmp_path / "model_5.pt"  # no config.yaml next to it: the state dict alone must reveal the mismatch
    shutil.copy(tokenizer_checkpoint, bare)
    with pytest.raises(
        ValueError, match=r"'quantizer.codebook' of shape \(64, 8\), the configured network needs \(32, 8\)"
    ):
        build(engine_config(bare, codebook_size=32))
    config = engine_config(bare)
    del config.additional_models["sensitivity_model"]
    with pytest.raises(ValueError, match="was trained with a sensitivity_model"):
        build(config)
    old = torch.load(bare, weights_only=True)
    del old["model"]["intensity_gain"]  # a tokenizer from before the plugin owned the intensity
    torch.save(old, bare)
    with pytest.raises(ValueError, match=r"model_5\.pt' was trained under DIRECT's intensity normalisation"):
        build(engine_config(bare))


def test_foreign_training_losses_are_refused(tokenizer_checkpoint, tmp_path):
    config = engine_config(tokenizer_checkpoint)
    config.training.loss.losses.append({"function": "l1_loss", "multiplier": 1.0})
    with pytest.raises(ValueError, match=r"must only name \['token_cross_entropy'\]"):
        build(config).train(None, None, [], tmp_path)


def test_dataset_mask_of_another_family_is_refused_in_training_and_prediction(trained_engine):
    batch = make_batch(family="radial")
    batch["sensitivity_map"] = trained_engine.compute_sensitivity_map(batch["sensitivity_map"])
    message = f"sampling mask of {FILENAME} is not level R32 of the nested cartesian_y mask .* name: NestedCartesianY"
    trained_engine.model.train()
    masks = trained_engine.cfg.model.training_masks
    trained_engine.cfg.model.training_masks = "file"  # DIRECT's mask is checked in training with per-file masks
    try:
        with pytest.raises(ValueError, match=message):
            trained_engine.training_outputs(batch)
    finally:
        trained_engine.cfg.model.training_masks = masks
        trained_engine.model.eval()
    message = (
        f"sampling mask of {FILENAME} is the nested radial mask at R = 32, a family the checkpoint was not trained "
        r"on: this checkpoint reconstructs the nested families \['cartesian_y'\]"
    )
    with pytest.raises(ValueError, match=message), torch.no_grad():  # `direct predict` of a radial acquisition
        trained_engine.reconstruct(batch)


def test_fresh_training_masks_draw_new_acquisitions(tokenizer_checkpoint):
    engine = build(engine_config(tokenizer_checkpoint, training_masks="fresh"))
    engine.models_training_mode()
    batch = make_batch(family="radial")  # DIRECT's training input is not used with fresh masks
    first, second = engine.hierarchy(batch)[0], engine.hierarchy(batch)[0]
    assert not torch.equal(first[:, 0], second[:, 0])  # a new R32 acquisition per call
    torch.testing.assert_close(first[:, -1], second[:, -1])  # the same fully sampled image
    engine.model.eval()
    with pytest.raises(ValueError, match="nested radial mask at R = 32, a family"):  # evaluation: DIRECT's masks
        engine.hierarchy(batch)


def test_input_outside_the_ladder_is_refused(trained_engine):
    batch = make_batch()
    batch["sampling_mask"] = batch["sampling_mask"] & (torch.arange(64) % 2 == 0)[None, None, :, None, None]  # rows
    with pytest.raises(ValueError, match=f"sampling mask of {FILENAME} is sampled at R = 64.0, outside the ladder"):
        trained_engine.reconstruct(batch)


def test_checkpoint_of_another_tokenizer_is_refused(trained_engine, tokenizer_checkpoint):
    engine = build(engine_config(tokenizer_checkpoint))  # fresh model: its codebook is not the tokenizer's
    with pytest.raises(ValueError, match=r"codebook differs from model\.tokenizer_checkpoint"):
        engine._do_iteration(make_batch())


def paper_model(path: Path) -> NextAccel:
    """The model of a config, merged as DIRECT merges it, built on the meta device."""
    config = OmegaConf.merge(OmegaConf.structured(NextAccelConfig), OmegaConf.load(path).model)
    names = NextAccel.__init__.__code__.co_varnames[1 : NextAccel.__init__.__code__.co_argcount]
    keys = {k: tuple(config[k]) if OmegaConf.is_list(config[k]) else config[k] for k in names if k in config}
    with torch.device("meta"):
        return NextAccel(**keys)


@pytest.mark.parametrize("family", ["cartesian_y", "cartesian_x", "radial", "gaussian2d"])
def test_paper_configs_build(family):
    path = PAPER_CONFIGS / f"nextaccel_{family}.yaml"
    config = OmegaConf.load(path)
    assert config.model.mask_family == family
    assert config.training.datasets[0].transforms.masking.accelerations == [32]
    model = paper_model(path)
    assert (len(model.blocks), model.head.in_features, model.blocks[0].self_attn.num_heads) == (16, 1024, 16)
    assert sum(p.numel() for p in model.parameters()) == 401_868_768

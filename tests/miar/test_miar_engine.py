"""MIAR inside DIRECT: the teacher-forced engine in process, its frozen tokenizer (loaded by the engine from
model.tokenizer_checkpoint, in no MIAR checkpoint), and plain `direct train` / `direct predict` of the tiny MSVQ-VAE and
MIAR configs on single-coil (magnitude-style) data, one after the other as the README's pipeline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from direct.checkpointer import Checkpointer
from direct.utils.events import EventStorage
from omegaconf import OmegaConf

from direct_nextaccel.core.checkpoints import CheckpointError
from direct_nextaccel.core.errors import NonFiniteError
from direct_nextaccel.data.fastmri_h5 import fastmri_filename, write_fastmri_h5
from direct_nextaccel.data.simulate import simulate_volume
from direct_nextaccel.miar.config import MIARConfig
from direct_nextaccel.miar.miar import MIAR
from direct_nextaccel.miar.msvqvae import MSVQVAE
from direct_nextaccel.miar.transformer_engine import MIAREngine, load_tokenizer_state

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def engine(make_engine, tokenizer_checkpoint):
    torch.manual_seed(1)
    built = make_engine("tiny_miar.yaml", MIARConfig, MIAR, MIAREngine, tokenizer_checkpoint=str(tokenizer_checkpoint))
    built.initialise_from_tokenizer()  # what train() does for a fresh run
    return built


def test_training_iteration_is_teacher_forced_cross_entropy(engine, make_batch):
    engine.model.train()
    with EventStorage(0) as storage:
        output = engine._do_iteration(make_batch(), engine.build_loss())
        assert 0.0 <= storage.latest()["token_accuracy"] <= 1.0
    assert output.output_image is None  # training decodes nothing
    assert set(output.data_dict) == {"token_cross_entropy"}
    assert output.data_dict["token_cross_entropy"] > 0
    assert engine.miar.head.weight.grad.abs().sum() > 0
    assert engine.miar.context_encoder.conv_in.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in engine.miar.tokenizer.parameters())


def test_prediction_needs_only_the_low_resolution_data(engine, make_batch):
    batch = make_batch()
    del batch["kspace"]
    engine.model.eval()
    with torch.no_grad():
        output = engine._do_iteration(batch, engine.build_loss())
    assert output.output_image.shape == (2, 64, 64) and torch.isfinite(output.output_image).all()
    assert output.data_dict == {} or all(v == 0 for v in output.data_dict.values())


def test_validation_with_the_hr_kspace_also_scores_the_tokens(engine, make_batch):
    engine.model.eval()
    with torch.no_grad():
        output = engine._do_iteration(make_batch(), engine.build_loss())
    assert output.data_dict["token_cross_entropy"] > 0


def test_blurred_input_changes_the_prediction(engine, make_batch):
    engine.model.eval()
    with torch.no_grad():
        sharp = engine._do_iteration(make_batch()).output_image
        engine.cfg.model.lr_blur_sigma = 0.8
        blurred = engine._do_iteration(make_batch()).output_image
    assert not torch.equal(sharp, blurred)


def test_nonfinite_batch_stops_before_the_update(engine, make_batch):
    engine.model.train()
    with pytest.raises(NonFiniteError, match=r"non-finite (masked_)?kspace in file_brain_AXT2_001_0001\.h5 slice 0"):
        engine._do_iteration(make_batch(nan=True), engine.build_loss())
    assert all(p.grad is None for p in engine.model.parameters())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"beam_k": 4}, r"^model\.beam_k 4 is not one of \(1, 2, 3\)$"),
        # a choice is refused by the merge itself (as DIRECT merges), naming the key and the allowed values
        ({"decoding": "greedy"}, r"Invalid value 'greedy', expected one of \[argmax, multinomial, top_k_top_p, beam\]"),
        ({"lr_blur_sigma": -1.0}, r"^model\.lr_blur_sigma -1.0 must be >= 0"),
    ],
)
def test_bad_engine_settings_name_the_value(make_engine, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_engine("tiny_miar.yaml", MIARConfig, MIAR, MIAREngine, **overrides)


def test_image_losses_are_refused(engine):
    engine.cfg.training.loss.losses.append({"function": "l1_loss", "multiplier": 1.0})
    message = r"training.loss.losses .*'l1_loss'.* must only name \['token_cross_entropy'\]: MIAREngine"
    with pytest.raises(ValueError, match=message):
        MIAREngine(engine.cfg, engine.model, "cpu", engine.forward_operator, engine.backward_operator)


def test_the_engine_loads_the_tokenizer_when_built(engine, make_tokenizer_state, tokenizer_checkpoint):
    state = make_tokenizer_state()
    assert all(torch.equal(value, state[key]) for key, value in engine.tokenizer.state_dict().items())
    assert engine.tokenizer is engine.miar.tokenizer and not engine.tokenizer.training
    assert engine.miar.tokenizer_source == f"model.tokenizer_checkpoint {str(tokenizer_checkpoint)!r}"
    encoder = engine.miar.context_encoder.state_dict()
    assert all(torch.equal(encoder[key], value) for key, value in engine.tokenizer.encoder.state_dict().items())


@pytest.mark.parametrize("unset", [None, ""])
def test_unset_tokenizer_checkpoint_is_one_line_naming_the_key(make_engine, unset):
    with pytest.raises(CheckpointError, match=r"^model\.tokenizer_checkpoint is not set: train the MSVQ-VAE") as error:
        make_engine("tiny_miar.yaml", MIARConfig, MIAR, MIAREngine, tokenizer_checkpoint=unset)
    assert "\n" not in str(error.value)


def test_tokenizer_checkpoint_loading(make_engine, make_tokenizer_state, tmp_path):
    def build(path):
        return make_engine("tiny_miar.yaml", MIARConfig, MIAR, MIAREngine, tokenizer_checkpoint=str(path))

    with pytest.raises(ValueError, match=r"tokenizer_checkpoint '.*missing.pt' is not a file"):
        build(tmp_path / "missing.pt")
    state = make_tokenizer_state()
    path = tmp_path / "model_5.pt"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "__version__": "2.2.0"}, path)  # DDP keys
    assert torch.equal(build(path).tokenizer.quantizer.codebook, state["quantizer.codebook"])
    torch.save({"optimizer": {}}, path)
    with pytest.raises(ValueError, match="has no 'model' state dict"):
        build(path)
    torch.save({"model": {**state, "extra.weight": torch.ones(1)}}, path)
    message = r"^model\.tokenizer_checkpoint '.*model_5\.pt' has unexpected key 'extra"
    with pytest.raises(CheckpointError, match=message):
        build(path)


def test_tokenizer_run_of_another_shape_is_refused(make_engine, make_tokenizer_checkpoint, tmp_path):
    """quant_resi does not show in the state dict: the tokenizer run's config.yaml names it."""
    path = make_tokenizer_checkpoint(tmp_path / "msvqvae" / "model_5.pt")
    config = OmegaConf.load(REPO / "direct_nextaccel" / "configs" / "tiny_msvqvae.yaml")
    config.model.quant_resi = 0.25
    OmegaConf.save(config, path.parent / "config.yaml")
    with pytest.raises(CheckpointError, match=r"trained with quant_resi=0\.25 .*, the configuration has 0\.5"):
        make_engine("tiny_miar.yaml", MIARConfig, MIAR, MIAREngine, tokenizer_checkpoint=str(path))


def test_miar_checkpoints_carry_no_tokenizer_and_load_with_the_configured_one(engine, make_engine, tmp_path):
    """DIRECT's checkpointer (as the plugin engines use it) saves MIAR without its tokenizer; another engine built from
    the same config (with its own random transformer) loads the checkpoint, the tokenizer staying the configured one."""
    optimizer = torch.optim.AdamW(engine.model.parameters(), lr=1e-3)
    engine.checkpointer = Checkpointer(
        save_directory=tmp_path, save_to_disk=True, model=engine.model, optimizer=optimizer
    )
    engine.checkpointer.save(5)
    saved = torch.load(tmp_path / "model_5.pt", weights_only=True)["model"]
    assert "head.weight" in saved and not any(key.startswith("tokenizer.") for key in saved)
    torch.manual_seed(7)
    other = make_engine(
        "tiny_miar.yaml", MIARConfig, MIAR, MIAREngine, tokenizer_checkpoint=engine.cfg.model.tokenizer_checkpoint
    )
    assert not torch.equal(other.miar.head.weight, engine.miar.head.weight)
    other.checkpointer = Checkpointer(save_directory=tmp_path, model=other.model)
    other.checkpointer.load_models_from_file(tmp_path / "model_5.pt")
    for key, value in engine.model.state_dict().items():
        assert torch.equal(other.model.state_dict()[key], value), key
    assert all(
        torch.equal(a, b)
        for a, b in zip(other.tokenizer.state_dict().values(), engine.tokenizer.state_dict().values(), strict=True)
    )


def test_an_older_miar_checkpoint_carrying_its_tokenizer(engine, make_engine, make_tokenizer_checkpoint, tmp_path):
    """A checkpoint saved when MIAR still carried its tokenizer loads if that tokenizer is the configured one (its
    tokenizer.* weights are then ignored) and is refused in one line if not."""
    older = {**engine.model.state_dict(), **{f"tokenizer.{k}": v for k, v in engine.tokenizer.state_dict().items()}}
    path = tmp_path / "model_3.pt"
    torch.save({"model": older}, path)
    torch.manual_seed(7)
    same = make_engine(
        "tiny_miar.yaml", MIARConfig, MIAR, MIAREngine, tokenizer_checkpoint=engine.cfg.model.tokenizer_checkpoint
    )
    same.checkpointer = Checkpointer(save_directory=tmp_path, model=same.model)
    same.checkpointer.load_models_from_file(path)
    assert torch.equal(same.miar.head.weight, engine.miar.head.weight)

    other_tokenizer = make_tokenizer_checkpoint(tmp_path / "other" / "model_0.pt", seed=5)
    other = make_engine("tiny_miar.yaml", MIARConfig, MIAR, MIAREngine, tokenizer_checkpoint=str(other_tokenizer))
    other.checkpointer = Checkpointer(save_directory=tmp_path, model=other.model)
    with pytest.raises(
        CheckpointError,
        match=(
            r"carries its own MSVQ-VAE .* not the tokenizer MIAR uses "
            r"\(model\.tokenizer_checkpoint '.*other/model_0\.pt'\): '.*' differs"
        ),
    ) as error:
        other.checkpointer.load_models_from_file(path)
    assert "\n" not in str(error.value)


# The pipeline through DIRECT's command line -----------------------------------------------------------------------


def phantom(slices: int = 2, size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    inner = [((xx - 0.2 * i) / 0.2) ** 2 + (yy / 0.3) ** 2 < 1 for i in range(slices)]
    return np.stack([((xx / 0.7) ** 2 + (yy / 0.8) ** 2 < 1) + 0.5 * m for m in inner]).astype(np.float32)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Two single-coil volumes, as `direct-nextaccel simulate --coils 1` writes magnitude slices."""
    root = tmp_path_factory.mktemp("sr_data")
    for acquisition, subject in (("AXT1", "900_0001"), ("AXT2", "900_0002")):
        kspace, _ = simulate_volume(phantom(), coils=1, matrix=(64, 64), seed=int(subject[-1]))
        write_fastmri_h5(root / fastmri_filename(acquisition, subject), kspace, acquisition)
    return root


def short_config(tmp_path: Path, name: str, **model) -> Path:
    config = OmegaConf.load(REPO / "direct_nextaccel" / "configs" / f"{name}.yaml")
    config.training.num_iterations = 6  # DIRECT logs, validates and checkpoints from iteration 5
    config.training.checkpointer.checkpoint_steps = 6
    config.training.validation_steps = 6
    config.training.lr_warmup_iter = 2
    config.logging.log_interval = 1
    config.model = OmegaConf.merge(config.model, model)
    path = tmp_path / f"{name}.yaml"
    OmegaConf.save(config, path)
    return path


def run(command: list[str], cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{command[:2]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


CPU = ["--device", "cpu", "--num-gpus", "0", "--num-workers", "0"]


def logged_names(run_dir: Path) -> set[str]:
    """Every scalar name in a run's metrics.json (one JSON object per line)."""
    return set().union(*(json.loads(line) for line in (run_dir / "metrics.json").read_text().splitlines()))


@pytest.mark.slow
def test_direct_train_and_predict_tokenizer_then_miar(data_root, tmp_path):
    roots = ["--training-root", str(data_root), "--validation-root", str(data_root)]
    tokenizer_config = short_config(tmp_path, "tiny_msvqvae")
    run(["direct", "train", "runs", "--cfg", str(tokenizer_config), "--name", "msvqvae", *roots, *CPU], tmp_path)
    tokenizer_checkpoint = tmp_path / "runs" / "msvqvae" / "model_5.pt"
    logged = logged_names(tmp_path / "runs" / "msvqvae")
    assert {"commitment_loss", "codebook_usage_s8", "decoded_scales_mean"} <= logged
    predict = ["direct", "predict", "out_msvqvae", "--cfg", str(tokenizer_config), "--data-root", str(data_root)]
    run([*predict, "--checkpoint", str(tokenizer_checkpoint), *CPU], tmp_path)

    miar_config = short_config(tmp_path, "tiny_miar", tokenizer_checkpoint=str(tokenizer_checkpoint))
    run(["direct", "train", "runs", "--cfg", str(miar_config), "--name", "miar", *roots, *CPU], tmp_path)
    logged = logged_names(tmp_path / "runs" / "miar")
    assert {"token_cross_entropy", "token_accuracy"} <= logged
    assert any("fastmri_psnr" in key for key in logged), sorted(logged)
    saved = torch.load(tmp_path / "runs" / "miar" / "model_5.pt", weights_only=True)["model"]
    assert "head.weight" in saved and not any(key.startswith("tokenizer.") for key in saved)  # the engine's, not saved
    predict = ["direct", "predict", "out_miar", "--cfg", str(miar_config), "--data-root", str(data_root)]
    run([*predict, "--checkpoint", "runs/miar/model_5.pt", *CPU], tmp_path)  # the tokenizer from the config
    for out in ("out_msvqvae", "out_miar"):
        for source in data_root.glob("*.h5"):
            with h5py.File(tmp_path / out / source.name, "r") as written:
                reconstruction = written["reconstruction"][()]
            assert reconstruction.shape == (2, 64, 64) and np.isfinite(reconstruction).all()


# Multi-contrast (T1 -> T2) ------------------------------------------------------------------------------------------


@pytest.fixture
def guided_engine(make_engine, tokenizer_checkpoint):
    torch.manual_seed(1)
    built = make_engine(
        "tiny_miar_t1t2.yaml", MIARConfig, MIAR, MIAREngine, tokenizer_checkpoint=str(tokenizer_checkpoint)
    )
    built.initialise_from_tokenizer()
    return built


def test_reference_channel_of_the_lr_encoder_starts_at_zero(guided_engine):
    """The T1 -> T2 model starts from the tokenizer's encoder with one more input channel, zero-initialised."""
    weight = guided_engine.miar.context_encoder.conv_in.weight  # base, 3, k, k
    assert torch.equal(weight[:, :2], guided_engine.tokenizer.encoder.conv_in.weight)
    assert torch.equal(weight[:, 2:], torch.zeros_like(weight[:, 2:]))


def test_reference_image_of_the_batch_conditions_the_encoder(guided_engine, make_batch):
    batch = make_batch()
    batch["reference_image"] = 3.0 * torch.rand(2, 64, 64)
    guided_engine.model.train()
    with EventStorage(0):
        output = guided_engine._do_iteration(batch, guided_engine.build_loss())
    assert output.data_dict["token_cross_entropy"] > 0
    assert guided_engine.miar.context_encoder.conv_in.weight.grad[:, 2].abs().sum() > 0
    guided_engine.model.eval()
    del batch["kspace"]
    with torch.no_grad():
        assert guided_engine._do_iteration(batch).output_image.shape == (2, 64, 64)


def test_reference_contrast_without_reference_image_names_the_dataset(guided_engine, make_batch):
    guided_engine.model.train()
    with pytest.raises(ValueError, match=r"batch has no 'reference_image': use the dataset `name: FastMRIReference`"):
        guided_engine._do_iteration(make_batch(), guided_engine.build_loss())


@pytest.mark.slow
def test_direct_train_and_predict_t1_guided_t2(tmp_path, make_tokenizer_checkpoint):
    """`direct train` then `direct predict` of direct_nextaccel/configs/tiny_miar_t1t2.yaml on a T1/T2 pair of one
    subject (the tokenizer checkpoint is a freshly initialised tiny MSVQ-VAE: this checks the plumbing, not the
    quality)."""
    data_root = tmp_path / "data"
    for acquisition, seed in (("AXT1", 1), ("AXT2", 2)):
        kspace, _ = simulate_volume(phantom(), coils=1, matrix=(64, 64), seed=seed)
        write_fastmri_h5(data_root / fastmri_filename(acquisition, "900_0001"), kspace, acquisition)
    tokenizer_checkpoint = make_tokenizer_checkpoint(tmp_path / "model_0.pt")
    config = short_config(tmp_path, "tiny_miar_t1t2", tokenizer_checkpoint=str(tokenizer_checkpoint))
    roots = ["--training-root", str(data_root), "--validation-root", str(data_root)]
    run(["direct", "train", "runs", "--cfg", str(config), "--name", "t1t2", *roots, *CPU], tmp_path)
    logged = logged_names(tmp_path / "runs" / "t1t2")
    assert {"token_cross_entropy", "token_accuracy"} <= logged
    assert any("fastmri_psnr" in key for key in logged), sorted(logged)
    predict = ["direct", "predict", "out", "--cfg", str(config), "--data-root", str(data_root)]
    run([*predict, "--checkpoint", "runs/t1t2/model_5.pt", *CPU], tmp_path)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.h5")) == ["file_brain_AXT2_900_0001.h5"]
    with h5py.File(tmp_path / "out" / "file_brain_AXT2_900_0001.h5", "r") as written:
        reconstruction = written["reconstruction"][()]
    assert reconstruction.shape == (2, 64, 64) and np.isfinite(reconstruction).all()


def test_kspace_scale_leaves_the_input_and_scales_the_output(engine, make_batch):
    engine.model.eval()
    batch = make_batch()
    scaled = {**batch, **{key: 100 * batch[key] for key in ("kspace", "masked_kspace", "target")}}
    with torch.no_grad():
        first, second = (
            engine._do_iteration(batch, engine.build_loss()),
            engine._do_iteration(scaled, engine.build_loss()),
        )
        lr = engine.lr_image({**batch, "sensitivity_map": engine.compute_sensitivity_map(batch["sensitivity_map"])})
        lr_scaled = engine.lr_image(
            {**scaled, "sensitivity_map": engine.compute_sensitivity_map(scaled["sensitivity_map"])}
        )
    torch.testing.assert_close(lr_scaled, lr, rtol=1e-4, atol=1e-5)  # what the transformer and tokenizer see
    peak = float(second.output_image.max())
    torch.testing.assert_close(second.output_image, 100 * first.output_image, rtol=1e-4, atol=1e-4 * peak)
    # Validation's teacher-forced loss is computed on the same tokens.
    torch.testing.assert_close(second.data_dict["token_cross_entropy"], first.data_dict["token_cross_entropy"])


def test_tokenizer_from_before_the_intensity_convention_is_refused(tmp_path):
    state = MSVQVAE(
        base_channels=8, channel_multipliers=(1, 2), latent_dim=4, codebook_size=8, scales=(1, 2, 4), image_size=(8, 8)
    ).state_dict()
    del state["intensity_gain"]
    torch.save({"model": state}, tmp_path / "model_9.pt")
    with pytest.raises(ValueError, match=r"model_9\.pt' was trained under DIRECT's intensity normalisation"):
        load_tokenizer_state(tmp_path / "model_9.pt")

"""The MSVQ-VAE engine inside DIRECT: losses named in YAML, codebook statistics once per step, the NaN guard."""

import pytest
import torch
from direct.utils.events import EventStorage

from direct_nextaccel.core.errors import NonFiniteError
from direct_nextaccel.miar.config import MSVQVAEConfig
from direct_nextaccel.miar.msvqvae import MSVQVAE
from direct_nextaccel.miar.msvqvae_engine import MSVQVAEEngine


@pytest.fixture
def engine(make_engine):
    torch.manual_seed(0)
    return make_engine("tiny_msvqvae.yaml", MSVQVAEConfig, MSVQVAE, MSVQVAEEngine)


def test_loss_names_come_from_the_yaml(engine):
    losses = engine.build_loss()
    assert list(losses) == ["l1_loss", "ssim_magnitude_loss", "commitment_loss"]
    assert losses["commitment_loss"].source_key == "commitment_loss"


def test_training_iteration_updates_the_codebook_and_logs_every_scale(engine, make_batch):
    engine.model.train()
    codebook = engine.model.quantizer.codebook.clone()
    with EventStorage(0) as storage:
        output = engine._do_iteration(make_batch(), engine.build_loss())
        logged = storage.latest()
    assert output.output_image.shape == (2, 64, 64)
    assert set(output.data_dict) == {"l1_loss", "ssim_magnitude_loss", "commitment_loss"}
    assert engine.model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert bool(engine.model.quantizer.initialized)  # k-means start on the first batch
    assert not torch.equal(engine.model.quantizer.codebook, codebook)  # k-means start, then this step's EMA update
    for side in (1, 2, 3, 4, 6, 8):
        assert f"codebook_usage_s{side}" in logged and f"codebook_perplexity_s{side}" in logged
    assert 1 <= logged["decoded_scales_mean"] <= 6


def test_evaluation_reconstructs_from_all_scales_deterministically(engine, make_batch):
    engine.model.eval()
    with torch.no_grad():
        first = engine._do_iteration(make_batch(), engine.build_loss())
        second = engine._do_iteration(make_batch(), engine.build_loss())
    assert torch.equal(first.output_image, second.output_image)


def test_nonfinite_batch_stops_before_any_update(engine, make_batch):
    engine.model.train()
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    with pytest.raises(NonFiniteError, match=r"non-finite kspace"):
        engine._do_iteration(make_batch(nan=True), engine.build_loss())
    for key, value in engine.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_missing_fully_sampled_kspace_is_a_clear_error(engine, make_batch):
    batch = make_batch()
    del batch["kspace"]
    with pytest.raises(ValueError, match="delete_kspace: false"):
        engine._do_iteration(batch, engine.build_loss())

"""Projected discriminator: frozen backbone, gradients to the image, LSGAN losses and the discriminator update."""

import logging
import multiprocessing
import re

import pytest
import torch

from direct_nextaccel.modules import discriminator as discriminator_module
from direct_nextaccel.modules.discriminator import (
    ProjectedDiscriminator,
    build_discriminator_optimizer,
    discriminator_loss,
    discriminator_step,
    generator_adversarial_loss,
)
from direct_nextaccel.modules.vit import TRUNK_PREFIX, VisionTransformer
from direct_nextaccel.weights import WEIGHTS_DIR_ENV, missing_weight_message

TINY_VIT = {"image_size": 32, "patch_size": 8, "vit_dim": 32, "vit_depth": 4, "vit_heads": 4}


def tiny(backbone: str = "vit_random", seed: int = 0, **overrides) -> ProjectedDiscriminator:
    torch.manual_seed(seed)
    return ProjectedDiscriminator(backbone, **{**TINY_VIT, "block_indices": (1, 3), "head_channels": 8, **overrides})


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """No weights folder configured and every default cache empty, inside tmp_path."""
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def tiny_biomedclip_file(path, seed: int = 0):
    """An open_clip-like checkpoint whose ``visual.trunk.`` is a tiny ViT; returns that ViT."""
    torch.manual_seed(seed)
    vit = VisionTransformer(image_size=32, patch_size=8, dim=32, depth=4, num_heads=4)
    state = {TRUNK_PREFIX + key: value for key, value in vit.state_dict().items()}
    state["visual.head.proj.weight"] = torch.randn(16, 32)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return vit


def toy_batch(seed: int, batch: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Trivially separable: real images are constant, fake ones uniform noise."""
    generator = torch.Generator().manual_seed(seed)
    levels = torch.rand(batch, 1, 1, 1, generator=generator)
    return levels.expand(batch, 1, size, size).clone(), torch.rand(batch, 1, size, size, generator=generator)


def head_and_backbone_params(d: ProjectedDiscriminator):
    return [p.detach().clone() for p in d.heads.parameters()], [p.detach().clone() for p in d.vit.parameters()]


@pytest.mark.parametrize(("height", "width"), [(32, 32), (40, 24)])
def test_vit_discriminator_outputs_one_map_per_block(height, width):
    logits = tiny()(torch.rand(2, 1, height, width))
    assert [m.shape for m in logits] == [(2, 1, 4, 4)] * 2


def test_patch_discriminator_output():
    logits = tiny("patch")(torch.rand(2, 1, 32, 48))
    assert [m.shape for m in logits] == [(2, 1, 4, 6)]


def test_gradient_reaches_the_image_not_the_frozen_backbone():
    d = tiny()
    image = torch.rand(2, 1, 32, 32, requires_grad=True)
    generator_adversarial_loss(d(image)).backward()
    assert all(not p.requires_grad and p.grad is None for p in d.vit.parameters())
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert all(p.grad is not None for p in d.heads.parameters())


def test_backbone_stays_in_eval_mode_and_in_the_state_dict():
    d = tiny()
    d.train()
    assert d.training and all(head.training for head in d.heads)
    assert not any(module.training for module in d.vit.modules())
    assert "vit.blocks.3.mlp.fc2.weight" in d.state_dict()
    assert "mean" not in d.state_dict()


@pytest.mark.parametrize("backbone", ["patch", "vit_random"])
def test_discriminator_step_learns_a_separable_toy(backbone):
    d = tiny(backbone).train()
    optimizer = build_discriminator_optimizer(d, lr=1e-2)
    real, fake = toy_batch(seed=1)
    with torch.no_grad():
        before = discriminator_loss(d(real), d(fake)).item()
    losses = [discriminator_step(d, optimizer, real, fake) for _ in range(10)]
    with torch.no_grad():
        after = discriminator_loss(d(real), d(fake)).item()
    assert losses[0] == pytest.approx(before)
    assert after < 0.5 * before
    assert all(p.grad is None for p in d.parameters())


def test_discriminator_step_changes_only_the_heads():
    d = tiny()
    optimizer = build_discriminator_optimizer(d)
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == {id(p) for p in d.heads.parameters()}
    heads_before, backbone_before = head_and_backbone_params(d)
    fake = torch.rand(2, 1, 32, 32, requires_grad=True)
    discriminator_step(d, optimizer, torch.rand(2, 1, 32, 32), fake)
    heads_after, backbone_after = head_and_backbone_params(d)
    assert all(torch.equal(a, b) for a, b in zip(backbone_before, backbone_after, strict=True))
    assert all(not torch.equal(a, b) for a, b in zip(heads_before, heads_after, strict=True))
    assert fake.grad is None


def test_discriminator_step_clips_the_gradient_norm():
    real, fake = toy_batch(seed=2)

    def update_norm(grad_clip):
        d = tiny("patch")
        before = torch.cat([p.detach().flatten() for p in d.parameters()])
        discriminator_step(d, torch.optim.SGD(d.parameters(), lr=1.0), real, fake, grad_clip=grad_clip)
        return torch.linalg.vector_norm(torch.cat([p.detach().flatten() for p in d.parameters()]) - before).item()

    assert update_norm(None) > 0.01  # with SGD at lr 1 the update is the gradient itself
    assert update_norm(1e-3) == pytest.approx(1e-3, rel=1e-3)


def test_stale_generator_gradients_are_discarded():
    real, fake = toy_batch(seed=3)
    clean, dirty = tiny("patch"), tiny("patch")
    generator_adversarial_loss(dirty(torch.rand(4, 1, 32, 32, requires_grad=True))).backward()
    for d in (clean, dirty):
        discriminator_step(d, torch.optim.SGD(d.parameters(), lr=0.1), real, fake)
    for a, b in zip(clean.parameters(), dirty.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_biomedclip_without_weights_raises_the_missing_weight_message(no_weights):
    with pytest.raises(FileNotFoundError, match=re.escape(missing_weight_message("biomedclip"))):
        tiny("biomedclip")


def test_biomedclip_weights_path_that_is_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nothing.bin"))):
        tiny("biomedclip", weights_path=tmp_path / "nothing.bin")


def test_biomedclip_loads_the_found_checkpoint(no_weights, tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "weights"))
    source = tiny_biomedclip_file(tmp_path / "weights" / "open_clip_pytorch_model.bin")
    d = tiny("biomedclip", seed=5)
    for key, value in source.state_dict().items():
        assert torch.equal(d.vit.state_dict()[key], value)
    assert not any(p.requires_grad for p in d.vit.parameters())


def test_biomedclip_loads_an_explicit_weights_path(tmp_path):
    source = tiny_biomedclip_file(tmp_path / "elsewhere.bin")
    d = tiny("biomedclip", weights_path=tmp_path / "elsewhere.bin", seed=5)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(d.vit(x), source.eval()(x))


def test_stand_in_backbones_warn_once(caplog):
    discriminator_module._warn_stand_in.cache_clear()
    with caplog.at_level(logging.WARNING, logger=discriminator_module.__name__):
        tiny("patch")
        tiny("patch")
        tiny("vit_random")
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert all("NOT the paper's BiomedCLIP discriminator" in message for message in messages)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"backbone": "dino"}, "'dino'"),
        ({"block_indices": (1, 4)}, "block index 4"),
        ({"head_channels": 0}, "head_channels 0"),
    ],
)
def test_constructor_checks(kwargs, named):
    with pytest.raises(ValueError, match=named):
        tiny(**kwargs)


def test_input_must_be_one_channel_images():
    with pytest.raises(ValueError, match=r"\(2, 2, 32, 32\)"):
        tiny("patch")(torch.rand(2, 2, 32, 32))


def test_lsgan_losses_equal_hand_computed_values():
    real = [torch.tensor([1.0, 3.0]), torch.tensor([[0.0]])]  # MSE to 1: 2 and 1 -> mean 1.5
    fake = [torch.tensor([0.0, 2.0]), torch.tensor([[1.0]])]  # MSE to 0: 2 and 1 -> mean 1.5; to 1: 1 and 0
    assert discriminator_loss(real, fake).item() == pytest.approx(0.5 * (1.5 + 1.5))
    assert generator_adversarial_loss(fake).item() == pytest.approx(0.5)
    assert discriminator_loss(real[0], fake[0]).item() == pytest.approx(0.5 * (2.0 + 2.0))
    assert generator_adversarial_loss(fake[0]).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no discriminator logits"):
        generator_adversarial_loss([])


def _distributed_step(rank: int, init_file: str, out_dir: str) -> None:
    # A forked child must not enter the OpenMP pool it inherited from the parent, which has run convolutions.
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        d = tiny("patch")
        real, fake = toy_batch(seed=10 + rank)
        discriminator_step(d, torch.optim.SGD(d.parameters(), lr=0.1), real, fake, grad_clip=None)
        torch.save(d.state_dict(), f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_discriminator_step_averages_gradients_across_ranks(tmp_path):
    # fork, not spawn: a spawned interpreter spends seconds importing torch.
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_distributed_step, args=(rank, str(tmp_path / "init"), str(tmp_path)), daemon=True)
        for rank in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        if worker.is_alive():
            worker.kill()
        assert worker.exitcode == 0
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    d = tiny("patch")
    for rank in range(2):  # the same SGD step on the mean of both ranks' gradients
        real, fake = toy_batch(seed=10 + rank)
        (0.5 * discriminator_loss(d(real), d(fake))).backward()
    with torch.no_grad():
        for p in d.parameters():
            p -= 0.1 * p.grad
    for key, value in d.state_dict().items():
        torch.testing.assert_close(ranks[0][key], value)
        torch.testing.assert_close(ranks[1][key], value)

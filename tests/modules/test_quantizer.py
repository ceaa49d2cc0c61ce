"""Tests of the shared-codebook quantizer: rotation trick, EMA codebook updates, usage and multi-scale helpers."""

import math
import multiprocessing
import socket

import pytest
import torch
from torch import nn

from direct_nextaccel.modules.quantizer import (
    Phi,
    SharedCodebookQuantizer,
    decode_multiscale,
    residual_multiscale_quantize,
    resize_latent,
    rotation_trick,
)


def _quantizer(codebook: torch.Tensor, **kwargs) -> SharedCodebookQuantizer:
    quantizer = SharedCodebookQuantizer(codebook_size=codebook.shape[0], dim=codebook.shape[1], **kwargs)
    quantizer.set_codebook(codebook)
    return quantizer


def _grid(vectors: list[list[float]]) -> torch.Tensor:
    """Vectors (N, D) as a (1, D, 1, N) latent grid."""
    return torch.tensor(vectors).T[None, :, None, :]


def test_rotation_trick_forward_is_the_code_bit_for_bit():
    torch.manual_seed(0)
    e = torch.randn(7, 5, requires_grad=True)
    q = torch.randn(7, 5)
    assert torch.equal(rotation_trick(e, q), q)


def test_rotation_trick_gradient_2d_hand_example():
    # e = (1, 0), q = (0, 2): R is the +90 degree rotation [[0, -1], [1, 0]], s = 2, so dL/de = 2 R^T g.
    e = torch.tensor([[1.0, 0.0]], requires_grad=True)
    q = torch.tensor([[0.0, 2.0]])
    out = rotation_trick(e, q)
    out.backward(torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(e.grad, torch.tensor([[0.0, -2.0]]))
    e.grad = None
    rotation_trick(e, q).backward(torch.tensor([[0.0, 1.0]]))
    torch.testing.assert_close(e.grad, torch.tensor([[2.0, 0.0]]))


def test_rotation_trick_gradient_3d_hand_example():
    # e = (0, 0, 2), q = (1, 0, 0): R = [[0, 0, 1], [0, 1, 0], [-1, 0, 0]] takes z to x, s = 1/2.
    # With g = (1, 1, 1): s R^T g = 0.5 * (-1, 1, 1). Straight-through would give g itself.
    e = torch.tensor([[0.0, 0.0, 2.0]], requires_grad=True)
    q = torch.tensor([[1.0, 0.0, 0.0]])
    rotation_trick(e, q).backward(torch.ones(1, 3))
    torch.testing.assert_close(e.grad, torch.tensor([[-0.5, 0.5, 0.5]]))


def test_rotation_trick_gradient_equals_paper_matrix_formula():
    torch.manual_seed(1)
    e = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    q = torch.randn(4, 6, dtype=torch.float64)
    g = torch.randn(4, 6, dtype=torch.float64)
    rotation_trick(e, q).backward(g)
    for n in range(4):
        e_n = e[n].detach()
        e_hat, q_hat = e_n / e_n.norm(), q[n] / q[n].norm()
        r = (e_hat + q_hat) / (e_hat + q_hat).norm()
        rotation = torch.eye(6, dtype=torch.float64) - 2 * torch.outer(r, r) + 2 * torch.outer(q_hat, e_hat)
        torch.testing.assert_close(rotation @ e_hat, q_hat)
        torch.testing.assert_close(rotation.T @ rotation, torch.eye(6, dtype=torch.float64))
        expected = q[n].norm() / e_n.norm() * rotation.T @ g[n]
        torch.testing.assert_close(e.grad[n], expected)


def test_rotation_trick_zero_vector_stays_finite():
    e = torch.zeros(1, 3, requires_grad=True)
    q = torch.tensor([[1.0, 2.0, 3.0]])
    out = rotation_trick(e, q)
    out.sum().backward()
    assert torch.equal(out, q)
    assert torch.isfinite(e.grad).all()


def test_quantize_picks_nearest_code_and_commitment_loss():
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    quantizer = _quantizer(codebook, beta=0.25)
    z = _grid([[0.1, 0.0], [0.9, 0.1], [0.2, 0.7]]).requires_grad_(True)
    z_q, indices, commit = quantizer.quantize(z)
    assert indices.tolist() == [[[0, 1, 2]]]
    assert indices.dtype == torch.long
    assert torch.equal(z_q, codebook[indices].permute(0, 3, 1, 2))
    expected = 0.25 * ((z.detach() - z_q.detach()) ** 2).mean()
    torch.testing.assert_close(commit, expected)
    (z_q.sum() + commit).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_codebook_is_a_buffer_untouched_by_the_optimizer():
    torch.manual_seed(0)
    quantizer = SharedCodebookQuantizer(codebook_size=8, dim=4)
    encoder = nn.Conv2d(4, 4, 1)
    assert "codebook" in dict(quantizer.named_buffers())
    assert len(list(quantizer.parameters())) == 0
    before = quantizer.codebook.clone()
    optimizer = torch.optim.SGD(encoder.parameters(), lr=1.0)
    z_q, _, commit = quantizer.quantize(encoder(torch.randn(2, 4, 3, 3)), accumulate=False)
    (z_q.square().sum() + commit).backward()
    optimizer.step()
    quantizer.ema_update()  # nothing accumulated: no-op
    assert not quantizer.codebook.requires_grad
    assert torch.equal(quantizer.codebook, before)


def test_ema_update_closed_form_hand_example():
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    quantizer = _quantizer(codebook, ema_decay=0.5, eps=1e-5)
    quantizer.quantize(_grid([[0.1, 0.0], [0.9, 0.1], [1.1, -0.1]]), accumulate=True)
    assert torch.equal(quantizer.codebook, codebook)  # nothing changes before the update
    quantizer.ema_update()
    # counts (1, 2, 0), sums ((0.1, 0), (2, 0), (0, 0)); sizes 0.5 * 1 + 0.5 * counts = (1, 1.5, 0.5);
    # code sums 0.5 * codebook + 0.5 * sums; Laplace: (size + eps) / (n + V eps) * n with n = 3.
    sizes = torch.tensor([1.0, 1.5, 0.5])
    sums = torch.tensor([[0.05, 0.0], [1.5, 0.0], [0.0, 0.5]])
    smoothed = (sizes + 1e-5) / (3 + 3e-5) * 3
    torch.testing.assert_close(quantizer.ema_cluster_size, sizes)
    torch.testing.assert_close(quantizer.codebook, sums / smoothed[:, None])
    torch.testing.assert_close(
        quantizer.codebook, torch.tensor([[0.05, 0.0], [1.0, 0.0], [0.0, 1.0]]), atol=1e-4, rtol=0
    )


def test_ema_mixes_grids_of_different_sizes_in_one_step():
    torch.manual_seed(0)
    codebook = torch.randn(16, 3)
    split, joint = _quantizer(codebook, ema_decay=0.9), _quantizer(codebook, ema_decay=0.9)
    small, large = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 5, 5)
    split.quantize(small, accumulate=True)
    split.quantize(large, accumulate=True)
    split.ema_update()
    flat = torch.cat([small.permute(0, 2, 3, 1).reshape(-1, 3), large.permute(0, 2, 3, 1).reshape(-1, 3)])
    joint.quantize(flat.T[None, :, None, :], accumulate=True)
    joint.ema_update()
    torch.testing.assert_close(split.codebook, joint.codebook)
    torch.testing.assert_close(split.ema_cluster_size, joint.ema_cluster_size)
    assert math.isclose(split.ema_cluster_size.sum().item(), 16 * 0.9 + 0.1 * (8 + 50), rel_tol=1e-6)
    assert not torch.equal(split.codebook, codebook)


def test_lookup_roundtrip_and_errors():
    torch.manual_seed(0)
    quantizer = SharedCodebookQuantizer(codebook_size=8, dim=4)
    z = torch.randn(2, 4, 3, 3)
    _, indices, _ = quantizer.quantize(z)
    assert torch.equal(quantizer.lookup(indices), quantizer.quantize(z)[0])
    assert torch.equal(quantizer.nearest_indices(z), indices)
    with pytest.raises(ValueError, match="token index 8 is outside the codebook range"):
        quantizer.lookup(torch.tensor([[[0, 8]]]))
    with pytest.raises(ValueError, match="token index -1"):
        quantizer.lookup(torch.tensor([[[-1, 0]]]))
    with pytest.raises(TypeError, match="float32"):
        quantizer.lookup(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match=r"expected latents of shape \(B, 4, h, w\), got \(2, 3, 3, 3\)"):
        quantizer.quantize(torch.randn(2, 3, 3, 3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ema_decay": 1.0}, "ema_decay 1.0"),
        ({"codebook_size": 0}, "codebook_size 0"),
        ({"beta": -1.0}, "beta -1.0"),
        ({"dead_code_threshold": -0.5}, "dead_code_threshold -0.5"),
        ({"dead_code_threshold": float("nan")}, "dead_code_threshold nan"),
        ({"dead_code_threshold": 1e-4, "eps": 1e-5}, r"dead_code_threshold 0\.0001 is positive but below 100 \* eps"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SharedCodebookQuantizer(**kwargs)


def test_usage_fraction_and_perplexity():
    quantizer = SharedCodebookQuantizer(codebook_size=4, dim=2)
    fraction, perplexity = quantizer.usage(torch.tensor([[[0, 0], [1, 1]]]))
    assert fraction.item() == 0.5
    torch.testing.assert_close(perplexity, torch.tensor(2.0))
    fraction, perplexity = quantizer.usage(torch.tensor([[[0, 1], [2, 3]]]))
    assert fraction.item() == 1.0
    torch.testing.assert_close(perplexity, torch.tensor(4.0))


def test_dead_codes_are_reinitialised_from_batch_vectors():
    codebook = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0], [5.0, -5.0]])
    quantizer = _quantizer(codebook, ema_decay=0.1, dead_code_threshold=0.5)
    vectors = torch.tensor([[0.1, 0.2], [0.3, -0.1], [-0.2, 0.1]])
    quantizer.quantize(vectors.T[None, :, None, :], accumulate=True)
    quantizer.ema_update()
    for row in quantizer.codebook[1:]:
        assert any(torch.equal(row, v) for v in vectors)
    assert (quantizer.ema_cluster_size[1:] == 0.5).all()


def test_dead_code_reinit_is_off_by_default():
    codebook = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    quantizer = _quantizer(codebook, ema_decay=0.1)
    quantizer.quantize(torch.zeros(1, 2, 1, 3), accumulate=True)
    quantizer.ema_update()
    torch.testing.assert_close(quantizer.codebook[1], codebook[1], atol=1e-3, rtol=0)


def _two_cluster_batch(generator: torch.Generator, n: int = 16) -> torch.Tensor:
    """A (1, 3, 1, n) grid of vectors around (+5, 0, 0) and (-5, 0, 0) only: norms between 4 and 6."""
    centres = torch.tensor([[5.0, 0.0, 0.0], [-5.0, 0.0, 0.0]])
    vectors = centres[torch.arange(n) % 2] + 0.2 * torch.randn(n, 3, generator=generator)
    return vectors.T[None, :, None, :]


def _far_codebook() -> torch.Tensor:
    """Codes 0 and 1 on the two clusters, codes 2..7 far from every vector, so only 0 and 1 are ever hit."""
    far = 20.0 * torch.tensor([[0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1], [0, 1, 1], [0, -1, -1]])
    return torch.cat([torch.tensor([[5.0, 0.0, 0.0], [-5.0, 0.0, 0.0]]), far.float()])


def _old_ema_update(codebook, sizes, sums, counts, step_sums, decay, eps):
    """The EMA step as it was before dead-code restarts were fixed (the paper setting), for comparison."""
    sizes = sizes.mul(decay).add(counts, alpha=1 - decay)
    sums = sums.mul(decay).add(step_sums, alpha=1 - decay)
    total = sizes.sum()
    smoothed = (sizes + eps) / (total + len(sizes) * eps) * total
    return sums / smoothed.unsqueeze(1), sizes, sums


def test_threshold_zero_is_the_plain_ema_and_unused_codes_collapse_to_the_origin():
    # The paper setting, kept exactly: codes 2..7 never receive a vector and end at the origin after ~1.1k steps
    # at ema_decay 0.99 (ln(1e-5) / ln(0.99)), which is why long runs need dead_code_threshold > 0.
    generator = torch.Generator().manual_seed(0)
    quantizer = _quantizer(_far_codebook(), ema_decay=0.99, eps=1e-5)
    codebook, sizes, sums = _far_codebook(), torch.ones(8), _far_codebook()
    rng_before = torch.get_rng_state()
    for _ in range(2000):
        z = _two_cluster_batch(generator)
        _, indices, _ = quantizer.quantize(z, accumulate=True)
        quantizer.ema_update()
        flat = z[0, :, 0].T
        counts = torch.bincount(indices.flatten(), minlength=8).float()
        step_sums = torch.zeros(8, 3).index_add_(0, indices.flatten(), flat)
        codebook, sizes, sums = _old_ema_update(codebook, sizes, sums, counts, step_sums, 0.99, 1e-5)
        assert torch.equal(quantizer.codebook, codebook)
        assert torch.equal(quantizer.ema_cluster_size, sizes)
    assert torch.equal(torch.get_rng_state(), rng_before)  # no restart draws at threshold 0
    assert quantizer.codebook[2:].norm(dim=1).max() < 1e-2  # 20 -> below 0.01: collapsed
    assert (quantizer.codebook[:2].norm(dim=1) > 4).all()


def test_dead_codes_are_restarted_on_long_runs_and_live_codes_untouched():
    # Each step is checked against a threshold-0 twin started from the same state and fed the same batch: codes
    # at or above the threshold must equal the plain EMA bit for bit, codes below it must equal a vector of the batch.
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    quantizer = _quantizer(_far_codebook(), ema_decay=0.99, dead_code_threshold=1.0)
    restarted_steps = 0
    for _ in range(2000):
        z = _two_cluster_batch(generator)
        twin = _quantizer(_far_codebook(), ema_decay=0.99)
        twin.load_state_dict(quantizer.state_dict())
        quantizer.quantize(z, accumulate=True)
        twin.quantize(z, accumulate=True)
        quantizer.ema_update()
        twin.ema_update()
        dead = twin.ema_cluster_size < 1.0
        live = ~dead
        assert torch.equal(quantizer.codebook[live], twin.codebook[live])
        assert torch.equal(quantizer.ema_cluster_size[live], twin.ema_cluster_size[live])
        assert torch.equal(quantizer.ema_embed_sum[live], twin.ema_embed_sum[live])
        vectors = z[0, :, 0].T  # 16, 3
        for row in quantizer.codebook[dead]:
            assert (vectors == row).all(dim=1).any()
        if dead.any():
            restarted_steps += 1
            assert (quantizer.ema_cluster_size[dead] == 1.0).all()
            torch.testing.assert_close(quantizer.ema_embed_sum[dead], quantizer.codebook[dead], rtol=0, atol=0)
        # Never at, nor on the way to, the origin: every code stays as far out as the data (norms 4..6) or further.
        assert quantizer.codebook.norm(dim=1).min() > 3.5
    # Codes 2..7 start at size 1 and die at the first update; restarted into the clusters they soon share the 16
    # vectors per step with codes 0 and 1, and at the end every code is in use (size at least 1 per step).
    assert restarted_steps >= 1
    assert quantizer.ema_cluster_size.min() >= 1.0


def test_restarted_codes_are_distinct_non_zero_vectors():
    codebook = torch.tensor([[1.0, 0.0], [0.0, 30.0], [0.0, -30.0], [30.0, 30.0]])
    quantizer = _quantizer(codebook, ema_decay=0.5, dead_code_threshold=1.0)
    vectors = torch.tensor([[0.0, 0.0], [1.0, 0.5], [0.0, 0.0], [1.0, -0.5], [0.8, 0.0], [0.0, 0.0]])
    quantizer.quantize(vectors.T[None, :, None, :], accumulate=True)
    quantizer.ema_update()
    revived = quantizer.codebook[1:]
    nonzero = vectors[vectors.abs().sum(1) > 0]
    assert sorted(map(tuple, revived.tolist())) == sorted(map(tuple, nonzero.tolist()))


def test_no_restart_from_an_all_zero_step(caplog):
    codebook = torch.tensor([[1.0, 0.0], [0.0, 30.0]])
    quantizer = _quantizer(codebook, ema_decay=0.5, dead_code_threshold=1.0)
    with caplog.at_level("WARNING", logger="direct_nextaccel.modules.quantizer"):
        quantizer.quantize(torch.zeros(1, 2, 1, 4), accumulate=True)
        quantizer.ema_update()
    assert "1 dead codes not restarted" in caplog.text
    assert quantizer.codebook[1].norm() > 10  # left to the plain EMA this step, not moved to the zero vector


def test_kmeans_init_finds_the_clusters_once():
    torch.manual_seed(0)
    centres = torch.tensor([[4.0, 0.0], [-4.0, 0.0]])
    vectors = torch.cat([centres[0] + 0.1 * torch.randn(20, 2), centres[1] + 0.1 * torch.randn(20, 2)])
    quantizer = SharedCodebookQuantizer(codebook_size=2, dim=2, kmeans_init=True)
    assert not quantizer.initialized
    quantizer.eval()
    quantizer.quantize(vectors.T[None, :, None, :])
    assert not quantizer.initialized  # only training batches initialise
    quantizer.train()
    quantizer.quantize(vectors.T[None, :, None, :])
    assert quantizer.initialized
    found = quantizer.codebook[quantizer.codebook[:, 0].argsort(descending=True)]
    torch.testing.assert_close(found, torch.stack([vectors[:20].mean(0), vectors[20:].mean(0)]))
    quantizer.quantize(torch.randn(1, 2, 3, 3) + 100)
    torch.testing.assert_close(quantizer.codebook[quantizer.codebook[:, 0].argsort(descending=True)], found)


def test_resize_latent_area_down_bicubic_up():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(resize_latent(x, (2, 2)), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    assert resize_latent(x, (4, 4)) is x
    assert resize_latent(x, (7, 7)).shape == (1, 1, 7, 7)
    with pytest.raises(ValueError, match="cannot resize a 4x4 latent to 2x6"):
        resize_latent(x, (2, 6))


def test_phi_is_a_residual_mix():
    phi = Phi(3, 0.5)
    x = torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(phi(x), 0.5 * x + 0.5 * phi.conv(x))
    with pytest.raises(ValueError, match=r"strength 1\.5"):
        Phi(3, 1.5)


def test_residual_multiscale_quantize_and_decode_agree():
    torch.manual_seed(0)
    quantizer = SharedCodebookQuantizer(codebook_size=32, dim=4)
    f = torch.randn(2, 4, 8, 8)
    phis = nn.ModuleList(Phi(4, 0.5) for _ in range(4))

    def post(h, k):
        return phis[k](h)

    for transform in (None, post):
        indices, reconstructions = residual_multiscale_quantize(quantizer, f, [1, 2, 4, 8], post=transform)
        assert [tuple(i.shape) for i in indices] == [(2, 1, 1), (2, 2, 2), (2, 4, 4), (2, 8, 8)]
        assert all(r.shape == f.shape for r in reconstructions)
        assert torch.equal(decode_multiscale(quantizer, indices, (8, 8), post=transform), reconstructions[-1])
        assert torch.equal(decode_multiscale(quantizer, indices[:2], (8, 8), post=transform), reconstructions[1])
    first = residual_multiscale_quantize(quantizer, f, [1])[0][0]
    assert torch.equal(first, quantizer.nearest_indices(f.mean(dim=(2, 3), keepdim=True)))
    with pytest.raises(ValueError, match="scale 9 is not a side length between 1 and 8"):
        residual_multiscale_quantize(quantizer, f, [1, 9])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _distributed_rank(rank: int, port: int, codebook: torch.Tensor, data: torch.Tensor, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    quantizer = _quantizer(codebook, ema_decay=0.8)
    quantizer.quantize(data[rank], accumulate=True)
    quantizer.ema_update()
    # Plain lists: a tensor would travel as a shared-memory handle that dies with this process.
    results.put((rank, quantizer.codebook.tolist(), quantizer.ema_cluster_size.tolist()))
    dist.destroy_process_group()


def _dead_code_rank(rank: int, port: int, codebook: torch.Tensor, data: torch.Tensor, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(100 + rank)  # the ranks' own random streams differ, as under DDP with per-rank seeds
    quantizer = _quantizer(codebook, ema_decay=0.5, dead_code_threshold=1.0)
    quantizer.quantize(data[rank], accumulate=True)
    quantizer.ema_update()
    results.put((rank, quantizer.codebook.tolist(), quantizer.ema_cluster_size.tolist()))
    dist.destroy_process_group()


def _run_two_ranks(target, codebook: torch.Tensor, data: torch.Tensor) -> dict:
    # fork, not spawn: a spawned interpreter spends seconds importing torch. The children only touch tensors far
    # below PyTorch's parallel grain size, so no inherited thread pool is used.
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    port = _free_port()
    workers = [
        context.Process(target=target, args=(rank, port, codebook, data, results), daemon=True) for rank in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        outcome = {
            rank: (torch.tensor(book), torch.tensor(sizes))
            for rank, book, sizes in (results.get(timeout=60) for _ in workers)
        }
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
    return outcome


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_dead_code_restart_is_identical_on_every_rank():
    # Codes 1..4 are never hit; each rank has its own batch. Both ranks must restart the same codes with the same
    # vectors, drawn from both ranks' batches in turn.
    codebook = torch.tensor([[0.0, 0.0], [50.0, 0.0], [-50.0, 0.0], [0.0, 50.0], [0.0, -50.0]])
    data = torch.stack([torch.rand(1, 2, 2, 3) + 1.0, -torch.rand(1, 2, 2, 3) - 1.0])  # rank 0 > 0, rank 1 < 0
    outcome = _run_two_ranks(_dead_code_rank, codebook, data)
    (book0, sizes0), (book1, sizes1) = outcome[0], outcome[1]
    assert torch.equal(book0, book1) and torch.equal(sizes0, sizes1)
    vectors = [data[rank].permute(0, 2, 3, 1).reshape(-1, 2) for rank in range(2)]
    for slot, row in enumerate(book0[1:]):
        assert (vectors[slot % 2] == row).all(dim=1).any(), (slot, row)
    assert (sizes0[1:] == 1.0).all()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_ema_update_all_reduces_across_ranks():
    torch.manual_seed(0)
    codebook, data = torch.randn(8, 3), torch.randn(2, 2, 3, 4, 4)  # a different batch per rank
    # fork, not spawn: a spawned interpreter spends seconds importing torch. The children only touch tensors far
    # below PyTorch's parallel grain size, so no inherited thread pool is used.
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    port = _free_port()
    workers = [
        context.Process(target=_distributed_rank, args=(rank, port, codebook, data, results), daemon=True)
        for rank in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        outcome = {
            rank: (torch.tensor(book), torch.tensor(sizes))
            for rank, book, sizes in (results.get(timeout=60) for _ in workers)
        }
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
    reference = _quantizer(codebook, ema_decay=0.8)
    reference.quantize(data[0], accumulate=True)
    reference.quantize(data[1], accumulate=True)
    reference.ema_update()
    for book, sizes in outcome.values():
        torch.testing.assert_close(book, reference.codebook)
        torch.testing.assert_close(sizes, reference.ema_cluster_size)
    assert math.isclose(reference.ema_cluster_size.sum().item(), 8 * 0.8 + 0.2 * 64, rel_tol=1e-6)

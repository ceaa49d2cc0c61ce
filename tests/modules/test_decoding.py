"""Sampling, the decoding loop and MIAR beam search, on hand-made distributions and on a tiny cached transformer."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from direct_nextaccel.modules.attention import KVCache
from direct_nextaccel.modules.decoding import (
    beam_search,
    beam_search_scale,
    candidate_token_maps,
    decode,
    filter_logits,
    least_confident_positions,
    sample_tokens,
    select_batch,
    step_from_history,
)
from direct_nextaccel.modules.rope import Rope2D
from direct_nextaccel.modules.transformer import RMSNormBlock, block_causal_mask

NEG_INF = float("-inf")


def brute_force_best_path(next_logits, num_scales, k, alpha):
    """Best path of one sample over the whole beam-search candidate tree, by exhaustive enumeration.

    At every scale but the last the k least confident positions (eq. 4, smallest P_max + alpha * margin) branch on
    their best and second-best token; the last scale is argmax. A path's score is the sum, over all scales, of the
    sum of log P_max of the model's prediction at that scale. Written independently of the library on purpose.
    """

    def search(history):
        logits = next_logits(history)[0]  # L, V
        log_probs = logits.log_softmax(-1)
        score = log_probs.max(-1).values.sum().item()
        if len(history) == num_scales - 1:
            return score, [*history, logits.argmax(-1)[None]]
        probs = log_probs.exp()
        ranked = probs.argsort(-1, descending=True)
        confidence = [
            (probs[i, ranked[i, 0]] + alpha * (probs[i, ranked[i, 0]] - probs[i, ranked[i, 1]])).item()
            for i in range(logits.shape[0])
        ]
        chosen = sorted(range(len(confidence)), key=confidence.__getitem__)[:k]
        best = (NEG_INF, None)
        for choice in itertools.product((0, 1), repeat=len(chosen)):
            tokens = ranked[:, 0].clone()
            for position, rank in zip(chosen, choice, strict=True):
                tokens[position] = ranked[position, rank]
            rest_score, path = search([*history, tokens[None]])
            if score + rest_score > best[0]:
                best = (score + rest_score, path)
        return best

    return search([])


def probs_to_logits(rows):
    return torch.tensor(rows, dtype=torch.float64).log()


def toy_next_logits(history, sample_ids):
    """Three scales of two tokens over a vocabulary of three where greedy argmax is a trap.

    Sample 0: the runner-up token at position 1 makes the next scale confident, argmax makes it diffuse.
    Sample 1: argmax is already the confident choice. ``sample_ids`` (N,) is the per-sample condition.
    """
    rows = []
    for row, b in enumerate(sample_ids.tolist()):
        prefix = [h[row].tolist() for h in history]
        if not prefix:
            probs = [[0.9, 0.05, 0.05], [0.5, 0.4, 0.1]] if b == 0 else [[0.8, 0.1, 0.1], [0.6, 0.3, 0.1]]
        elif (b == 0) == (prefix[-1][1] == 1):
            probs = [[0.9, 0.06, 0.04], [0.52, 0.45, 0.03]]
        else:
            probs = [[0.4, 0.34, 0.26], [0.38, 0.36, 0.26]]
        rows.append(probs)
    return probs_to_logits(rows)


def path_score(next_logits, path, condition):
    return sum(sum_log_pmax(next_logits(path[:s], condition)) for s in range(len(path)))


def sum_log_pmax(logits):
    return logits.log_softmax(-1).max(-1).values.sum(-1)


class TinyScaleModel(nn.Module):
    """A miniature MIAR: start token, nearest-upsampled previous scale as input, 2D RoPE blocks with cross-attention."""

    def __init__(self, grids, vocab=5, dim=16, heads=2, context_dim=6):
        super().__init__()
        self.grids = grids
        self.lengths = [h * w for h, w in grids]
        self.start = nn.Parameter(torch.randn(1, 1, dim))
        self.embed = nn.Embedding(vocab, dim)
        self.scale_embed = nn.Embedding(len(grids), dim)
        rope = Rope2D(dim // heads, grids)
        self.blocks = nn.ModuleList(RMSNormBlock(dim, heads, context_dim, rope=rope) for _ in range(2))
        self.head = nn.Linear(dim, vocab)

    def scale_input(self, scale, previous_tokens, batch):
        """Input tokens (B, L_scale, C) that predict scale ``scale`` from the token map of the scale before it."""
        if scale == 0:
            x = self.start.expand(batch, -1, -1)
        else:
            h, w = self.grids[scale - 1]
            grid = self.embed(previous_tokens).transpose(1, 2).reshape(batch, -1, h, w)
            x = F.interpolate(grid, size=self.grids[scale], mode="nearest").flatten(2).transpose(1, 2)
        return x + self.scale_embed.weight[scale]

    def next_logits(self, history, context):
        """Recompute every scale up to the next one with the block-causal mask; logits of the next scale."""
        batch = context.shape[0]
        scales = len(history) + 1
        x = torch.cat([self.scale_input(s, history[s - 1] if s else None, batch) for s in range(scales)], dim=1)
        mask = block_causal_mask(self.lengths[:scales])
        for block in self.blocks:
            x = block(x, block.precompute_context(context), attn_mask=mask)
        return self.head(x[:, -self.lengths[scales - 1] :])

    def initial_state(self, context):
        return {
            "scale": 0,
            "caches": [KVCache() for _ in self.blocks],
            "context_kv": [block.precompute_context(context) for block in self.blocks],
        }

    def step(self, tokens, state):
        """Cached step: feed only the new scale's input; earlier scales live in the per-layer caches."""
        scale = state["scale"]
        batch = state["context_kv"][0].keys.shape[0]
        x = self.scale_input(scale, tokens, batch)
        for block, cache, context_kv in zip(self.blocks, state["caches"], state["context_kv"], strict=True):
            x = block(x, context_kv, cache=cache)
        return self.head(x), {**state, "scale": scale + 1}


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    # Large random weights make the predictions peaked enough that branching changes the lookahead scores.
    model = TinyScaleModel([(1, 1), (2, 2), (3, 3), (4, 4)]).eval()
    with torch.no_grad():
        model.head.weight.mul_(8)
    return model, torch.randn(3, 5, 6)


def test_filter_logits_top_k_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, -1.0, 5.0, 4.0]])
    expected = torch.tensor([[NEG_INF, 3.0, 2.0, NEG_INF], [NEG_INF, NEG_INF, 5.0, 4.0]])
    assert torch.equal(filter_logits(logits, top_k=2), expected)
    assert torch.equal(filter_logits(logits, top_k=0), logits)
    assert torch.equal(filter_logits(logits, top_k=10), logits)


@pytest.mark.parametrize(
    "top_p, kept",
    [(0.45, [True, False, False, False]), (0.6, [True, True, False, False]), (0.9, [True, True, True, False])],
)
def test_filter_logits_top_p_by_hand(top_p, kept):
    probs = [0.3, 0.5, 0.05, 0.15]  # sorted: 0.5, 0.3, 0.15, 0.05
    order = [1, 0, 3, 2]
    logits = probs_to_logits([probs]).float()
    filtered = filter_logits(logits, top_p=top_p)
    expected_kept = torch.zeros(4, dtype=torch.bool)
    expected_kept[order] = torch.tensor(kept)
    assert torch.equal(torch.isfinite(filtered[0]), expected_kept)
    assert torch.equal(filtered[0, expected_kept], logits[0, expected_kept])


def test_filter_logits_top_k_then_top_p():
    logits = probs_to_logits([[0.4, 0.3, 0.2, 0.1]]).float()
    # After top-3 the renormalised masses are 0.44, 0.33, 0.22: top-p 0.7 keeps two of them.
    assert torch.isfinite(filter_logits(logits, top_k=3, top_p=0.7)).tolist() == [[True, True, False, False]]


@pytest.mark.parametrize("kwargs, message", [({"top_p": 0.0}, "top_p 0.0"), ({"top_p": 1.5}, "top_p 1.5")])
def test_filter_logits_rejects_bad_top_p(kwargs, message):
    with pytest.raises(ValueError, match=message):
        filter_logits(torch.zeros(1, 3), **kwargs)


def test_filter_logits_rejects_negative_top_k():
    with pytest.raises(ValueError, match="top_k -1"):
        filter_logits(torch.zeros(1, 3), top_k=-1)


def test_sample_tokens_modes():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 10)
    assert torch.equal(sample_tokens(logits, "argmax"), logits.argmax(-1))
    assert torch.equal(sample_tokens(logits, "top_k_top_p", top_k=1), logits.argmax(-1))
    draws = [sample_tokens(logits, "multinomial", generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1]) and draws[0].shape == (4, 6)
    allowed = logits.topk(3, dim=-1).indices
    many = sample_tokens(logits.expand(50, -1, -1, -1), "top_k_top_p", temperature=5.0, top_k=3)
    assert (many[..., None] == allowed).any(-1).all()
    assert len(many.unique()) > 3  # high temperature really samples, not argmax


@pytest.mark.parametrize(
    "kwargs, message",
    [({"mode": "greedy"}, "sampling mode 'greedy'"), ({"mode": "multinomial", "temperature": 0.0}, "temperature 0.0")],
)
def test_sample_tokens_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_tokens(torch.zeros(1, 2, 3), **kwargs)


def test_least_confident_positions_by_hand():
    # P_max, P_2nd per position: (0.9, 0.05), (0.5, 0.4), (0.6, 0.2), (0.45, 0.44)
    logits = probs_to_logits([[[0.9, 0.05, 0.05], [0.5, 0.4, 0.1], [0.6, 0.2, 0.2], [0.45, 0.44, 0.11]]])
    # confidences with alpha=1: 1.75, 0.6, 1.0, 0.46 -> least confident first: 3, 1
    assert least_confident_positions(logits, k=2, alpha=1.0).tolist() == [[3, 1]]
    # alpha=10 weighs the margin: 9.4, 1.5, 4.6, 0.55 -> same order; alpha=0 uses P_max alone: 3, 1, 2
    assert least_confident_positions(logits, k=3, alpha=0.0).tolist() == [[3, 1, 2]]
    assert least_confident_positions(logits[:, :1], k=3, alpha=1.0).tolist() == [[0]]


def test_candidate_token_maps_by_hand():
    logits = probs_to_logits([[[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]]])  # best 0, 2, 1; second 1, 1, 2
    candidates = candidate_token_maps(logits, torch.tensor([[2, 0]]))
    assert candidates.tolist() == [[[0, 2, 1], [0, 2, 2], [1, 2, 1], [1, 2, 2]]]


def test_beam_search_beats_greedy_and_matches_brute_force():
    step = step_from_history(toy_next_logits)
    samples = torch.tensor([0, 1])
    tokens, score = beam_search(step, ([], samples), num_scales=3, k=1, alpha=1.0)
    greedy = decode(step, ([], samples), num_scales=3)
    assert [t[0].tolist() for t in greedy] == [[0, 0], [0, 0], [0, 0]]
    assert [t[0].tolist() for t in tokens] == [[0, 1], [0, 1], [0, 0]]
    assert [t[1].tolist() for t in tokens] == [t[1].tolist() for t in greedy]  # sample 1: argmax was best
    for b in range(2):
        best_score, best_path = brute_force_best_path(
            lambda history, b=b: toy_next_logits(history, torch.tensor([b])), num_scales=3, k=1, alpha=1.0
        )
        assert [t[0].tolist() for t in best_path] == [t[b].tolist() for t in tokens]
        assert score[b].item() == pytest.approx(best_score)
    greedy_score = path_score(toy_next_logits, greedy, samples)
    assert score[0] > greedy_score[0] + 1.0
    assert score[1].item() == pytest.approx(greedy_score[1].item())


@pytest.mark.parametrize("k", [1, 2, 3])
def test_single_decision_is_exhaustive_over_candidates(k):
    """With two scales beam search makes one decision, so it must equal brute force on any model."""
    left_argmax = 0
    for seed in range(6):
        generator = torch.Generator().manual_seed(seed)
        first = torch.randn(1, 4, 6, generator=generator) * 0.5
        table = torch.randn(6, 6, generator=generator) * 3  # token id -> logits

        def next_logits(history, condition=None, first=first, table=table):
            if not history:
                return first
            return table[history[0]] + table[history[0].roll(1, dims=1)]  # N, 4, 6 from the 4 first-scale tokens

        step = step_from_history(next_logits)
        tokens, score = beam_search(step, ([], None), num_scales=2, k=k, alpha=0.5)
        best_score, best_path = brute_force_best_path(next_logits, num_scales=2, k=k, alpha=0.5)
        assert [t.tolist() for t in tokens] == [t.tolist() for t in best_path]
        assert score.item() == pytest.approx(best_score, rel=1e-6)
        left_argmax += not torch.equal(tokens[0], decode(step, ([], None), num_scales=1)[0])
    assert left_argmax > 0


def test_cached_and_recomputing_models_decode_alike(tiny_model):
    model, context = tiny_model
    cached_state = model.initial_state(context)
    recompute = step_from_history(model.next_logits)
    with torch.no_grad():
        cached_tokens, cached_score = beam_search(model.step, cached_state, num_scales=4, k=2, alpha=1.0)
        tokens, score = beam_search(recompute, ([], context), num_scales=4, k=2, alpha=1.0)
        greedy_cached = decode(model.step, model.initial_state(context), num_scales=4)
        greedy = decode(recompute, ([], context), num_scales=4)
    assert all(torch.equal(a, b) for a, b in zip(cached_tokens, tokens, strict=True))
    torch.testing.assert_close(cached_score, score, atol=1e-4, rtol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(greedy_cached, greedy, strict=True))
    assert [t.shape for t in tokens] == [(3, 1), (3, 4), (3, 9), (3, 16)]
    # The first step fed the start token into the caller's caches; the candidates' steps worked on copies.
    assert all(cache.length == 1 for cache in cached_state["caches"])
    # The weights make beam search leave the argmax path, so the candidates' expanded caches were really used.
    assert any(not torch.equal(a, b) for a, b in zip(tokens, greedy, strict=True))


def test_argmax_decoding_is_bit_identical_across_runs(tiny_model):
    model, context = tiny_model
    with torch.no_grad():
        runs = [decode(model.step, model.initial_state(context), num_scales=4) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_decode_passes_first_tokens_to_the_model():
    seen = []

    def step(tokens, state):
        seen.append(None if tokens is None else tokens.clone())
        return torch.zeros(2, 3, 4).index_fill_(2, torch.tensor([state]), 1.0), state + 1

    tokens = decode(step, 1, num_scales=2, first_tokens=torch.full((2, 5), 7))
    assert seen[0].tolist() == [[7] * 5] * 2 and torch.equal(seen[1], torch.ones(2, 3, dtype=torch.long))
    assert [t.tolist() for t in tokens] == [[[1] * 3] * 2, [[2] * 3] * 2]


def test_beam_search_scale_returns_the_chosen_candidates_state():
    logits = probs_to_logits([[[0.5, 0.45, 0.05], [0.9, 0.05, 0.05]]])

    def step(tokens, history):
        history = [*history, tokens]
        confident = (tokens[:, 0] == 1).double()[:, None, None]  # choosing the runner-up pays off
        return confident * probs_to_logits([[[0.98, 0.01, 0.01]]]) + (1 - confident) * math.log(1 / 3), history

    tokens, next_logits, state, gain = beam_search_scale(logits, step, [torch.zeros(1, 1)], k=1, alpha=1.0)
    assert tokens.tolist() == [[1, 0]]
    assert torch.equal(state[1], tokens) and state[0].shape == (1, 1)
    assert gain.item() == pytest.approx(math.log(0.98))
    assert next_logits.shape == (1, 1, 3)


@pytest.mark.parametrize("k", [0, 4])
def test_beam_search_rejects_k_outside_one_to_three(k):
    with pytest.raises(ValueError, match=f"k {k} "):
        beam_search(step_from_history(toy_next_logits), ([], torch.tensor([0])), num_scales=3, k=k)


def test_beam_search_rejects_negative_alpha():
    with pytest.raises(ValueError, match=r"alpha -1\.0"):
        beam_search(step_from_history(toy_next_logits), ([], torch.tensor([0])), num_scales=3, alpha=-1.0)


def test_select_batch_on_nested_state():
    cache = KVCache(torch.arange(3.0).view(3, 1, 1, 1), torch.arange(3.0).view(3, 1, 1, 1))
    state = {"scale": 2, "caches": [cache, KVCache()], "pair": (torch.tensor([10, 11, 12]), None)}
    picked = select_batch(state, torch.tensor([2, 2, 0]))
    assert picked["scale"] == 2 and picked["caches"][1].keys is None
    assert picked["caches"][0].keys.flatten().tolist() == [2.0, 2.0, 0.0]
    assert picked["pair"][0].tolist() == [12, 12, 10] and picked["pair"][1] is None
    assert cache.keys.flatten().tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(TypeError, match="type object"):
        select_batch(object(), torch.tensor([0]))

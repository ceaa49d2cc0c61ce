"""Scale-aligned 2D RoPE: a norm-preserving rotation, relative within a scale, aligned across scales."""

import pytest
import torch

from direct_nextaccel.modules.rope import Rope2D

SCALES = [(1, 1), (3, 3), (4, 6)]


def token_index(rope, scale, row, col):
    return rope.offsets[scale] + row * rope.scales[scale][1] + col


def rotate_one(rope, vector, index):
    return rope(vector[None], torch.tensor([index]))[0]


def test_rotation_preserves_norm():
    rope = Rope2D(head_dim=8, scales=SCALES)
    x = torch.randn(2, 3, rope.sequence_length, 8)
    rotated = rope(x, slice(0, rope.sequence_length))
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    assert not torch.allclose(rotated, x)


def test_score_depends_only_on_offset_within_a_scale():
    torch.manual_seed(0)
    rope = Rope2D(head_dim=16, scales=SCALES)
    q, k = torch.randn(16), torch.randn(16)

    def score(query_cell, key_cell):
        qi = token_index(rope, 2, *query_cell)
        ki = token_index(rope, 2, *key_cell)
        return rotate_one(rope, q, qi) @ rotate_one(rope, k, ki)

    reference = score((0, 1), (2, 4))
    for shift in [(1, 0), (0, 1), (1, 1)]:
        shifted = score((0 + shift[0], 1 + shift[1]), (2 + shift[0], 4 + shift[1]))
        torch.testing.assert_close(shifted, reference, atol=1e-5, rtol=1e-5)
    assert not torch.isclose(score((0, 1), (3, 4)), reference)


def test_same_region_shares_angles_across_scales():
    rope = Rope2D(head_dim=8, scales=SCALES)
    coarse = token_index(rope, 0, 0, 0)  # the single 1x1 token covers the image
    centre = token_index(rope, 1, 1, 1)  # the centre cell of the 3x3 grid has the same centre
    torch.testing.assert_close(rope.cos[coarse], rope.cos[centre])
    torch.testing.assert_close(rope.sin[coarse], rope.sin[centre])
    assert not torch.allclose(rope.cos[centre], rope.cos[token_index(rope, 1, 0, 1)])


def test_scale_slice_equals_index_positions():
    rope = Rope2D(head_dim=4, scales=SCALES)
    x = torch.randn(1, 2, 9, 4)
    positions = rope.scale_slice(1)
    assert positions == slice(1, 10)
    torch.testing.assert_close(rope(x, positions), rope(x, torch.arange(1, 10)))
    with pytest.raises(ValueError, match="scale 3"):
        rope.scale_slice(3)
    with pytest.raises(ValueError, match="select 9 tokens but x holds 4"):
        rope(torch.randn(1, 2, 4, 4), positions)


@pytest.mark.parametrize("head_dim", [6, 10, 0])
def test_head_dim_must_be_multiple_of_four(head_dim):
    with pytest.raises(ValueError, match=f"head_dim {head_dim} "):
        Rope2D(head_dim=head_dim, scales=SCALES)


def test_tables_are_not_checkpointed():
    assert Rope2D(head_dim=8, scales=SCALES).state_dict() == {}

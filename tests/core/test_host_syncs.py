"""Host-device synchronisations of one NextAccel training step (issue 14, item 4: at most 3).

Counted by :class:`~direct_nextaccel.benchmark.speed.training.HostSyncCounter` in the engine's ``_do_iteration`` (the
plugin's part of a step). DIRECT's own loop adds one more per loss key when its ``storage.add_scalars`` converts the
returned losses to floats (2 for NextAccel: ``loss`` and ``token_cross_entropy``), and nothing else: with bfloat16 or
float32 its GradScaler is disabled and ``clip_grad_norm_`` does not read the norm back.
"""

from __future__ import annotations

import pytest

from direct_nextaccel.benchmark.speed.training import build_engines, count_syncs, training_batch

ENGINE_READS = ["tolist in direct_nextaccel.core.engine.check_finite"] * 2
"""The plugin engine's own reads: the inputs' NaN/Inf check (one fused flag, with the slices' reference scales) and
the loss's, which also brings the step's logged scalars (the per-level token accuracies)."""

PER_FILE_MASK_CHECK = "__bool__ in direct_nextaccel.nextaccel.transformer_engine._check_sampling_mask"
"""With per-file masks, DIRECT's sampling mask is compared with level R32 of the batch's masks: one read per batch."""


@pytest.fixture(scope="module")
def counts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("syncs")
    found = {}
    for mode in ("file", "fresh"):
        engine = build_engines(folder, training_masks=mode)["nextaccel"]()
        found[mode] = count_syncs(engine, training_batch("nextaccel", batch=4))
    return found


def test_the_model_value_checks_and_the_intensity_check_read_nothing_more(counts):
    """The token, family and label ranges are checked at the models' public entry, not on the engine's own inputs,
    and the reference scale with the inputs' one read."""
    assert counts["fresh"]["calls"] == ENGINE_READS
    assert counts["file"]["calls"] == [ENGINE_READS[0], PER_FILE_MASK_CHECK, ENGINE_READS[1]]
    assert counts["fresh"]["direct"] == counts["file"]["direct"] == 2


@pytest.mark.parametrize("mode", ["file", "fresh"])
def test_a_nextaccel_training_step_synchronises_at_most_three_times(counts, mode):
    assert counts[mode]["plugin"] <= 3, counts[mode]["calls"]

"""Tempered and self-normalised bridge scores: exact against float64, shardable, and invariant
to what an InfoNCE critic leaves unidentified."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ucl_cli.errors import UsageError
from ucl_cli.estimators import bridge_scores
from ucl_cli.estimators.calibrated import (
    Calibration,
    calibrated_scores,
    combine_calibrated,
    partial_calibrated_scores,
)


def brute_force(left, right, t1, t2, normalize):
    """The definition, in float64 over the explicit [N, M, K] terms."""
    left, right = left.double(), right.double()
    bank = left.shape[1]
    terms = t1 * left[:, :, None] + t2 * right[None]
    score = torch.logsumexp(terms, dim=1) - math.log(bank)
    if normalize == "candidates":
        score = score - (torch.logsumexp(t2 * right, dim=0) - math.log(bank))[None, :]
    return score


def scaled(shape, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    return scale * (2 * torch.rand(shape, generator=generator, dtype=torch.float64) - 1)


def test_the_default_is_the_papers_estimator_exactly():
    left, right = scaled((4, 300), 100.0, 0), scaled((300, 6), 33.0, 1)
    assert Calibration().is_paper
    assert torch.equal(calibrated_scores(left, right), bridge_scores(left, right))


@settings(max_examples=40, deadline=None)
@given(
    t1=st.floats(0.05, 2.0),
    t2=st.floats(0.05, 2.0),
    normalize=st.sampled_from(["none", "candidates"]),
    scale=st.sampled_from([1.0, 30.0, 100.0]),
    seed=st.integers(0, 10_000),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_matches_the_definition_in_float64(t1, t2, normalize, scale, seed, dtype):
    left, right = scaled((3, 257), scale, seed), scaled((257, 5), scale, seed + 1)
    expected = brute_force(left, right, t1, t2, normalize)
    got = calibrated_scores(left.to(dtype), right.to(dtype), Calibration(t1, t2, normalize))
    tolerance = 1e-9 if dtype == torch.float64 else 2e-6 * max(1.0, scale)
    torch.testing.assert_close(got.double(), expected, atol=tolerance, rtol=0)


@pytest.mark.parametrize("normalize", ["none", "candidates"])
def test_any_split_of_the_bank_combines_to_one_call(normalize):
    left, right = scaled((5, 1000), 50.0, 2), scaled((1000, 7), 50.0, 3)
    calibration = Calibration(0.25, 0.5, normalize)
    whole = calibrated_scores(left, right, calibration)
    cuts = [0, 1, 333, 334, 999, 1000]
    parts = [
        partial_calibrated_scores(left[:, a:b], right[a:b], calibration)
        for a, b in itertools.pairwise(cuts)
    ]
    torch.testing.assert_close(combine_calibrated(parts), whole, atol=1e-12, rtol=0)


def test_normalising_removes_a_per_candidate_constant_of_the_critic():
    # An InfoNCE critic is identified only up to a constant per candidate: adding c_k to every
    # right[:, k] changes the paper's scores but not the self-normalised ones.
    left, right = scaled((4, 500), 100.0, 4), scaled((500, 6), 33.0, 5)
    shift = torch.tensor([0.0, 5.0, -3.0, 12.0, 0.5, -7.0], dtype=torch.float64)
    for t2 in (1.0, 0.25):
        plain = Calibration(1.0, t2, "none")
        normal = Calibration(1.0, t2, "candidates")
        assert not torch.allclose(
            calibrated_scores(left, right + shift, plain), calibrated_scores(left, right, plain)
        )
        torch.testing.assert_close(
            calibrated_scores(left, right + shift, normal),
            calibrated_scores(left, right, normal),
            atol=1e-10,
            rtol=0,
        )


def test_a_candidate_no_bank_row_reaches_scores_minus_infinity():
    left, right = scaled((2, 50), 10.0, 6), scaled((50, 3), 10.0, 7)
    right[:, 1] = -math.inf
    scores = calibrated_scores(left, right, Calibration(0.5, 0.5, "candidates"))
    assert torch.isneginf(scores[:, 1]).all() and torch.isfinite(scores[:, [0, 2]]).all()


def test_temperature_and_normalisation_parse_from_the_command_line():
    assert Calibration.parse("0.25") == Calibration(0.25, 0.25, "none")
    assert Calibration.parse("0.5, 0.1", "candidates") == Calibration(0.5, 0.1, "candidates")
    assert Calibration.parse("1").to_json() == {"temperature": [1.0, 1.0], "normalize": "none"}
    for bad in ("hot", "0", "-1", "1,2,3", "nan"):
        with pytest.raises(UsageError):
            Calibration.parse(bad)
    with pytest.raises(UsageError, match="normalize must be one of none, candidates"):
        Calibration.parse("1", "bank")


def test_pseudo_pairs_use_no_labels_and_pair_each_fresh_item_with_itself():
    """The label-free rule's pairs: fresh bridge items through both bridge towers. They never
    read the held-out triplets, and an item's own candidate is its positive (it wins most
    groups once the towers are trained), as a labelled pair's would be."""
    from dataclasses import replace

    from ucl_cli.experiments.evaluation import bank_sweep
    from ucl_cli.experiments.families import INDEPENDENT
    from ucl_cli.experiments.options import SynthOptions
    from ucl_cli.experiments.tasks import pseudo_pair_terms, seed_data
    from ucl_cli.experiments.training import TrainingOptions, train_families

    options = SynthOptions(
        seeds=(1,),
        critics=("cosine",),
        bank_sizes=(400,),
        sweep_sizes=(),
        train_size=512,
        val_size=64,
        training=TrainingOptions(epochs=3, batch_size=128, lr_step=2),
    )
    data = seed_data(options, 1)
    trained = train_families((INDEPENDENT,), "cosine", data.train, options.training, 1)
    terms, groups = pseudo_pair_terms(trained, INDEPENDENT, data, options, torch.float64, 1)
    left, right = terms(0)
    assert groups == 2 and left.shape == (32, 400) and right.shape == (400, 32)
    without_labels = replace(data, val=None)  # the held-out triplets are not needed at all
    again, _ = pseudo_pair_terms(trained, INDEPENDENT, without_labels, options, torch.float64, 1)
    assert torch.equal(again(1)[0], terms(1)[0])
    recall = bank_sweep(terms, groups, (400,), ess=False).recall[0]
    assert recall > 3 / 32  # far above chance: the pairs carry the bridge's signal

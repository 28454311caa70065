"""The bridge estimator against float64 brute force, closed forms and planted answers."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ucl_cli.errors import NonFiniteScoresError, UsageError
from ucl_cli.estimators import (
    bridge_scores,
    combine_partials,
    cosine,
    dot,
    get_critic,
    mean_rank,
    neg_sq_l2,
    partial_bridge_scores,
    recall_at_k,
    recall_at_k_per_query,
)
from ucl_cli.estimators.explain import effective_sample_size, explain_pairs
from ucl_cli.estimators.topk import (
    BridgeBounds,
    GroupedRest,
    TopEntries,
    certify_ranking,
    rest_logmass,
    top_entries,
    topk_bounds_from_matrices,
    topk_bridge_bounds,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def brute_force(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """The definition, in float64, materialising [N, M, K]."""
    paths = left.double()[:, :, None] + right.double()[None, :, :]
    return torch.logsumexp(paths, dim=1) - math.log(left.shape[1])


def float32_tolerance(left: torch.Tensor, right: torch.Tensor) -> float:
    return 1e-6 * (1 + left.abs().max().item() + right.abs().max().item())


@st.composite
def score_matrices(draw, max_n=6, max_m=300, max_k=6):
    n = draw(st.integers(1, max_n))
    m = draw(st.integers(1, max_m))
    k = draw(st.integers(1, max_k))
    scale = draw(st.sampled_from([1.0, 14.0, 100.0, 1000.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    left = (torch.rand(n, m, generator=generator, dtype=torch.float64) * 2 - 1) * scale
    right = (torch.rand(m, k, generator=generator, dtype=torch.float64) * 2 - 1) * scale
    return left, right


# --- critics ---------------------------------------------------------------------------------


def test_critics_match_their_definitions():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, generator=generator, dtype=torch.float64)
    y = torch.randn(5, 8, generator=generator, dtype=torch.float64)
    unit_x, unit_y = x / x.norm(dim=1, keepdim=True), y / y.norm(dim=1, keepdim=True)
    assert torch.allclose(cosine(x, y, 3.0), 3.0 * unit_x @ unit_y.T)
    assert torch.allclose(dot(x, y, 2.0), 2.0 * x @ y.T)
    assert torch.allclose(neg_sq_l2(x, y, 0.5), -0.25 * torch.cdist(x, y) ** 2)
    assert neg_sq_l2(x, x, 1.0).diagonal().abs().max() < 1e-12


def test_unknown_critic_lists_the_known_ones():
    with pytest.raises(UsageError, match="cosine, dot, neg_sq_l2"):
        get_critic("euclid")


# --- bridge_scores ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(score_matrices(), st.sampled_from([None, 7, 1024]))
def test_float64_matches_brute_force(matrices, chunk_size):
    left, right = matrices
    out = bridge_scores(left, right, chunk_size=chunk_size)
    assert out.dtype == torch.float64
    assert torch.allclose(out, brute_force(left, right), rtol=0, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(score_matrices())
def test_float32_within_stated_tolerance(matrices):
    left, right = (matrix.float() for matrix in matrices)
    out = bridge_scores(left, right)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    error = (out.double() - brute_force(left, right)).abs().max().item()
    assert error <= float32_tolerance(left, right)


def test_best_path_far_from_both_maxima_is_exact():
    # The only non-negligible paths go through rows 2 and 3; the row and column maxima sit on
    # rows 0 and 1, so a max-shifted product underflows to zero there.
    left = torch.tensor([[100.0, -100.0, 0.0, 0.0]])
    right = torch.tensor([[-100.0], [100.0], [0.0], [0.0]])
    out = bridge_scores(left, right)
    assert torch.isfinite(out).all()
    assert out.item() == pytest.approx(math.log(2 + 2 * math.exp(0.0)) - math.log(4), abs=1e-6)
    assert out.item() == pytest.approx(brute_force(left, right).item(), abs=1e-6)


@pytest.mark.parametrize("scale", [100.0, 1000.0, 1e4])
def test_adversarial_underflow_everywhere_stays_exact(scale, monkeypatch):
    import ucl_cli.estimators.bridge as bridge

    escalated, recomputed = [], []
    wide, exact = bridge._float64_sums, bridge.exact_pair_scores

    def counting_wide(left, right, row_shift, col_shift, peaks, rows, cols, chunk_size, **kwargs):
        escalated.append(rows.numel())
        return wide(left, right, row_shift, col_shift, peaks, rows, cols, chunk_size, **kwargs)

    def counting_exact(left, right, rows, cols, **kwargs):
        recomputed.append(rows.numel())
        return exact(left, right, rows, cols, **kwargs)

    monkeypatch.setattr(bridge, "_float64_sums", counting_wide)
    monkeypatch.setattr(bridge, "exact_pair_scores", counting_exact)
    # Every pair's best path is far below the row max and column max: forces the fallback.
    generator = torch.Generator().manual_seed(1)
    n, m, k = 3, 50, 4
    left = torch.rand(n, m, generator=generator) * 0.1
    right = torch.rand(m, k, generator=generator) * 0.1
    left[:, 0] = scale  # a row maximum that no candidate can use
    right[1, :] = scale  # a column maximum that no query can use
    right[0, :] = -scale
    left[:, 1] = -scale
    out = bridge_scores(left, right)
    assert escalated == [n * k]  # float32's guard caught every entry; float64 resolves them
    assert recomputed == ([] if scale == 100.0 else [n * k])  # at e^-200, not e^-2000
    assert torch.isfinite(out).all()
    assert (out.double() - brute_force(left, right)).abs().max() <= float32_tolerance(left, right)


def test_typical_clip_scale_scores_need_no_fallback(monkeypatch):
    import ucl_cli.estimators.bridge as bridge

    monkeypatch.setattr(bridge, "exact_pair_scores", None)  # would fail if called
    generator = torch.Generator().manual_seed(7)
    left = torch.rand(4, 2000, generator=generator) * 35  # cosine 0..0.35 at scale 100
    right = torch.rand(2000, 6, generator=generator) * 35
    out = bridge_scores(left, right)
    assert (out.double() - brute_force(left, right)).abs().max() <= float32_tolerance(left, right)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp_factors_are_never_subnormal(dtype):
    # Subnormal arithmetic is many times slower on x86, and the flush-to-zero switch reaches
    # only the calling thread, not torch's workers: factors are clamped to normal numbers.
    from ucl_cli.estimators.bridge import _exp2_of_affine

    values = torch.linspace(-5000.0, 0.0, 128 * 25, dtype=dtype).reshape(128, 25)
    for offset in (torch.zeros(1, 25, dtype=dtype), torch.zeros(128, 1, dtype=dtype)):
        factors = _exp2_of_affine(values, offset, torch.empty_like(values))
        assert factors.min() >= torch.finfo(dtype).tiny
        assert factors.max() == 1.0


def test_paths_of_minus_infinity_are_masked_out():
    left = torch.tensor([[0.0, -math.inf, 1.0]], dtype=torch.float64)
    right = torch.tensor([[2.0], [5.0], [-math.inf]], dtype=torch.float64)
    assert bridge_scores(left, right).item() == pytest.approx(2.0 - math.log(3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    generator = torch.Generator().manual_seed(2)
    left = (torch.randn(3, 40, generator=generator) * 10).to(dtype)
    right = (torch.randn(40, 5, generator=generator) * 10).to(dtype)
    out = bridge_scores(left, right)
    assert out.dtype == torch.float32
    assert (out.double() - brute_force(left, right)).abs().max() <= float32_tolerance(left, right)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_input_is_refused(bad):
    left = torch.zeros(2, 3)
    left[1, 2] = bad
    with pytest.raises(NonFiniteScoresError, match="left contains NaN or \\+inf"):
        bridge_scores(left, torch.zeros(3, 2))


def test_misaligned_bank_is_refused_with_shapes():
    with pytest.raises(UsageError, match="left has 3 bank columns but right has 4 bank rows"):
        bridge_scores(torch.zeros(2, 3), torch.zeros(4, 2))


def test_matmul_precision_setting_is_restored():
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        bridge_scores(torch.randn(2, 3), torch.randn(3, 2))
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [1.0, 14.0, 100.0])
def test_float32_tolerance_on_every_device(device, scale):
    generator = torch.Generator().manual_seed(8)
    left = (torch.rand(7, 30_000, generator=generator) * 2 - 1) * scale
    right = (torch.rand(30_000, 9, generator=generator) * 2 - 1) * scale
    out = bridge_scores(left.to(device), right.to(device))
    error = (out.cpu().double() - brute_force(left, right)).abs().max().item()
    assert error <= float32_tolerance(left, right)


@pytest.mark.parametrize("device", DEVICES)
def test_result_stays_on_the_input_device(device):
    left = torch.randn(2, 30, device=device) * 100
    right = torch.randn(30, 3, device=device) * 100
    out = bridge_scores(left, right)
    assert out.device.type == device
    assert (out.cpu().double() - brute_force(left.cpu(), right.cpu())).abs().max() < 2e-3


# --- sharding --------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(score_matrices(max_m=200), st.lists(st.integers(0, 200), min_size=1, max_size=5))
def test_any_split_into_shards_gives_the_same_scores(matrices, cut_points):
    left, right = matrices
    bank = left.shape[1]
    cuts = sorted({0, bank, *(min(c, bank) for c in cut_points)})
    parts = [partial_bridge_scores(left[:, a:b], right[a:b]) for a, b in pairwise(cuts)]
    parts.append(partial_bridge_scores(left[:, :0], right[:0]))  # an empty shard is harmless
    assert torch.allclose(combine_partials(parts), brute_force(left, right), rtol=0, atol=1e-9)


def test_partial_reports_its_count_and_unnormalised_sum():
    left = torch.zeros(1, 3, dtype=torch.float64)
    right = torch.zeros(3, 1, dtype=torch.float64)
    part = partial_bridge_scores(left, right)
    assert part.count == 3
    assert part.lse.item() == pytest.approx(math.log(3))


def test_combining_nothing_is_an_error():
    with pytest.raises(UsageError):
        combine_partials([])


# --- top-K bounds ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(score_matrices(max_m=300, max_k=8), st.integers(1, 40))
def test_bounds_contain_the_exact_score(matrices, t):
    left, right = matrices
    exact = brute_force(left, right)
    bounds = topk_bounds_from_matrices(left, right, t)
    assert (bounds.lower <= exact + 1e-9).all()
    assert (bounds.upper >= exact - 1e-9).all()


@settings(max_examples=60, deadline=None)
@given(score_matrices(max_m=300, max_k=8), st.integers(1, 40))
def test_bounds_from_the_exact_query_mass_contain_the_exact_score(matrices, t):
    left, right = matrices
    exact = brute_force(left, right)
    plain = topk_bounds_from_matrices(left, right, t)
    bounds = topk_bounds_from_matrices(left, right, t, exact_left=True)
    assert (bounds.lower <= exact + 1e-9).all()
    assert (bounds.upper >= exact - 1e-9).all()
    assert (bounds.upper <= plain.upper + 1e-12).all()  # never looser than the ceiling bound


def test_rest_logmass_is_the_exact_mass_outside_the_listed_rows_per_group():
    left = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    listed = torch.tensor([[0, 2], [1, 3]])
    whole = torch.tensor([[math.log(math.e + 1.0)], [math.log(2.0)]], dtype=torch.float64)
    assert torch.allclose(rest_logmass(left, listed), whole)
    groups = torch.tensor([0, 0, 1, 1])  # rows 0, 1 in group 0; rows 2, 3 in group 1
    per_group = rest_logmass(left, listed, groups, 2)
    assert torch.allclose(per_group, torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64))


@settings(max_examples=60, deadline=None)
@given(score_matrices(max_m=300, max_k=8), st.integers(1, 40), st.integers(1, 5))
def test_grouped_rest_bounds_contain_the_exact_score(matrices, t, num_groups):
    # Groups of bank rows (an IVF index's lists), each with the candidate's exact ceiling over
    # its rows outside the candidate's top list, paired with the query's mass in the group.
    left, right = matrices
    bank = left.shape[1]
    groups = torch.arange(bank) % num_groups
    left_top, right_top = top_entries(left, t), top_entries(right.T, t)
    ceiling = torch.full((right.shape[1], num_groups), -math.inf, dtype=right.dtype)
    for k in range(right.shape[1]):
        outside = torch.ones(bank, dtype=torch.bool)
        outside[right_top.indices[k]] = False
        for g in range(num_groups):
            members = outside & (groups == g)
            if members.any():
                ceiling[k, g] = right[members, k].max()
    rest = GroupedRest(((rest_logmass(left, left_top.indices, groups, num_groups), ceiling),))
    # A second way: a per-row allowance a_m = max over candidates of right[m, :] folded into
    # the query's mass, against a ceiling of 0 for every candidate and group.
    allowance = right.max(dim=1).values
    shifted = rest_logmass(left, left_top.indices, groups, num_groups, allowance)
    base = torch.zeros(right.shape[1], num_groups, dtype=right.dtype)
    both = GroupedRest((*rest.ways, (shifted, base)))
    cross = (right[left_top.indices], left[:, right_top.indices])
    exact = brute_force(left, right)
    for grouped in (rest, both):
        bounds = topk_bridge_bounds(left_top, right_top, *cross, bank, rest=grouped)
        assert (bounds.lower <= exact + 1e-9).all()
        assert (bounds.upper >= exact - 1e-9).all()


def test_a_concentrated_query_certifies_where_the_ceiling_bound_cannot():
    # A million-row bank at CLIP scale: the query's mass sits on its 50 nearest rows (cosine
    # 0.9 vs 0.1 elsewhere), so the unknown rows carry a negligible share of it, although the
    # candidates' own ceilings (cosine 1: the vacuous IVF bound) are as high as can be.
    generator = torch.Generator().manual_seed(8)
    bank, candidates, near = 1_000_000, 20, 50
    left = torch.full((1, bank), 10.0, dtype=torch.float64)
    left[0, :near] = 90.0
    right = torch.rand(bank, candidates, generator=generator, dtype=torch.float64) * 10
    right[:near] = torch.linspace(10, 90, candidates, dtype=torch.float64)  # a clear order
    left_top = top_entries(left, near)
    right_top = TopEntries(
        *right.T.topk(near, dim=1), ceiling=torch.full((candidates,), 100.0, dtype=torch.float64)
    )
    cross = (right[left_top.indices], left[:, right_top.indices])
    loose = topk_bridge_bounds(left_top, right_top, *cross, bank)
    rest = GroupedRest(((rest_logmass(left, left_top.indices), right_top.ceiling[:, None]),))
    tight = topk_bridge_bounds(left_top, right_top, *cross, bank, rest=rest)
    assert not certify_ranking(loose).certified.any()
    ranking = certify_ranking(tight)
    assert ranking.leading_certified()[0] >= 10  # the top 10 are proven ...
    exact_order = brute_force(left, right)[0].argsort(descending=True)
    assert torch.equal(ranking.order[0, :10], exact_order[:10])  # ... and are the exact ones


def test_cosine_floor_tightens_the_lower_bound():
    generator = torch.Generator().manual_seed(3)
    left = (torch.rand(4, 500, generator=generator, dtype=torch.float64) * 2 - 1) * 2
    right = (torch.rand(500, 6, generator=generator, dtype=torch.float64) * 2 - 1) * 2
    exact = brute_force(left, right)
    loose = topk_bounds_from_matrices(left, right, 10)
    tight = topk_bounds_from_matrices(left, right, 10, left_floor=-2.0, right_floor=-2.0)
    assert (tight.lower > loose.lower).all()
    assert (tight.lower <= exact + 1e-12).all()


def test_bounds_are_exact_when_the_top_lists_cover_the_bank():
    generator = torch.Generator().manual_seed(4)
    left = torch.randn(3, 20, generator=generator, dtype=torch.float64) * 50
    right = torch.randn(20, 4, generator=generator, dtype=torch.float64) * 50
    bounds = topk_bounds_from_matrices(left, right, 20)
    assert torch.allclose(bounds.lower, brute_force(left, right), atol=1e-9)
    assert torch.equal(bounds.lower, bounds.upper)


def test_overlapping_top_lists_are_not_counted_twice():
    # Bank row 0 is in the query's top list and the candidate's: the known sum counts it once.
    left = torch.tensor([[5.0, 0.0, 0.0]], dtype=torch.float64)
    right = torch.tensor([[5.0], [0.0], [0.0]], dtype=torch.float64)
    bounds = topk_bounds_from_matrices(left, right, 1)
    assert bounds.lower.item() == pytest.approx(10.0 - math.log(3))


def test_planted_winner_is_certified_at_clip_scale():
    generator = torch.Generator().manual_seed(5)
    bank, candidates = 5000, 10
    left = torch.rand(1, bank, generator=generator, dtype=torch.float64) * 20
    right = torch.rand(bank, candidates, generator=generator, dtype=torch.float64) * 20
    left[0, 42] = 100.0  # the query matches bank item 42 strongly ...
    right[42, 7] = 100.0  # ... and so does candidate 7
    ranking = certify_ranking(topk_bounds_from_matrices(left, right, 50))
    assert ranking.order[0, 0].item() == 7
    assert ranking.certified[0, 0]
    assert ranking.leading_certified()[0] >= 1


def test_certified_positions_agree_with_the_exact_ranking():
    generator = torch.Generator().manual_seed(6)
    left = torch.randn(5, 3000, generator=generator, dtype=torch.float64) * 30
    right = torch.randn(3000, 12, generator=generator, dtype=torch.float64) * 30
    exact_order = brute_force(left, right).argsort(dim=1, descending=True)
    ranking = certify_ranking(topk_bounds_from_matrices(left, right, 200))
    assert ranking.certified.any()
    assert torch.equal(ranking.order[ranking.certified], exact_order[ranking.certified])


def test_uncertified_candidates_rank_by_what_is_known_exactly():
    # Candidate 0: 50 nats known, an unknown part bounded by a loose ceiling (upper 120);
    # candidate 1: 60 nats known, tightly bounded. The midpoint would put 0 first.
    bounds = BridgeBounds(
        lower=torch.tensor([[50.0, 60.0]], dtype=torch.float64),
        upper=torch.tensor([[120.0, 61.0]], dtype=torch.float64),
    )
    ranking = certify_ranking(bounds)
    assert ranking.order[0].tolist() == [1, 0]
    assert not ranking.certified.any()  # and neither position is claimed


def test_low_level_bounds_check_cross_term_shapes():
    entries = top_entries(torch.zeros(2, 5), 3)
    with pytest.raises(UsageError, match="cross terms"):
        topk_bridge_bounds(entries, entries, torch.zeros(2, 3, 3), torch.zeros(1), 5)


# --- explanations ----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(score_matrices(max_m=200), st.integers(1, 6), st.sampled_from([64, 1 << 20]))
def test_explanation_weights_are_the_softmax_and_sum_to_one(matrices, top, block):
    left, right = matrices
    rows = torch.arange(left.shape[0]).repeat_interleave(right.shape[1])
    cols = torch.arange(right.shape[1]).repeat(left.shape[0])
    explanation = explain_pairs(left, right, rows, cols, top=top, block_elements=block)
    weights = torch.softmax(left[rows] + right[:, cols].T, dim=1)  # [P, M], the definition
    expected_top = weights.topk(min(top, left.shape[1]), dim=1).values
    assert torch.allclose(explanation.weights, expected_top, atol=1e-12)
    picked = weights.gather(1, explanation.bank_indices)
    assert torch.allclose(picked, explanation.weights, atol=1e-12)
    ess = 1.0 / (weights * weights).sum(dim=1)
    assert torch.allclose(explanation.effective_sample_size, ess, rtol=1e-9)
    assert torch.allclose(weights.sum(dim=1), torch.ones(len(rows), dtype=torch.float64))


def test_effective_sample_size_of_uniform_and_one_hot_weights():
    bank = 50
    flat = effective_sample_size(
        torch.zeros(1, bank), torch.zeros(bank, 1), torch.tensor([0]), torch.tensor([0])
    )
    assert flat.item() == pytest.approx(bank, rel=1e-5)
    left = torch.zeros(1, bank)
    left[0, 3] = 200.0
    peaked = effective_sample_size(left, torch.zeros(bank, 1), torch.tensor([0]), torch.tensor([0]))
    assert peaked.item() == pytest.approx(1.0, rel=1e-5)


# --- recall ----------------------------------------------------------------------------------


def test_recall_counts_ties_as_a_fair_coin_not_a_win():
    scores = torch.zeros(1, 4)  # every candidate tied: the positive lands anywhere in 1..4
    positives = torch.tensor([2])
    assert recall_at_k(scores, positives, 1) == pytest.approx(0.25)
    assert recall_at_k(scores, positives, 2) == pytest.approx(0.5)
    assert recall_at_k(scores, positives, 4) == pytest.approx(1.0)
    assert mean_rank(scores, positives) == pytest.approx(2.5)


def test_recall_with_a_partial_tie():
    scores = torch.tensor([[3.0, 1.0, 1.0, 1.0, 0.0]])  # one strictly better, two tied others
    per_query = recall_at_k_per_query(scores, torch.tensor([1]), 2)
    assert per_query.item() == pytest.approx(1 / 3)
    assert mean_rank(scores, torch.tensor([1])) == pytest.approx(3.0)


def test_recall_of_a_planted_ranking():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1], [0.0, 0.1, 0.2]])
    positives = torch.tensor([0, 0, 0])  # ranks 1, 2, 3
    assert recall_at_k(scores, positives, 1) == pytest.approx(1 / 3)
    assert recall_at_k(scores, positives, 2) == pytest.approx(2 / 3)
    assert recall_at_k(scores, positives, 3) == pytest.approx(1.0)


def test_recall_refuses_non_finite_scores_and_says_where():
    scores = torch.tensor([[0.0, 1.0], [math.nan, 0.0]])
    with pytest.raises(NonFiniteScoresError, match="query 1, candidate 0"):
        recall_at_k(scores, torch.tensor([0, 1]), 1)


def test_recall_checks_its_arguments():
    with pytest.raises(UsageError):
        recall_at_k(torch.zeros(2, 3), torch.tensor([0, 3]), 1)
    with pytest.raises(UsageError):
        recall_at_k(torch.zeros(2, 3), torch.tensor([0, 1]), 0)

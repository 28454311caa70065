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
        normalizer = torch.logsumexp(t2 * right, dim=0) - math.log(bank)
        score = score - normalizer[None, :]
        # A candidate no bank row reaches has no path: -inf (not -inf - -inf).
        score = score.masked_fill(torch.isneginf(normalizer)[None, :], -math.inf)
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


# --- the temperatures folded into the bridge sum's one pass ------------------------------------
#
# Tolerances. A float32 sum is formed from exponents t1 left + t2 right whose magnitudes reach
# T = max|t1 left| + max|t2 right| (over the unmasked entries); each is rounded a few times by
# eps = 1.2e-7 (the fused multiply-add, the shift, exp2, the product), and the score is rounded
# to float32 once more: 1e-6 (1 + T) per sum (~8 eps relative to T; measured <= 6 eps) is the
# bound, doubled with normalisation (two sums, two roundings). A masked entry's true score is
# huge (about t * -1e30), so 4 eps of the expected value itself is allowed on top. Float64:
# the same with 1e-13 (measured <= 8 float64 eps, 1.8e-15).

TEMPERATURES = [1.0, 0.5, 0.1, 0.01, 3.0]
DTYPES = [torch.float32, torch.float64]
MASK = -1e30


def magnitude(left, right, t1, t2):
    """T: the largest |t1 left| + |t2 right| over finite, unmasked entries."""

    def peak(x):
        finite = x[torch.isfinite(x) & (x.abs() < 1e20)]
        return finite.abs().max().item() if finite.numel() else 0.0

    return t1 * peak(left.double()) + t2 * peak(right.double())


def assert_matches(got, expected, dtype, size, normalize):
    """`got` within the stated tolerance of the float64 reference; -inf exactly where the
    reference is -inf, never NaN."""
    assert got.dtype == dtype
    assert not torch.isnan(got).any()
    assert torch.equal(torch.isneginf(got), torch.isneginf(expected))
    finite = torch.isfinite(expected)
    assert torch.isfinite(got[finite]).all()
    per_sum = 1e-6 if dtype == torch.float32 else 1e-13
    sums = 2 if normalize == "candidates" else 1
    error = (got[finite].double() - expected[finite]).abs()
    allowed = sums * per_sum * (1 + size) + 4 * torch.finfo(dtype).eps * expected[finite].abs()
    assert (error <= allowed).all(), (error / allowed).max().item()


def check(left, right, t1, t2, normalize, dtype, size=None):
    left, right = left.to(dtype), right.to(dtype)
    got = calibrated_scores(left, right, Calibration(t1, t2, normalize))
    expected = brute_force(left, right, t1, t2, normalize)
    size = magnitude(left, right, t1, t2) if size is None else size
    assert_matches(got, expected, dtype, size, normalize)
    return got


def route_counts(monkeypatch):
    """How many entries each fallback of the bridge sum is asked for, call by call."""
    import ucl_cli.estimators.bridge as bridge

    routes = {"float64": [], "streamed": []}
    wide, exact = bridge._float64_sums, bridge.exact_pair_scores

    def counting_wide(left, right, row_max, col_max, peaks, rows, cols, chunk, **kwargs):
        routes["float64"].append(rows.numel())
        return wide(left, right, row_max, col_max, peaks, rows, cols, chunk, **kwargs)

    def counting_exact(left, right, rows, cols, **kwargs):
        routes["streamed"].append(rows.numel())
        return exact(left, right, rows, cols, **kwargs)

    monkeypatch.setattr(bridge, "_float64_sums", counting_wide)
    monkeypatch.setattr(bridge, "exact_pair_scores", counting_exact)
    return routes


def exponent_forms(monkeypatch):
    """The `centred` flag of every factor pass (True: the form for shifts past ~2048)."""
    import ucl_cli.estimators.bridge as bridge

    forms = []
    original = bridge._exp2_of_affine

    def spy(values, offset, out, **kwargs):
        forms.append(kwargs.get("centred", False))
        return original(values, offset, out, **kwargs)

    monkeypatch.setattr(bridge, "_exp2_of_affine", spy)
    return forms


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", ["none", "candidates"])
@pytest.mark.parametrize("t", TEMPERATURES)
@pytest.mark.parametrize("scale", [1.0, 30.0, 300.0])
def test_every_temperature_matches_the_float64_definition(t, normalize, dtype, scale):
    # 2500 bank rows: several PARTIAL_TERMS blocks, folded exponent rows on the right.
    left, right = scaled((4, 2500), scale, 10), scaled((2500, 5), scale, 11)
    check(left, right, t, t, normalize, dtype)
    check(left, right, t, 1.0 / t, normalize, dtype)  # unequal temperatures


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", ["none", "candidates"])
@pytest.mark.parametrize("t", TEMPERATURES)
def test_masked_bank_rows_query_rows_and_candidates(t, normalize, dtype):
    left, right = scaled((4, 300), 20.0, 12), scaled((300, 5), 20.0, 13)
    size = magnitude(left, right, t, t)
    left[:, 10:40] = MASK  # bank rows no query reaches
    right[100:150] = MASK  # bank rows that reach no candidate
    left[2] = MASK * (1 + scaled((300,), 1e-3, 14))  # a masked query: scores about t * -1e30
    if normalize == "none":  # (normalising divides a masked candidate's mask away: see below)
        right[:, 3] = MASK * (1 + scaled((300,), 1e-3, 15))
    got = check(left, right, t, t, normalize, dtype, size)
    assert torch.isfinite(got).all()
    assert (got[2] < t * MASK / 2).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t", TEMPERATURES)
def test_a_normalised_masked_candidate_is_finite_to_within_the_masks_rounding(t, dtype):
    # Normalising divides the candidate's bank sum by its own bank sum: the true score is
    # moderate, but each sum is about t * -1e30 in log space, so their difference is exact only
    # to the rounding of such a number (a few eps * t * 1e30, as before the temperatures were
    # folded in); the float64 reference itself loses the unmasked values in t1 left + t2 right.
    left, right = scaled((3, 200), 20.0, 16), scaled((200, 4), 20.0, 17)
    right[:, 1] = MASK
    got = calibrated_scores(left.to(dtype), right.to(dtype), Calibration(t, t, "candidates"))
    expected = brute_force(left.to(dtype), right.to(dtype), t, t, "candidates")
    assert torch.isfinite(got).all()
    rounding = 4 * torch.finfo(dtype).eps * t * abs(MASK)
    assert (got[:, 1].double() - expected[:, 1]).abs().max() <= rounding
    others = [0, 2, 3]
    size = magnitude(left, right[:, others], t, t)
    assert_matches(got[:, others], expected[:, others], dtype, size, "candidates")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", ["none", "candidates"])
@pytest.mark.parametrize("t", TEMPERATURES)
@pytest.mark.parametrize("offsets", [(1e6, -1e6), (3e5, 2e5), (-4e5, 1e5)])
def test_huge_shifts_take_the_centred_form_and_stay_exact(
    t, normalize, dtype, offsets, monkeypatch
):
    # Scaled shifts past 2048 (at t = 0.01 as well): the factors are exp2((x - max) t log2 e),
    # exact near the maximum, so in float32 the error follows the spread of the values (60 t),
    # not their offset (plus the output's own rounding, 4 eps of the expected value). (Float64
    # keeps the general tolerance: its reference rounds each path by eps * |offset| itself.)
    forms = exponent_forms(monkeypatch)
    spread_left, spread_right = scaled((3, 1500), 30.0, 19), scaled((1500, 4), 30.0, 20)
    left, right = spread_left + offsets[0], spread_right + offsets[1]
    spread = magnitude(spread_left, spread_right, t, t)
    check(left, right, t, t, normalize, dtype, size=spread if dtype == torch.float32 else None)
    # Each side's form follows its own largest scaled shift; the left's and right's passes
    # alternate, one pair per chunk.
    eps = torch.finfo(dtype).eps
    row_peak = t * left.to(dtype).amax(dim=1).abs().max().item()
    col_peak = t * right.to(dtype).amax(dim=0).abs().max().item()
    assert set(forms[0::2]) == {row_peak * eps > 2**-12}
    assert set(forms[1::2]) == {col_peak * eps > 2**-12}
    if dtype == torch.float32 and offsets == (1e6, -1e6):
        assert all(forms)  # shifts of +-1e4 * t cancel: only the centred form keeps them exact


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", ["none", "candidates"])
@pytest.mark.parametrize("t", TEMPERATURES)
def test_tight_ties(t, normalize, dtype):
    # Every path equal: the sum is M e^(t1 c1 + t2 c2) exactly, the normaliser M e^(t2 c2).
    left, right = torch.full((3, 2000), 12.5), torch.full((2000, 4), -7.25)
    got = calibrated_scores(left.to(dtype), right.to(dtype), Calibration(t, t, normalize))
    value = t * 12.5 if normalize == "candidates" else t * (12.5 - 7.25)
    assert_matches(got, torch.full((3, 4), value, dtype=torch.float64), dtype, t * 20, normalize)
    # Near-ties: values a few float32 units apart, at large and small magnitudes.
    for base in (1000.0, 0.001):
        jitter = 1 + scaled((3, 2000), 4 * 1.2e-7, 21)
        left = (base * jitter).float()
        right = (-base * (1 + scaled((2000, 4), 4 * 1.2e-7, 22))).float()
        check(left, right, t, t, normalize, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", ["none", "candidates"])
@pytest.mark.parametrize("t", TEMPERATURES)
def test_minus_infinity_entries_give_minus_infinity_never_nan(t, normalize, dtype):
    left, right = scaled((4, 60), 10.0, 23), scaled((60, 5), 10.0, 24)
    left[0] = -math.inf  # a query with no bank row
    right[:, 1] = -math.inf  # a candidate no bank row reaches
    left[1, :30] = -math.inf
    right[30:, 2] = -math.inf  # query 1 and candidate 2 share no bank row: no path
    right[::2, 3] = -math.inf  # a candidate reached through half the bank
    got = check(left, right, t, t, normalize, dtype)
    assert torch.isneginf(got[0]).all() and torch.isneginf(got[:, 1]).all()
    assert torch.isneginf(got[1, 2]) and torch.isfinite(got[2:][:, [0, 2, 3, 4]]).all()


@pytest.mark.parametrize("normalize", ["none", "candidates"])
@pytest.mark.parametrize("t", [1.0, 0.5, 3.0])
def test_wide_range_float32_takes_the_float64_route_not_the_stream(t, normalize, monkeypatch):
    # N(0, (30 / t)^2) values: every scaled exponent spreads like N(0, 30^2), so the best paths
    # lie ~70 nats below the row plus column maxima, past float32's guard (~58 nats).
    routes = route_counts(monkeypatch)
    generator = torch.Generator().manual_seed(25)
    left = torch.randn(5, 20_000, generator=generator) * (30 / t)
    right = torch.randn(20_000, 6, generator=generator) * (30 / t)
    check(left, right, t, t, normalize, torch.float32)
    assert sum(routes["float64"]) > 5 * 6 // 2 and routes["streamed"] == []


@pytest.mark.parametrize("normalize", ["none", "candidates"])
@pytest.mark.parametrize("t", [0.1, 1.0, 3.0])
def test_paths_past_float64s_reach_are_streamed_with_the_temperatures(t, normalize, monkeypatch):
    # The maxima sit on rows no pair can use, 2 * 2400 * t nats above every real path: past
    # float32's guard for every t, past the boosted float64 product (~990 nats) for t >= 1.
    routes = route_counts(monkeypatch)
    left, right = scaled((3, 200), 0.05, 26), scaled((200, 4), 0.05, 27)
    left[:, 0], right[0, :] = 2400.0, -2400.0  # a row maximum that no candidate can use
    left[:, 1], right[1, :] = -2400.0, 2400.0  # a column maximum that no query can use
    check(left, right, t, t, normalize, torch.float32)
    assert routes["float64"] == [12]  # the normaliser's row is never uncertain here
    assert routes["streamed"] == ([] if t < 1 else [12])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t", [0.01, 1.0, 3.0])
def test_the_normalisers_row_takes_every_fallback_for_an_unreachable_candidate(
    t, dtype, monkeypatch
):
    # A candidate with no bank row: the query row of zeros (row N) fails every guard with the
    # others, and its streamed column sum is -inf, as is every score of that candidate.
    routes = route_counts(monkeypatch)
    left, right = scaled((3, 100), 10.0, 28), scaled((100, 4), 10.0, 29)
    right[:, 2] = -math.inf
    got = check(left, right, t, t, "candidates", dtype)
    assert torch.isneginf(got[:, 2]).all() and torch.isfinite(got[:, [0, 1, 3]]).all()
    if dtype == torch.float32:
        assert routes["float64"] == [4]  # (0..2, 2) and (N, 2)
    assert routes["streamed"] == [3, 1]  # the queries' pairs, then the normaliser's


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", ["none", "candidates"])
@pytest.mark.parametrize("t", [0.01, 0.5, 3.0])
def test_shards_combine_to_one_call_with_masks_and_fallbacks(t, normalize, dtype):
    left, right = scaled((4, 3000), 40.0, 30), scaled((3000, 5), 40.0, 31)
    left[:, 100:200] = MASK
    right[:, 4] = -math.inf
    left[3, 0], right[0, 1] = 900.0, 900.0  # one pair far above the rest: the fallbacks
    calibration = Calibration(t, t, normalize)
    left, right = left.to(dtype), right.to(dtype)
    whole = calibrated_scores(left, right, calibration)
    cuts = [0, 0, 1, 1024, 1025, 2047, 3000]  # an empty shard, one-row shards, block edges
    parts = [
        partial_calibrated_scores(left[:, a:b], right[a:b], calibration)
        for a, b in itertools.pairwise(cuts)
    ]
    combined = combine_calibrated(parts)
    # Shards sum their blocks in other orders: float32 rounding differs by a few eps of T.
    assert_matches(combined, whole.double(), dtype, magnitude(left, right, t, t), normalize)
    assert_matches(
        whole,
        brute_force(left, right, t, t, normalize),
        dtype,
        magnitude(left, right, t, t),
        normalize,
    )


@settings(max_examples=60, deadline=None)
@given(
    t1=st.sampled_from(TEMPERATURES),
    t2=st.sampled_from(TEMPERATURES),
    normalize=st.sampled_from(["none", "candidates"]),
    sigma=st.sampled_from([1.0, 30.0, 300.0, 3000.0]),
    shape=st.tuples(st.integers(0, 5), st.integers(1, 2100), st.integers(1, 5)),
    seed=st.integers(0, 2**31 - 1),
)
def test_wide_range_float32_matches_float64_over_random_shapes(
    t1, t2, normalize, sigma, shape, seed
):
    generator = torch.Generator().manual_seed(seed)
    n, m, k = shape
    left = torch.randn(n, m, generator=generator, dtype=torch.float64) * sigma
    right = torch.randn(m, k, generator=generator, dtype=torch.float64) * sigma
    check(left, right, t1, t2, normalize, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scaled_bridge_sums_equal_sums_of_scaled_copies(dtype):
    # The bridge-level scales: the same sum as a scaled copy, with the column sums beside it.
    from ucl_cli.estimators.bridge import (
        partial_bridge_scores,
        partial_bridge_scores_with_column_sums,
    )

    left, right = scaled((6, 1100), 50.0, 32).to(dtype), scaled((1100, 3), 50.0, 33).to(dtype)
    for s1, s2 in [(1.0, 1.0), (0.25, 4.0), (3.0, 0.01)]:
        plain = partial_bridge_scores(left, right, left_scale=s1, right_scale=s2)
        both, columns = partial_bridge_scores_with_column_sums(
            left, right, left_scale=s1, right_scale=s2, chunk_size=300
        )
        expected = torch.logsumexp(s1 * left.double()[:, :, None] + s2 * right.double(), dim=1)
        size = s1 * 50 + s2 * 50
        assert_matches(plain.lse.to(dtype), expected, dtype, size, "none")
        assert_matches(both.lse.to(dtype), expected, dtype, size, "none")
        column = torch.logsumexp(s2 * right.double(), dim=0)
        assert_matches(columns.to(dtype), column, dtype, size, "none")
        assert (both.count, both.dtype, plain.count) == (1100, dtype, 1100)


def test_empty_and_queryless_shards_still_give_the_normaliser():
    from ucl_cli.estimators.bridge import partial_bridge_scores_with_column_sums

    right = scaled((50, 3), 5.0, 34)
    bridge, columns = partial_bridge_scores_with_column_sums(
        torch.empty(0, 50, dtype=torch.float64), right, right_scale=0.5
    )
    assert bridge.lse.shape == (0, 3)
    torch.testing.assert_close(columns, torch.logsumexp(0.5 * right, dim=0), atol=1e-13, rtol=0)
    bridge, columns = partial_bridge_scores_with_column_sums(torch.empty(2, 0), torch.empty(0, 3))
    assert bridge.count == 0 and torch.isneginf(bridge.lse).all() and torch.isneginf(columns).all()


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, "hot"])
def test_scales_must_be_positive_and_finite(bad):
    from ucl_cli.estimators.bridge import partial_bridge_scores

    left, right = scaled((2, 10), 1.0, 35), scaled((10, 2), 1.0, 36)
    for name in ("left_scale", "right_scale"):
        with pytest.raises(UsageError, match=name):
            partial_bridge_scores(left, right, **{name: bad})


def test_a_scaled_maximum_past_the_dtypes_range_is_refused_a_scaled_mask_is_not():
    from ucl_cli.errors import NonFiniteScoresError

    left, right = scaled((2, 10), 1.0, 37).float(), scaled((10, 3), 1.0, 38).float()
    huge = left.clone()
    huge[0, 3] = 2e38  # times 3: beyond float32 (+inf), which no sum can be exact about
    with pytest.raises(NonFiniteScoresError, match="scale"):
        calibrated_scores(huge, right, Calibration(3.0, 3.0))
    masked = right.clone()
    masked[:, 1] = torch.finfo(torch.float32).min  # a common mask value: times 3, -inf paths
    got = calibrated_scores(left, masked, Calibration(3.0, 3.0))
    assert torch.isneginf(got[:, 1]).all() and torch.isfinite(got[:, [0, 2]]).all()


def test_exact_pair_scores_and_float64_sums_apply_the_scales():
    import ucl_cli.estimators.bridge as bridge

    left, right = scaled((3, 2100), 20.0, 39).float(), scaled((2100, 4), 20.0, 40).float()
    s1, s2 = 0.5, 3.0
    expected = torch.logsumexp(s1 * left.double()[:, :, None] + s2 * right.double(), dim=1)
    rows, cols = torch.tensor([0, 2, 1, 2]), torch.tensor([3, 0, 0, 2])
    exact = bridge.exact_pair_scores(left, right, rows, cols, left_scale=s1, right_scale=s2)
    torch.testing.assert_close(exact.double(), expected[rows, cols], atol=1e-4, rtol=0)
    # The boosted float64 product, row N (= 3) being the query row of zeros.
    row_max, col_max = left.amax(dim=1), right.amax(dim=0)
    peaks = (s1 * row_max.abs().max().item(), s2 * col_max.abs().max().item())
    rows, cols = torch.tensor([3, 0, 3, 2]), torch.tensor([1, 1, 3, 0])
    sums = bridge._float64_sums(
        left, right, row_max, col_max, peaks, rows, cols, 500, scales=(s1, s2), ones_row=True
    )
    with_zero_row = torch.cat([expected, torch.logsumexp(s2 * right.double(), dim=0)[None]])
    shifts = torch.cat([s1 * row_max.double(), torch.zeros(1, dtype=torch.float64)])
    lse = shifts[rows] + s2 * col_max.double()[cols] + sums.log()
    lse -= 2 * bridge.FLOAT64_BOOST * math.log(2)
    torch.testing.assert_close(lse, with_zero_row[rows, cols], atol=1e-10, rtol=0)


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

"""The bridge estimator at the edges of the floating-point range: masks, huge shifts, no paths,
and bridge terms spread wider than float32's exponent range."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ucl_cli.estimators import bridge_scores, combine_partials, partial_bridge_scores
from ucl_cli.estimators.explain import effective_sample_size, explain_pairs

MASK32 = -1e30  # how a user might mask a candidate or bank row in float32
NEAR_MIN64 = torch.finfo(torch.float64).min
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def brute_force(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """The definition, in float64, materialising [N, M, K]."""
    paths = left.double()[:, :, None] + right.double()[None, :, :]
    return torch.logsumexp(paths, dim=1) - math.log(left.shape[1])


def assert_close(out: torch.Tensor, expected: torch.Tensor, scale: float) -> None:
    """Within the float32 tolerance 1e-6 * (1 + scale) of the unmasked values, plus a few
    rounding units of the result itself (a masked entry's true value is huge)."""
    assert not torch.isnan(out).any()
    assert torch.equal(torch.isneginf(out), torch.isneginf(expected))
    finite = torch.isfinite(expected)
    assert torch.isfinite(out[finite]).all()
    eps = torch.finfo(out.dtype).eps
    error = (out[finite].double() - expected[finite]).abs()
    allowed = 1e-6 * (1 + scale) + 4 * eps * expected[finite].abs()
    assert (error <= allowed).all(), (error - allowed).max().item()


def normal(shape: tuple[int, ...], sigma: float, seed: int, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator, dtype=torch.float64) * sigma).to(dtype)


# --- 1. finite inputs of huge magnitude --------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_float32_fully_masked_column_scores_its_true_value_not_inf(device):
    left, right = normal((3, 50), 10.0, 0), normal((50, 4), 10.0, 1)
    right[:, 2] = MASK32
    out = bridge_scores(left.to(device), right.to(device)).cpu()
    assert torch.isfinite(out).all()
    assert_close(out, brute_force(left, right), 2 * 50.0)
    assert out[:, 2].double().sub(MASK32).abs().max() < 1e24  # about -1e30, never +inf


def test_float32_fully_masked_query_row_scores_its_true_value_not_inf():
    left, right = normal((3, 50), 10.0, 2), normal((50, 4), 10.0, 3)
    left[1] = MASK32 * (1 + torch.rand(50, generator=torch.Generator().manual_seed(4)) * 1e-3)
    out = bridge_scores(left, right)
    assert torch.isfinite(out).all()
    assert_close(out, brute_force(left, right), 2 * 50.0)


def test_float32_masked_rows_in_a_column_do_not_contribute():
    left, right = normal((3, 60), 10.0, 5), normal((60, 4), 10.0, 6)
    masked = right.clone()
    masked[10:40, 2] = MASK32
    kept = torch.cat([torch.arange(10), torch.arange(40, 60)])
    out = bridge_scores(left, masked)
    # The masked rows add nothing; the bank size M still counts them.
    without = brute_force(left[:, kept], right[kept, 2:3])[:, 0] + math.log(30 / 60)
    assert_close(out[:, 2], without, 2 * 50.0)
    assert_close(out, brute_force(left, masked), 2 * 50.0)


@pytest.mark.parametrize("device", DEVICES)
def test_float64_near_the_bottom_of_the_range_is_finite_and_exact(device):
    left, right = normal((3, 40), 5.0, 7, torch.float64), normal((40, 4), 5.0, 8, torch.float64)
    jitter = 1 + torch.rand(40, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    left[1] = 0.9 * NEAR_MIN64 / jitter  # one query's every value near finfo.min
    right[:, 3] = 0.45 * NEAR_MIN64  # a candidate's too, so one pair sums to about 0.9 * min
    left[2] = 0.45 * NEAR_MIN64
    out = bridge_scores(left.to(device), right.to(device)).cpu()
    expected = brute_force(left, right)
    assert torch.isfinite(expected[[0, 2]]).all()
    assert_close(out, expected, 2 * 25.0)
    assert torch.isfinite(out[[0, 2]]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_minus_infinity_gives_minus_infinity_not_nan(device):
    left, right = normal((3, 30), 10.0, 10), normal((30, 4), 10.0, 11)
    left[0] = -math.inf  # a query with no bank item at all
    right[:, 1] = -math.inf  # a candidate with none
    right[5:, 2] = -math.inf  # a candidate reachable through rows 0..4 only
    out = bridge_scores(left.to(device), right.to(device)).cpu()
    assert not torch.isnan(out).any()
    assert torch.isneginf(out[0]).all() and torch.isneginf(out[:, 1]).all()
    assert_close(out, brute_force(left, right), 2 * 40.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_partial_sums_of_masked_shards_are_finite_and_combine_exactly(dtype):
    mask = MASK32 if dtype == torch.float32 else 0.5 * NEAR_MIN64
    left, right = normal((2, 80), 10.0, 12, dtype), normal((80, 3), 10.0, 13, dtype)
    right[:, 0] = mask
    right[:40, 1] = mask  # the first shard is masked for candidate 1, the second is not
    parts = [partial_bridge_scores(left[:, a:b], right[a:b]) for a, b in ((0, 40), (40, 80))]
    for part in parts:
        assert not torch.isnan(part.lse).any() and not torch.isposinf(part.lse).any()
    assert_close(combine_partials(parts), brute_force(left, right), 2 * 50.0)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(1, 200),
    st.integers(1, 5),
    st.sampled_from([1.0, 14.0, 100.0]),
    st.sampled_from([torch.float32, torch.float64]),
    st.sampled_from(["huge", "-inf"]),
    st.floats(0.0, 1.0),
    st.integers(0, 2**31 - 1),
)
def test_masked_entries_and_lines_match_brute_force(n, m, k, scale, dtype, kind, share, seed):
    generator = torch.Generator().manual_seed(seed)
    left = ((torch.rand(n, m, generator=generator, dtype=torch.float64) * 2 - 1) * scale).to(dtype)
    right = ((torch.rand(m, k, generator=generator, dtype=torch.float64) * 2 - 1) * scale).to(dtype)
    huge = MASK32 if dtype == torch.float32 else 0.4 * NEAR_MIN64
    value = -math.inf if kind == "-inf" else huge
    left[torch.rand(n, m, generator=generator) < share] = value
    right[torch.rand(m, k, generator=generator) < share] = value
    right[:, torch.rand(k, generator=generator) < share / 2] = value  # whole candidates
    left[torch.rand(n, generator=generator) < share / 2] = value  # whole queries
    out = bridge_scores(left, right, chunk_size=1 + seed % 300)
    assert_close(out, brute_force(left, right), 2 * scale)


# --- 2. explanations of a pair with no finite path -------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_pair_without_a_finite_path_has_zero_weights_no_rows_and_ess_zero(device):
    left = torch.tensor([[0.0, -math.inf, 1.0, -math.inf]], device=device)
    right = torch.tensor(
        [[-math.inf, 0.0], [2.0, 0.0], [-math.inf, 0.0], [3.0, 0.0]], device=device
    )
    rows, cols = torch.tensor([0, 0], device=device), torch.tensor([0, 1], device=device)
    explanation = explain_pairs(left, right, rows, cols, top=3)
    assert explanation.weights[0].tolist() == [0.0, 0.0, 0.0]
    assert explanation.bank_indices[0].tolist() == [-1, -1, -1]
    assert explanation.effective_sample_size[0].item() == 0.0
    # The other pair in the same call is untouched: weights softmax([0, 1]) on rows 2, 0.
    assert explanation.bank_indices[1, :2].tolist() == [2, 0]
    assert explanation.weights[1, :2].tolist() == pytest.approx(
        [1 / (1 + math.e**-1), 1 / (1 + math.e)]
    )
    assert explanation.weights[1, 2].item() == 0.0  # a path of weight 0 is still a row ...
    assert explanation.bank_indices[1, 2].item() in (1, 3)  # ... so it keeps its index
    assert effective_sample_size(left, right, rows, cols)[0].item() == 0.0


def test_explanation_of_huge_negative_scores_is_finite():
    left, right = normal((2, 30), 10.0, 14), normal((30, 2), 10.0, 15)
    right[:, 1] = MASK32
    explanation = explain_pairs(left, right, torch.tensor([0, 1]), torch.tensor([1, 0]), top=4)
    # Candidate 1 adds the same -1e30 to every path: its weights are the query's own softmax,
    # although left + right rounds every path to the same float32 number.
    weights = torch.softmax(left[0].double(), dim=0)
    expected = weights.topk(4)
    assert explanation.bank_indices[0].tolist() == expected.indices.tolist()
    assert torch.allclose(explanation.weights[0].double(), expected.values, atol=1e-5)
    ess = 1 / (weights * weights).sum()
    assert explanation.effective_sample_size[0].item() == pytest.approx(ess.item(), rel=1e-4)
    assert torch.isfinite(explanation.weights).all()
    assert torch.isfinite(explanation.effective_sample_size).all()


# --- 3. bridge terms spread wider than float32's exponent range ------------------------------


def count_routes(monkeypatch) -> dict[str, list[int]]:
    """Record how many entries each fallback route is asked for, call by call."""
    import ucl_cli.estimators.bridge as bridge

    routes: dict[str, list[int]] = {"float64": [], "streamed": []}
    escalate, exact = bridge._float64_sums, bridge.exact_pair_scores

    def counting_escalate(
        left, right, row_shift, col_shift, peaks, rows, cols, chunk_size, **kwargs
    ):
        routes["float64"].append(rows.numel())
        return escalate(left, right, row_shift, col_shift, peaks, rows, cols, chunk_size, **kwargs)

    def counting_exact(left, right, rows, cols, **kwargs):
        routes["streamed"].append(rows.numel())
        return exact(left, right, rows, cols, **kwargs)

    monkeypatch.setattr(bridge, "_float64_sums", counting_escalate)
    monkeypatch.setattr(bridge, "exact_pair_scores", counting_exact)
    return routes


@pytest.mark.parametrize("device", DEVICES)
def test_wide_range_float32_takes_the_float64_route_not_the_stream(monkeypatch, device):
    # N(0, 30^2): the best path lies ~70 nats below the row plus column maxima.
    routes = count_routes(monkeypatch)
    n, m, k = 5, 20_000, 6
    left, right = normal((n, m), 30.0, 16), normal((m, k), 30.0, 17)
    out = bridge_scores(left.to(device), right.to(device)).cpu()
    assert sum(routes["float64"]) > n * k // 2  # float32's guard caught most entries ...
    assert routes["streamed"] == []  # ... and none had to be streamed
    assert_close(out, brute_force(left, right), left.abs().max().item() + right.abs().max().item())


@pytest.mark.parametrize("value", [0.0, 1e4, -1e4])
def test_boosted_float64_sums_do_not_overflow_when_every_path_is_the_best(value):
    # Every factor at its 2^FLOAT64_BOOST maximum, over a bank of a few thousand rows.
    import ucl_cli.estimators.bridge as bridge

    bank = 3 * 1024 + 5
    left, right = torch.full((3, bank), value), torch.full((bank, 2), value)
    shifts = torch.full((3,), value), torch.full((2,), value)
    rows, cols = torch.tensor([0, 2, 1]), torch.tensor([1, 0, 0])
    sums = bridge._float64_sums(left, right, *shifts, (abs(value),) * 2, rows, cols, None)
    expected = math.log(bank) + 2 * bridge.FLOAT64_BOOST * math.log(2)
    assert torch.allclose(sums.log(), torch.full((3,), expected, dtype=torch.float64))


@pytest.mark.parametrize("device", DEVICES)
def test_boosted_float64_reaches_past_plain_float64s_range(monkeypatch, device):
    # The best paths lie ~800 nats below the row plus column maxima: beyond float64 with factors
    # in (0, 1] (~660 nats), within reach of factors boosted by 2^FLOAT64_BOOST (~990).
    routes = count_routes(monkeypatch)
    left, right = normal((3, 200), 0.05, 24), normal((200, 4), 0.05, 25)
    left[:, 0], right[0, :] = 400.0, -400.0
    left[:, 1], right[1, :] = -400.0, 400.0
    out = bridge_scores(left.to(device), right.to(device)).cpu()
    assert routes == {"float64": [12], "streamed": []}
    assert_close(out, brute_force(left, right), 2 * 400.0)


def test_only_what_float64_cannot_resolve_is_streamed(monkeypatch):
    routes = count_routes(monkeypatch)
    left, right = normal((4, 300), 0.05, 18), normal((300, 3), 0.05, 19)
    left[:, 0], right[0, :] = 5000.0, -5000.0  # a row maximum no candidate can use
    left[:, 1], right[1, :] = -5000.0, 5000.0  # a column maximum no query can use
    left[2, 2], right[2, 1] = 5000.0, 4500.0  # one pair with a path near the maxima
    out = bridge_scores(left, right)
    assert routes["float64"] == [12]  # every entry underflows float32 ...
    assert routes["streamed"] == [11]  # ... and all but (2, 1) float64 as well
    assert_close(out, brute_force(left, right), 2 * 5000.0)


def test_float64_inputs_go_straight_to_the_stream(monkeypatch):
    routes = count_routes(monkeypatch)
    left = normal((3, 100), 0.05, 20, torch.float64)
    right = normal((100, 2), 0.05, 21, torch.float64)
    left[:, 0], right[0, :] = 1000.0, -1000.0
    left[:, 1], right[1, :] = -1000.0, 1000.0
    out = bridge_scores(left, right)
    assert routes == {"float64": [], "streamed": [6]}
    assert torch.allclose(out, brute_force(left, right), rtol=0, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 3000),
    st.integers(1, 6),
    st.sampled_from([30.0, 100.0, 300.0, 3000.0]),
    st.sampled_from([None, 7, 1024]),
    st.integers(0, 2**31 - 1),
)
def test_wide_range_float32_matches_float64_brute_force(n, m, k, sigma, chunk_size, seed):
    left, right = normal((n, m), sigma, seed), normal((m, k), sigma, seed + 1)
    out = bridge_scores(left, right, chunk_size=chunk_size)
    assert out.dtype == torch.float32
    scale = left.abs().max().item() + right.abs().max().item()
    assert_close(out, brute_force(left, right), scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fused", [True, False])
def test_exp_factors_are_never_subnormal_in_either_form(dtype, fused):
    from ucl_cli.estimators.bridge import LOG2_E, _exp2_of_affine

    values = torch.linspace(-5000.0, 0.0, 128 * 25, dtype=dtype).reshape(128, 25)
    for shape in ((1, 25), (128, 1)):
        shift = torch.zeros(shape, dtype=dtype)
        if fused:
            factors = _exp2_of_affine(values, shift * -LOG2_E, torch.empty_like(values))
        else:
            factors = _exp2_of_affine(values, shift, torch.empty_like(values), centred=True)
        assert factors.min() >= torch.finfo(dtype).tiny
        assert factors.max() == 1.0

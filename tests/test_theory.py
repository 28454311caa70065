"""Lemma 2 and Lemma 3 closed forms against Monte Carlo averages over their assumed marginals.

Each check states its tolerance and also requires the Monte Carlo standard error to be well
inside it, so that a pass means agreement, not noise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ucl_cli.experiments.theory import log_gaussian_bridge, log_sphere_bridge

SAMPLES = 400_000
RELATIVE_TOLERANCE = 0.02  # 2% on the ratio itself, i.e. 0.02 on its log


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def pair_with_cosine(dim: int, cosine: float, rng: np.random.Generator):
    """Unit x, y in R^dim with <x, y> = cosine exactly."""
    x = unit(rng.standard_normal(dim))
    orthogonal = rng.standard_normal(dim)
    orthogonal = unit(orthogonal - (orthogonal @ x) * x)
    return x, cosine * x + math.sqrt(1.0 - cosine**2) * orthogonal


def monte_carlo_mean(samples: np.ndarray) -> tuple[float, float]:
    """(mean, relative standard error)."""
    mean = samples.mean()
    return mean, samples.std(ddof=1) / math.sqrt(samples.size) / mean


@pytest.mark.parametrize("dim", [3, 8, 32])
@pytest.mark.parametrize("cosine", [-0.9, 0.3, 0.95])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_lemma2_matches_uniform_sphere_average(dim, cosine, scale):
    rng = np.random.default_rng([dim, int(100 * cosine) + 100, int(scale)])
    x, y = pair_with_cosine(dim, cosine, rng)
    bridge = rng.standard_normal((SAMPLES, dim))
    bridge /= np.linalg.norm(bridge, axis=1, keepdims=True)  # uniform on S^(dim-1)
    mean, relative_error = monte_carlo_mean(np.exp(scale * bridge @ (x + y)))
    assert relative_error < RELATIVE_TOLERANCE / 4
    closed = log_sphere_bridge(cosine, dim, scale)
    assert abs(math.log(mean) - closed) < RELATIVE_TOLERANCE


def test_lemma2_in_three_dimensions_is_sinh_k_over_k():
    for cosine in (-0.5, 0.0, 0.7, 1.0):
        k = math.sqrt(2 + 2 * cosine)
        assert log_sphere_bridge(cosine, 3) == pytest.approx(math.log(math.sinh(k) / k), abs=1e-12)


def test_lemma2_is_strictly_increasing_in_the_inner_product():
    """The 'Law': Direct comparison ranks exactly like the bridge integral."""
    cosines = np.linspace(-1.0, 1.0, 401)
    for dim, scale in [(3, 1.0), (32, 1.0), (512, 100.0)]:
        values = log_sphere_bridge(cosines, dim, scale)
        assert np.all(np.isfinite(values))
        assert np.all(np.diff(values) > 0)
    assert log_sphere_bridge(-1.0, 16, 5.0) == 0.0  # y = -x: the integrand is 1 everywhere


def test_lemma2_log_bessel_agrees_across_its_two_routes():
    """The power series (used where ive underflows) and ive agree where both are usable."""
    from scipy.special import ive

    from ucl_cli.experiments import theory
    from ucl_cli.experiments.theory import log_bessel_i

    k = np.array([0.5, 2.0, 10.0])
    for order in (0.5, 15.0, 30.0):
        expected = np.log(ive(order, k)) + k
        assert np.allclose(log_bessel_i(order, k), expected, rtol=1e-12)
        terms = np.arange(theory.SERIES_TERMS)[:, None]
        series = theory.logsumexp(
            (2 * terms + order) * np.log(k / 2)
            - theory.gammaln(terms + 1)
            - theory.gammaln(terms + order + 1),
            axis=0,
        )
        assert np.allclose(series, expected, rtol=1e-12)
    tiny = log_bessel_i(255.0, np.array([1e-3, 10.0]))  # ive underflows: the series answers
    leading = 255.0 * np.log(np.array([1e-3, 10.0]) / 2) - math.lgamma(256.0)
    assert tiny[0] == pytest.approx(leading[0], rel=1e-12)
    assert tiny[1] == pytest.approx(
        leading[1] + math.log1p(25.0 / 256 + 625 / (2 * 256 * 257)), rel=1e-6
    )


@pytest.mark.parametrize(("dims", "variance"), [(2, 2.0), (4, 1.0), (8, 0.5)])
def test_lemma3_matches_gaussian_average(dims, variance):
    rng = np.random.default_rng([dims, int(10 * variance)])
    x = 0.7 * rng.standard_normal(dims)
    y = 0.7 * rng.standard_normal(dims)
    bridge = math.sqrt(variance) * rng.standard_normal((SAMPLES, dims))
    terms = -0.5 * ((x - bridge) ** 2).sum(1) - 0.5 * ((bridge - y) ** 2).sum(1)
    mean, relative_error = monte_carlo_mean(np.exp(terms))
    assert relative_error < RELATIVE_TOLERANCE / 4
    assert abs(math.log(mean) - log_gaussian_bridge(x, y, variance)) < RELATIVE_TOLERANCE


def test_lemma3_unnormalised_dot_is_not_rank_consistent():
    """With -1/2||x-y||^2 the score is not a function of ||x - y|| alone (the <x, y> term), so
    a candidate's norm changes its rank: Direct is not Bayes-consistent for unnormalised
    embeddings (docs/METHOD.md#when-direct-is-valid, Lemma 3)."""
    query = np.array([1.0, 0.0])
    near_small = np.array([0.5, 0.0])  # distance 0.5 from the query
    far_large = np.array([1.5, 0.0])  # also distance 0.5, larger inner product
    scores = log_gaussian_bridge(np.stack([query, query]), np.stack([near_small, far_large]), 1.0)
    assert scores[0] > scores[1]

"""Closed forms of the bridge integral under assumption 3 (Lemmas 2 and 3;
docs/METHOD.md#when-direct-is-valid).

Both give E_b[ exp( f(x, b) + f(b, y) ) ] when b follows the assumed marginal of phi_B, for
embeddings x = phi_A(a) and y = phi_C(c); up to the constant K1 K2 this is p(c|a)/p(c) (Lemma 1).

- Lemma 2 ("the Law"): unit-norm embeddings, f = s <x, b>, b uniform on the sphere S^(d-1):
    E = Gamma(d/2) (2/k)^(d/2-1) I_(d/2-1)(k),  k = s ||x + y|| = s sqrt(2 + 2 <x, y>).
  It increases strictly with <x, y>, so Direct ranks like the Bayes-optimal score.
- Lemma 3: f = -1/2 ||x - b||^2, b ~ N(0, c I) in k dims:
    log E = -(k/2) log(2c + 1) - g (||x - y||^2 + d <x, y>),  g = (c+1)/(4c+2), d = 2/(c+1).
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln, ive, logsumexp

SERIES_TERMS = 200


def log_sphere_bridge(cos_xy: np.ndarray | float, dim: int, scale: float = 1.0) -> np.ndarray:
    """log E_b[exp(s <x, b> + s <b, y>)] for unit x, y with <x, y> = cos_xy, b uniform on S^(d-1).

    Computed in log space throughout, so it stays finite for large scales and high dimensions;
    at k = 0 (y = -x) the value is exactly 0.
    """
    order = dim / 2.0 - 1.0
    k = scale * np.sqrt(np.clip(2.0 + 2.0 * np.asarray(cos_xy, dtype=np.float64), 0.0, None))
    safe = np.where(k > 1e-8, k, 1.0)
    value = gammaln(dim / 2.0) + order * np.log(2.0 / safe) + log_bessel_i(order, safe)
    # Series limit for tiny k: (2/k)^v I_v(k) -> 1 / Gamma(v + 1), so the log tends to 0.
    return np.where(k > 1e-8, value, 0.0)


def log_bessel_i(order: float, k: np.ndarray) -> np.ndarray:
    """log I_order(k) for k > 0: the exponentially scaled Bessel function (log ive + k) where it
    is representable, else its power series, which converges fast exactly where ive underflows
    (k small against the order)."""
    k = np.asarray(k, dtype=np.float64)
    scaled = ive(order, k)
    with np.errstate(divide="ignore"):
        direct = np.log(scaled) + k
    terms = np.arange(SERIES_TERMS)[:, None]
    log_half = np.log(k.reshape(1, -1) / 2.0)
    log_terms = (
        (2.0 * terms + order) * log_half - gammaln(terms + 1.0) - gammaln(terms + order + 1.0)
    )
    series = logsumexp(log_terms, axis=0).reshape(k.shape)
    return np.where(scaled > 1e-280, direct, series)


def log_gaussian_bridge(x: np.ndarray, y: np.ndarray, variance: float) -> np.ndarray:
    """log E_b[exp(-1/2 ||x - b||^2 - 1/2 ||b - y||^2)] for b ~ N(0, variance I); x, y [..., k]."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dims = x.shape[-1]
    g = (variance + 1.0) / (4.0 * variance + 2.0)
    d = 2.0 / (variance + 1.0)
    squared_distance = ((x - y) ** 2).sum(-1)
    inner = (x * y).sum(-1)
    return -0.5 * dims * np.log(2.0 * variance + 1.0) - g * (squared_distance + d * inner)

"""Exact references from the true Gaussian densities: what a perfect learner would score.

- Bayes-optimal: rank candidates c by the true log p(c|a)/p(c), the best any method can do.
- Lemma 1 with exact ratios: the Monte Carlo bridge estimator fed the true log p(b|a)/p(b) and
  log p(c|b)/p(c) instead of learned critics. Its gap to Bayes is pure Monte Carlo error (finite
  bank) and, when rho > 0, the bias from the broken assumption 1; a trained model's gap to it is
  the error of the learned critics (assumption 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ucl_cli.experiments.gaussian_data import GaussianWorld, joint_moments


@dataclass(frozen=True)
class GaussianLogRatio:
    """log p(y|x) - log p(y) for jointly Gaussian (x, y), evaluated as an [N, M] matrix.

    Expanded into matrix products so that it never forms an [N, M, dim] broadcast.
    """

    mean_x: torch.Tensor
    mean_y: torch.Tensor
    gain: torch.Tensor  # [dy, dx]: E[y | x] = mean_y + gain (x - mean_x)
    precision_cond: torch.Tensor  # inverse of Cov(y | x)
    precision_marg: torch.Tensor  # inverse of Cov(y)
    constant: float  # -1/2 logdet Cov(y|x) + 1/2 logdet Cov(y)

    @classmethod
    def from_moments(
        cls,
        mean_x: np.ndarray,
        cov_xx: np.ndarray,
        mean_y: np.ndarray,
        cov_yy: np.ndarray,
        cov_xy: np.ndarray,
    ) -> GaussianLogRatio:
        gain = np.linalg.solve(cov_xx, cov_xy).T
        cov_cond = cov_yy - gain @ cov_xy
        constant = -0.5 * (np.linalg.slogdet(cov_cond)[1] - np.linalg.slogdet(cov_yy)[1])

        def as_tensor(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(array, dtype=torch.float64)

        return cls(
            as_tensor(mean_x),
            as_tensor(mean_y),
            as_tensor(gain),
            as_tensor(np.linalg.inv(cov_cond)),
            as_tensor(np.linalg.inv(cov_yy)),
            float(constant),
        )

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x [N, dx], y [M, dy] -> float64 [N, M]."""
        x = x.to(torch.float64) - self.mean_x
        y = y.to(torch.float64) - self.mean_y
        shift = x @ self.gain.T  # [N, dy]: E[y|x] - mean_y
        shift_p = shift @ self.precision_cond
        y_cond = ((y @ self.precision_cond) * y).sum(-1)
        y_marg = ((y @ self.precision_marg) * y).sum(-1)
        shift_sq = (shift_p * shift).sum(-1)
        quadratic = y_cond[None, :] - 2.0 * (shift_p @ y.T) + shift_sq[:, None]
        return self.constant - 0.5 * quadratic + 0.5 * y_marg[None, :]


@dataclass(frozen=True)
class TrueRatios:
    """The three true log density ratios of one world."""

    a_to_b: GaussianLogRatio  # log p(b|a)/p(b) = log p(a|b)/p(a), rows a, columns b
    b_to_c: GaussianLogRatio  # log p(c|b)/p(c), rows b, columns c
    a_to_c: GaussianLogRatio  # log p(c|a)/p(c), rows a, columns c: the Bayes-optimal score


def true_ratios(world: GaussianWorld) -> TrueRatios:
    moments = joint_moments(world)
    mean, cov = moments.mean, moments.cov
    return TrueRatios(
        a_to_b=GaussianLogRatio.from_moments(mean["a"], cov["aa"], mean["b"], cov["bb"], cov["ab"]),
        b_to_c=GaussianLogRatio.from_moments(
            mean["b"], cov["bb"], mean["c"], cov["cc"], cov["cb"].T
        ),
        a_to_c=GaussianLogRatio.from_moments(mean["a"], cov["aa"], mean["c"], cov["cc"], cov["ac"]),
    )

"""Tempered and self-normalised bridge scores: the bridge estimator with two knobs.

    score[n, k] = logsumexp_m( t1 left[n, m] + t2 right[m, k] ) - log M
                  - [normalize] ( logsumexp_m( t2 right[m, k] ) - log M )

`left` and `right` are the scaled critics of `bridge_scores` (s1 f_AB and s2 f_BC); t1 = t2 = 1
without normalisation is exactly the Monte Carlo estimate of Lemma 1.

Why each knob:
- Normalisation divides each candidate's bridge sum by the bank's own Monte Carlo estimate of
  E_{b ~ p(B)}[p(b|c)/p(b)], which is 1 for exact density ratios: self-normalised importance
  sampling. It removes the candidate-dependent constant an InfoNCE critic leaves unidentified
  (a candidate that is close to many bank texts no longer wins every query), needs no labels,
  and costs one column logsumexp over the bank rows already read.
- Temperature t < 1 acts as a kernel bandwidth for a finite bank: at trained logit scales the
  sum is carried by one or two bank rows (effective sample size ~1); tempering lets more rows
  vote. t = 1 is the paper's estimator.

Both parts are sums over bank rows, so the score shards exactly like `bridge_scores`: each shard
returns its partial bridge sum and its partial normaliser (`partial_calibrated_scores`), and
`combine_calibrated` joins any split of the bank into the scores of one call.

Cost: about one bridge sum. The temperatures are the scales of `partial_bridge_scores`, folded
into its exp2 pass (no tempered copy of either matrix), and the normaliser comes out of the same
pass as one more row of its matrix product (`partial_bridge_scores_with_column_sums`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# The settings themselves live in a torch-free module (the CLI parses them before torch loads).
from ucl_cli.calibration import NORMALIZATIONS, Calibration
from ucl_cli.errors import UsageError
from ucl_cli.estimators.bridge import (
    PartialScores,
    combine_partials,
    partial_bridge_scores,
    partial_bridge_scores_with_column_sums,
)


@dataclass(frozen=True)
class CalibratedPartial:
    """One bank shard's share: its bridge sum and, when normalising, its normaliser.

    bridge: the tempered bridge sum over the shard (`PartialScores`, [N, K]).
    normalizer: [K] float64 logsumexp_m t2 right[m, k] over the shard's rows (-inf when empty),
      or None without normalisation.
    """

    bridge: PartialScores
    normalizer: torch.Tensor | None


def calibrated_scores(
    left: torch.Tensor, right: torch.Tensor, calibration: Calibration | None = None
) -> torch.Tensor:
    """score [N, K] for left [N, M] and right [M, K] (see the module docstring)."""
    return combine_calibrated([partial_calibrated_scores(left, right, calibration)])


def partial_calibrated_scores(
    left_shard: torch.Tensor,
    right_shard: torch.Tensor,
    calibration: Calibration | None = None,
) -> CalibratedPartial:
    """One shard of bank rows; join shards with `combine_calibrated`.

    The temperatures are the bridge sum's scales: they enter the exponent of each factor in
    the sum's one exp2 pass, so neither matrix is copied. The normaliser logsumexp_m t2
    right[m, k] is the bridge sum of a query row of zeros, whose factors are all 1: one more
    row of the same pass's matrix product (1/N more product work, no copy of left), with the
    same exactness, instead of a second reduction over the [M, K] matrix.
    """
    calibration = calibration or Calibration()
    scales = {
        "left_scale": calibration.query_temperature,
        "right_scale": calibration.candidate_temperature,
    }
    if calibration.normalize == "none":
        return CalibratedPartial(partial_bridge_scores(left_shard, right_shard, **scales), None)
    bridge, normalizer = partial_bridge_scores_with_column_sums(left_shard, right_shard, **scales)
    return CalibratedPartial(bridge, normalizer)


def combine_calibrated(parts: Sequence[CalibratedPartial]) -> torch.Tensor:
    """Scores [N, K] from disjoint shards: the bridge sums and normalisers each combined
    exactly (logaddexp), then the normaliser's mean subtracted in log space."""
    if not parts:
        raise UsageError("combine_calibrated needs at least one partial result")
    normalised = {part.normalizer is not None for part in parts}
    if len(normalised) != 1:
        raise UsageError("partial results mix normalised and unnormalised shards")
    scores = combine_partials([part.bridge for part in parts])
    if parts[0].normalizer is None:
        return scores
    total = sum(part.bridge.count for part in parts)
    normalizer = torch.logsumexp(torch.stack([part.normalizer for part in parts]), dim=0)
    out = scores.double() - (normalizer - math.log(total))[None, :]
    # A candidate no bank row reaches (every right[m, k] = -inf) has no path: -inf, not NaN.
    out = out.masked_fill(torch.isneginf(normalizer)[None, :].expand_as(out), -math.inf)
    return out.to(scores.dtype)


__all__ = [
    "NORMALIZATIONS",
    "CalibratedPartial",
    "Calibration",
    "calibrated_scores",
    "combine_calibrated",
    "partial_calibrated_scores",
]

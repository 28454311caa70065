"""Retrieval metrics with fair tie breaking.

A tie between the positive and other candidates counts as the expected value over a uniformly
random order of the tied group, never as a win: a method that scores everything equal gets
exactly chance, not a perfect recall.
"""

from __future__ import annotations

import torch

from ucl_cli.errors import NonFiniteScoresError, UsageError


def positive_rank_bounds(scores: torch.Tensor, positives: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """For each query: (strictly better count g, tied others t); the rank is g+1 .. g+t+1.

    scores [Q, C] (higher is better), positives [Q] (index of the correct candidate per query).
    """
    if scores.dim() != 2:
        raise UsageError(f"scores must be [queries, candidates]; got shape {tuple(scores.shape)}")
    if positives.shape != (scores.shape[0],):
        raise UsageError(
            f"positives must hold one candidate index per query ({scores.shape[0]}); "
            f"got shape {tuple(positives.shape)}"
        )
    if not bool(torch.isfinite(scores).all()):
        bad = (~torch.isfinite(scores)).nonzero()[0].tolist()
        raise NonFiniteScoresError(
            f"scores contain NaN or infinity (first at query {bad[0]}, candidate {bad[1]}); "
            "a ranking of non-finite scores is undefined"
        )
    positives = positives.to(device=scores.device, dtype=torch.long)
    if bool(((positives < 0) | (positives >= scores.shape[1])).any()):
        raise UsageError(f"positive indices must lie in [0, {scores.shape[1]})")
    positive_score = scores.gather(1, positives[:, None])
    better = (scores > positive_score).sum(dim=1)
    tied_others = (scores == positive_score).sum(dim=1) - 1
    return better, tied_others


def recall_at_k(scores: torch.Tensor, positives: torch.Tensor, k: int) -> float:
    """Mean over queries of P(rank of the positive <= k), ties broken uniformly at random."""
    return float(recall_at_k_per_query(scores, positives, k).mean())


def recall_at_k_per_query(scores: torch.Tensor, positives: torch.Tensor, k: int) -> torch.Tensor:
    """[Q] float64: each query's probability of finding its positive in the top k."""
    if k < 1:
        raise UsageError(f"k must be at least 1; got {k}")
    better, tied = positive_rank_bounds(scores, positives)
    group = (tied + 1).double()
    slots_within_k = (k - better).clamp(min=0).double().minimum(group)
    return slots_within_k / group


def mean_rank(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Expected 1-based rank of the positive, averaged over queries (ties: the group's middle)."""
    better, tied = positive_rank_bounds(scores, positives)
    return float((better.double() + 1 + tied.double() / 2).mean())
